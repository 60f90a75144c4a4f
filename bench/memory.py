"""Peak memory of a run against its number of users: flat, or growing per user?

    python -m bench.memory 10000

Runs the engine over N/10 users and then over N users (first argument,
default 10,000), each in a fresh process, with every step replaced by one that
does nothing: what is measured is the engine itself (file, store, runner,
history), not moto. Prints resident memory after loading the file, after the
run, and the peak, for each size; the last line is a summary of what the run
itself added.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from bench.common import (
    fake_credentials,
    peak_rss_mb,
    runner_without_aws,
    scratch,
    sqlite_store,
    write_file,
)
from steps import REGISTRY
from steps.base import StepContext


def _nothing(_ctx: StepContext) -> dict[str, Any]:
    return {}


def measure_one(count: int) -> None:
    """Run ``count`` users through no-op steps; print one line of figures."""
    for name in REGISTRY:
        REGISTRY[name] = _nothing
    with scratch() as folder:
        loaded = write_file(folder, count)
        loaded_mb = current_rss_mb()
        store = sqlite_store(folder)
        runner = runner_without_aws(loaded, store)
        started = time.perf_counter()
        outcomes = runner.run()
        elapsed = time.perf_counter() - started
        store.dispose()
    assert all(item.status == "done" for item in outcomes), outcomes[:3]
    print(
        f"{count} {elapsed:.2f} {loaded_mb:.1f} {current_rss_mb():.1f} "
        f"{peak_rss_mb():.1f}"
    )


def current_rss_mb() -> float:
    """Return the process's resident memory now, in MB (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _in_child(count: int) -> tuple[float, float, float, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--one", str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    _, *figures = done.stdout.split()
    elapsed, loaded_mb, after_mb, peak_mb = map(float, figures)
    return elapsed, loaded_mb, after_mb, peak_mb


def main() -> None:
    """Measure N/10 and N users in fresh processes and compare their peaks."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    sizes = (max(count // 10, 1), count)
    figures = {}
    for size in sizes:
        elapsed, loaded_mb, after_mb, peak_mb = _in_child(size)
        figures[size] = after_mb - loaded_mb
        print(
            f"users={size:6}  {elapsed:7.2f} s  RSS after loading the file "
            f"{loaded_mb:6.1f} MB, after the run {after_mb:6.1f} MB "
            f"(the run added {after_mb - loaded_mb:5.1f} MB)  peak {peak_mb:6.1f} MB"
        )
    small, big = sizes
    per_thousand = (figures[big] - figures[small]) / ((big - small) / 1000)
    print(
        f"summary: run memory {figures[small]:.1f} MB at {small} users, "
        f"{figures[big]:.1f} MB at {big} users ({per_thousand:.2f} MB per 1,000 more)"
    )


if __name__ == "__main__":
    fake_credentials()
    if sys.argv[1:2] == ["--one"]:
        measure_one(int(sys.argv[2]))
    else:
        main()
