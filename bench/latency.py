"""Throughput with a fixed latency added to every AWS call, for 1 to 64 workers.

    python -m bench.latency 64 0.05 [--server]

Real IAM calls take 50-150 ms; in-process moto answers in about 2 ms. This
adds a fixed sleep (second argument, default 0.05 s) to every call, runs N
onboardings (first argument) with 1, 4, 16 and 64 workers, and compares each
with the ideal: calls x latency / workers (workers beyond the number of
onboardings count for nothing). With --server, moto runs as a server in a
process of its own, so its work no longer shares this process's interpreter
lock with the engine. The last line is a summary.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from bench.common import (
    fake_credentials,
    moto_clients,
    moto_server_clients,
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
    numbers = [arg for arg in sys.argv[1:] if arg != "--server"]
    count = int(numbers[0]) if numbers else 64
    latency = float(numbers[1]) if len(numbers) > 1 else 0.05
    fake_credentials()
    where = "a moto server in another process" if server else "in-process moto"
    print(
        f"{count} onboardings on {where}, "
        f"{latency * 1000:.0f} ms added to every AWS call"
    )
    shares = []
    for workers in WORKER_COUNTS:
        elapsed, ideal = measure(count, workers, latency, server)
        share = ideal / elapsed
        shares.append(f"w{workers}={share:.0%}")
        print(
            f"workers={workers:3}  {elapsed:7.2f} s  "
            f"{count / elapsed:6.2f} onboardings/s  "
            f"ideal {ideal:6.2f} s  ({share:.0%} of ideal)"
        )
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"summary: n={count} latency={latency}s server={server} " + " ".join(shares))


if __name__ == "__main__":
    main()
