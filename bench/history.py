"""Time the CLI's history queries on a large history, and the resume scan.

    python bench/history.py 1000000

Fills a SQLite store with 10,000 unfinished onboardings and N history rows
(default 1,000,000) spread over them, then times: one user's history, one
state's transitions, a one-hour time range, and the scan a run makes over
10,000 unfinished onboardings. The last line is a one-line summary.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert

from bench.common import peak_rss_mb, scratch, sqlite_store
from engine.config import DEFAULT_STATES
from engine.store import PENDING, START_STATE, Store, history, onboardings

ONBOARDINGS = 10_000
BATCH = 50_000
EPOCH = datetime(2026, 1, 1)


def fill(store: Store, rows: int) -> None:
    """Insert the onboardings and ``rows`` history rows in large batches."""
    with store.engine.begin() as conn:
        conn.execute(insert(onboardings), [_onboarding(i) for i in range(ONBOARDINGS)])
        for first in range(0, rows, BATCH):
            batch = [_history(n) for n in range(first, min(first + BATCH, rows))]
            conn.execute(insert(history), batch)


def _onboarding(index: int) -> dict[str, Any]:
    return {
        "user_name": f"user{index:05}",
        "workflow": "standard",
        "definition_hash": "bench",
        "state": START_STATE,
        "status": PENDING,
        "attempts": 0,
        "version": 0,
        "created_at": EPOCH,
        "updated_at": EPOCH,
    }


def _history(n: int) -> dict[str, Any]:
    states = [START_STATE, *DEFAULT_STATES]
    step = n // ONBOARDINGS % len(DEFAULT_STATES)
    started = EPOCH + timedelta(seconds=n)
    return {
        "onboarding_id": n % ONBOARDINGS + 1,
        "user_name": f"user{n % ONBOARDINGS:05}",
        "workflow": "standard",
        "from_state": states[step],
        "to_state": states[step + 1],
        "trigger": "advance",
        "actor": "bench",
        "started_at": started,
        "finished_at": started,
        "outcome": "ok",
        "detail": '{"action": "created"}',
    }


def timed(action: Callable[[], Any], repeat: int) -> tuple[float, int]:
    """Return the median milliseconds of ``repeat`` runs, and the rows returned."""
    times, rows = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = len(action())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), rows


def main() -> None:
    """Fill, then time each query."""
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rng = random.Random(3)
    with scratch() as folder:
        store = sqlite_store(folder)
        started = time.perf_counter()
        fill(store, rows)
        print(f"filled {rows} history rows in {time.perf_counter() - started:.1f} s")
        hour = EPOCH + timedelta(seconds=rows // 2)
        queries = {
            "one user's history": (
                lambda: store.history(user=f"user{rng.randrange(ONBOARDINGS):05}"),
                20,
            ),
            "one state's transitions": (lambda: store.history(state="MFA"), 3),
            "one hour's transitions": (
                lambda: store.history(since=hour, until=hour + timedelta(hours=1)),
                10,
            ),
            "resume scan (10,000 onboardings)": (store.all_onboardings, 3),
        }
        summary = []
        for label, (action, repeat) in queries.items():
            milliseconds, count = timed(action, repeat)
            print(f"{label:34} {milliseconds:10.2f} ms  ({count} rows)")
            summary.append(
                f"{label.split(' ')[1].rstrip(chr(39) + 's')}={milliseconds:.1f}ms"
            )
        store.dispose()
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"summary: rows={rows} " + " ".join(summary))


if __name__ == "__main__":
    main()
