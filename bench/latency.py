"""Throughput with a fixed latency added to every AWS call, for 1 to 64 workers.

    python bench/latency.py 64 0.05

Real IAM calls take 50-150 ms; in-process moto answers in about 2 ms. This
adds a fixed sleep (second argument, default 0.05 s) to every call, runs N
onboardings (first argument) with 1, 4, 16 and 64 workers, and compares each
with the ideal: calls x latency / workers. The last line is a summary.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from bench.common import (
    fake_credentials,
    moto_clients,
    peak_rss_mb,
    runner_for,
    scratch,
    sqlite_store,
    write_file,
)
from engine.runner import Runner
from steps.base import Clients

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


def measure(count: int, workers: int, latency: float) -> tuple[float, float]:
    """Return (seconds, ideal seconds) for ``count`` onboardings on ``workers``."""
    counter = CallCounter(latency)
    with scratch() as folder, moto_clients() as (clients, session):
        loaded = write_file(folder, count)
        store = sqlite_store(folder)
        runner: Runner = runner_for(loaded, store, counter.watch(clients), session)
        more = runner.target.new_clients
        assert more is not None
        runner.target.new_clients = lambda: counter.watch(more())
        started = time.perf_counter()
        outcomes = runner.run(workers=workers)
        elapsed = time.perf_counter() - started
        store.dispose()
    assert all(item.status == "done" for item in outcomes), outcomes[:3]
    return elapsed, counter.calls * latency / workers


def main() -> None:
    """Print throughput per worker count against the ideal."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    latency = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    fake_credentials()
    print(f"{count} onboardings, {latency * 1000:.0f} ms added to every AWS call")
    shares = []
    for workers in WORKER_COUNTS:
        elapsed, ideal = measure(count, workers, latency)
        share = ideal / elapsed
        shares.append(f"w{workers}={share:.0%}")
        print(
            f"workers={workers:3}  {elapsed:7.2f} s  "
            f"{count / elapsed:6.2f} onboardings/s  "
            f"ideal {ideal:6.2f} s  ({share:.0%} of ideal)"
        )
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"summary: n={count} latency={latency}s " + " ".join(shares))


if __name__ == "__main__":
    main()
