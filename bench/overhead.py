"""What the engine adds on top of the AWS calls its steps make.

    python -m bench.overhead 50 [ROUNDS]

Runs the same N onboardings, each time on a fresh in-process moto: once
through the engine (store, state machine, leases, history), once as the bare
sequence of step functions with nothing around them. It does so ROUNDS times
(default 3), taking turns, because one round on a shared machine can be off
by a third; prints each round and the median of each, with the ratio
engine/bare. The last line is a one-line summary.
"""

from __future__ import annotations

import logging
import statistics
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
    """Run both, round after round, on the size given; print the median ratio."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    fake_credentials()
    bare_run(2)  # warm imports and moto's first-use costs out of the figures
    print(f"{count} onboardings x 7 steps on in-process moto, {rounds} rounds")
    bares, engines = [], []
    for index in range(rounds):
        bares.append(bare_run(count))
        engines.append(engine_run(count))
        print(
            f"round {index + 1}: bare {bares[-1]:6.2f} s  engine {engines[-1]:6.2f} s"
            f"  ratio {engines[-1] / bares[-1]:.3f}"
        )
    bare, engine = statistics.median(bares), statistics.median(engines)
    print(f"bare step calls   {bare:8.2f} s  {bare / count * 1000:7.1f} ms/onboarding")
    print(
        f"through engine    {engine:8.2f} s  {engine / count * 1000:7.1f} ms/onboarding"
    )
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    print(
        f"summary: n={count} rounds={rounds} median bare={bare:.2f}s "
        f"engine={engine:.2f}s ratio={engine / bare:.3f}"
    )


if __name__ == "__main__":
    main()
