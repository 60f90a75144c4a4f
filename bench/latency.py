"""Throughput with a fixed latency added to every AWS call, for 1 to 64 workers.

    python -m bench.latency 64 0.05 [--server | --engine-only]

Real IAM calls take 50-150 ms; in-process moto answers in about 2 ms. This
adds a fixed sleep (second argument, default 0.05 s) to every call, runs N
onboardings (first argument) with 1, 4, 16 and 64 workers, and compares each
with the ideal: calls x latency / workers (workers beyond the number of
onboardings count for nothing). With --server, moto runs as a server in a
process of its own, so its work no longer shares this process's interpreter
lock with the engine. With --engine-only, every step is replaced by a
stand-in that makes as many calls as the real step made for the same user (counted
first on in-process moto), each call nothing but the sleep: what is left is
the engine's own work (store, leases, threads), with no moto to share the
processor with. The last line is a summary.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Any

from bench.common import (
    fake_credentials,
    moto_clients,
    moto_server_clients,
    peak_rss_mb,
    runner_for,
    runner_without_aws,
    scratch,
    sqlite_store,
    write_file,
)
from engine.runner import Runner
from steps import REGISTRY
from steps.base import Clients, Step, StepContext

WORKER_COUNTS = (1, 4, 16, 64)


class CallCounter:
    """Counts AWS calls and sleeps before each, as a far-away AWS would."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls = 0
        self._lock = threading.Lock()

    def watch(self, clients: Clients) -> Clients:
        """Hook every client of ``clients``; return them."""
        for client in vars(clients).values():
            client.meta.events.register("before-send", self._delay)
        return clients

    def _delay(self, **_: Any) -> None:
        with self._lock:
            self.calls += 1
        time.sleep(self.latency)


class StepCalls:
    """Counts the AWS calls each (user, step) makes while real steps run."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._step: tuple[str, str] | None = None

    def watch(self, clients: Clients) -> Clients:
        """Hook every client of ``clients``; return them."""
        for client in vars(clients).values():
            client.meta.events.register("before-send", self._count)
        return clients

    def counted(self, name: str, step: Step) -> Step:
        """Return ``step`` wrapped so that its calls count for its user and name."""

        def run(ctx: StepContext) -> dict[str, Any]:
            self._step = (ctx.user.name, name)
            return step(ctx)

        return run

    def _count(self, **_: Any) -> None:
        if self._step is not None:
            self.counts[self._step] += 1


def count_calls(count: int) -> Counter[tuple[str, str]]:
    """Run ``count`` onboardings on in-process moto; return calls per user and step."""
    calls = StepCalls()
    real = dict(REGISTRY)
    REGISTRY.update({name: calls.counted(name, step) for name, step in real.items()})
    try:
        with scratch() as folder, moto_clients() as (clients, more):
            store = sqlite_store(folder)
            runner = runner_for(
                write_file(folder, count), store, calls.watch(clients), more
            )
            outcomes = runner.run()
            store.dispose()
    finally:
        REGISTRY.update(real)
    assert all(item.status == "done" for item in outcomes), outcomes[:3]
    return calls.counts


def stand_ins(counts: Counter[tuple[str, str]], latency: float) -> dict[str, Step]:
    """Return steps that only sleep, once per call the real step made."""

    def stand_in(name: str) -> Step:
        def run(ctx: StepContext) -> dict[str, Any]:
            for _ in range(counts[(ctx.user.name, name)]):
                time.sleep(latency)
            return {}

        return run

    return {name: stand_in(name) for name in REGISTRY}


def measure_engine_only(
    count: int, workers: int, latency: float, counts: Counter[tuple[str, str]]
) -> tuple[float, float]:
    """Return (seconds, ideal seconds) with every step a sleeping stand-in."""
    real = dict(REGISTRY)
    REGISTRY.update(stand_ins(counts, latency))
    try:
        with scratch() as folder:
            store = sqlite_store(folder)
            runner = runner_without_aws(write_file(folder, count), store)
            started = time.perf_counter()
            outcomes = runner.run(workers=workers)
            elapsed = time.perf_counter() - started
            store.dispose()
    finally:
        REGISTRY.update(real)
    assert all(item.status == "done" for item in outcomes), outcomes[:3]
    return elapsed, sum(counts.values()) * latency / min(workers, count)


def longest_onboarding(counts: Counter[tuple[str, str]], latency: float) -> str:
    """Say how long the onboarding with the most calls takes on its own."""
    per_user: Counter[str] = Counter()
    for (user, _step), calls in counts.items():
        per_user[user] += calls
    user, calls = per_user.most_common(1)[0]
    return (
        f"the longest onboarding ({user}, {calls} calls, {calls * latency:.2f} s) "
        "bounds every worker count from below, whatever the ideal says"
    )


def measure(
    count: int, workers: int, latency: float, server: bool
) -> tuple[float, float]:
    """Return (seconds, ideal seconds) for ``count`` onboardings on ``workers``."""
    counter = CallCounter(latency)
    aws = moto_server_clients() if server else moto_clients()
    with scratch() as folder, aws as (clients, more):
        loaded = write_file(folder, count)
        store = sqlite_store(folder)
        runner: Runner = runner_for(
            loaded, store, counter.watch(clients), lambda: counter.watch(more())
        )
        started = time.perf_counter()
        outcomes = runner.run(workers=workers)
        elapsed = time.perf_counter() - started
        store.dispose()
    assert all(item.status == "done" for item in outcomes), outcomes[:3]
    return elapsed, counter.calls * latency / min(workers, count)


def main() -> None:
    """Print throughput per worker count against the ideal."""
    server = "--server" in sys.argv
    engine_only = "--engine-only" in sys.argv
    numbers = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    count = int(numbers[0]) if numbers else 64
    latency = float(numbers[1]) if len(numbers) > 1 else 0.05
    fake_credentials()
    counts = count_calls(count) if engine_only else None
    where = (
        "sleeping stand-ins for the steps (no moto)"
        if engine_only
        else "a moto server in another process"
        if server
        else "in-process moto"
    )
    print(
        f"{count} onboardings on {where}, "
        f"{latency * 1000:.0f} ms added to every AWS call"
    )
    if counts is not None:
        print(longest_onboarding(counts, latency))
    shares = []
    for workers in WORKER_COUNTS:
        if counts is not None:
            elapsed, ideal = measure_engine_only(count, workers, latency, counts)
        else:
            elapsed, ideal = measure(count, workers, latency, server)
        share = ideal / elapsed
        shares.append(f"w{workers}={share:.0%}")
        print(
            f"workers={workers:3}  {elapsed:7.2f} s  "
            f"{count / elapsed:6.2f} onboardings/s  "
            f"ideal {ideal:6.2f} s  ({share:.0%} of ideal)"
        )
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    mode = "engine-only" if engine_only else "server" if server else "in-process"
    print(f"summary: n={count} latency={latency}s {mode} " + " ".join(shares))


if __name__ == "__main__":
    main()
