"""What the engine adds on top of the AWS calls its steps make.

    python bench/overhead.py 50

Runs the same N onboardings twice, each on a fresh in-process moto: once
through the engine (store, state machine, leases, history), once as the bare
sequence of step functions with nothing around them. Prints both times and
the ratio engine/bare; the last line is a one-line summary.
"""

from __future__ import annotations

import logging
import sys
import time

from bench.common import (
    fake_credentials,
    moto_clients,
    peak_rss_mb,
    runner_for,
    scratch,
    sqlite_store,
    write_file,
)
from engine.secrets import Redactor, SecretSink
from steps import REGISTRY
from steps.base import AccountFacts, StepContext


def engine_run(count: int) -> float:
    """Time N onboardings through the runner."""
    with scratch() as folder, moto_clients() as (clients, more):
        loaded = write_file(folder, count)
        store = sqlite_store(folder)
        runner = runner_for(loaded, store, clients, more)
        started = time.perf_counter()
        outcomes = runner.run()
        elapsed = time.perf_counter() - started
        store.dispose()
    assert all(item.status == "done" for item in outcomes), outcomes[:3]
    return elapsed


def bare_run(count: int) -> float:
    """Time the same step functions called one after another, no engine."""
    with scratch() as folder, moto_clients() as (clients, _more):
        loaded = write_file(folder, count)
        workflow = loaded.config.workflows["standard"]
        account = AccountFacts(
            clients.sts.get_caller_identity()["Account"], "us-east-1"
        )
        secrets = SecretSink(folder / "secrets", "bench/", Redactor())
        log = logging.LoggerAdapter(logging.getLogger("bench"), {})
        started = time.perf_counter()
        for user in loaded.config.users:
            context = StepContext(
                user, workflow, loaded, clients, secrets, account, log
            )
            for state in workflow.states:
                REGISTRY[workflow.steps[state]](context)
        return time.perf_counter() - started


def main() -> None:
    """Run both on the size given on the command line and print the ratio."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    fake_credentials()
    bare_run(2)  # warm imports and moto's first-use costs out of the figures
    bare = bare_run(count)
    engine = engine_run(count)
    ratio = engine / bare
    print(f"{count} onboardings x 7 steps on in-process moto")
    print(f"bare step calls   {bare:8.2f} s  {bare / count * 1000:7.1f} ms/onboarding")
    print(
        f"through engine    {engine:8.2f} s  {engine / count * 1000:7.1f} ms/onboarding"
    )
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"summary: n={count} bare={bare:.2f}s engine={engine:.2f}s ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
