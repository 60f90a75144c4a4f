"""Durable transitions per second, each committed on its own.

    python bench/store.py 2000

For N onboardings, writes one transition each as the engine writes a step
that succeeded (history row, new state and the next step's started marker in
one transaction), then the two commits of the first step of a run (its own
started marker, then the transition). Runs on SQLite, and on PostgreSQL when
IAM_ENGINE_BENCH_PG (default the test server) is reachable. The last line is
a one-line summary.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

from sqlalchemy import create_engine, text

from bench.common import peak_rss_mb, scratch
from engine.store import RUNNING, Onboarding, Store, Transition, open_store, utcnow

PG_URL = os.environ.get(
    "IAM_ENGINE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
LEASE = timedelta(minutes=10)


def _prepare(store: Store, count: int) -> list[Onboarding]:
    names = [f"user{index:06}" for index in range(count)]
    return [store.ensure_onboarding(name, "standard", "bench", None) for name in names]


def transitions_per_second(store: Store, count: int) -> tuple[float, float]:
    """Return (transitions/s, steps/s) for ``count`` onboardings."""
    rows = _prepare(store, count)
    started = time.perf_counter()
    rows = [_enter(store, row, "Created") for row in rows]
    transitions = count / (time.perf_counter() - started)
    started = time.perf_counter()
    for row in rows:
        _enter(store, store.mark_started(row, "MFA", LEASE), "MFA")
    steps = count / (time.perf_counter() - started)
    return transitions, steps


def _enter(store: Store, current: Onboarding, state: str) -> Onboarding:
    transition = Transition(
        current, state, "advance", "bench", utcnow(), "ok", {"n": 1}
    )
    ahead = {"pending_state": "Next", "lease_expires_at": utcnow() + LEASE}
    return store.record(transition, RUNNING, ahead)


def _postgres_store() -> tuple[Store, str] | None:
    try:
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 2})
        with admin.begin() as conn:
            conn.execute(text('DROP SCHEMA IF EXISTS "bench_store" CASCADE'))
            conn.execute(text('CREATE SCHEMA "bench_store"'))
        admin.dispose()
    except Exception as err:  # noqa: BLE001 - an unreachable server only skips the figure
        print(f"postgresql: skipped ({type(err).__name__})")
        return None
    return open_store(f"{PG_URL}?options=-csearch_path%3Dbench_store"), "bench_store"


def _show(label: str, figures: tuple[float, float]) -> None:
    transitions, steps = figures
    print(
        f"{label:32} {transitions:8.0f} transitions/s  "
        f"{steps:8.0f} first steps of a run/s"
    )


def main() -> None:
    """Measure SQLite, then PostgreSQL when reachable."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    figures = []
    with scratch() as folder:
        store = open_store(f"sqlite:///{folder / 'bench.db'}")
        sqlite = transitions_per_second(store, count)
        store.dispose()
    _show("sqlite (WAL, synchronous=FULL)", sqlite)
    figures.append(f"sqlite={sqlite[0]:.0f}/s")
    opened = _postgres_store()
    if opened is not None:
        store, _schema = opened
        postgres = transitions_per_second(store, count)
        store.dispose()
        _show("postgresql", postgres)
        figures.append(f"postgresql={postgres[0]:.0f}/s")
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"summary: n={count} " + " ".join(figures))


if __name__ == "__main__":
    main()
