"""Compare three ways to give N onboardings a state machine, and print the figures.

    python bench/machine.py 5000

1. one transitions Machine per onboarding;
2. one shared Machine holding all N models at once (add_model for each);
3. the engine's way: one shared Machine, a model attached only while driven.

Each walks every onboarding through the seven states with no step work, so
the figures are the machine's own cost. The last line is a one-line summary.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable

from transitions import Machine

from engine.config import DEFAULT_STATES, WorkflowConfig
from engine.machine import Cursor, WorkflowMachine
from engine.store import START_STATE

STATES = [START_STATE, *DEFAULT_STATES]
CHAIN = [
    {"trigger": "advance", "source": a, "dest": b}
    for a, b in zip(STATES, STATES[1:], strict=False)
]


class Model:
    """A bare model for the naive variants."""

    state: str


def machine_per_onboarding(count: int) -> None:
    """Build a Machine for every onboarding and walk it to the end."""
    for _ in range(count):
        model = Model()
        Machine(model=model, states=STATES, transitions=CHAIN, initial=START_STATE)
        for _ in DEFAULT_STATES:
            model.advance()  # type: ignore[attr-defined]


def shared_machine_all_models(count: int) -> None:
    """Add every model to one Machine up front, then walk them all."""
    machine = Machine(model=None, states=STATES, transitions=CHAIN, initial=START_STATE)
    models = [Model() for _ in range(count)]
    for model in models:
        machine.add_model(model)
    for model in models:
        for _ in DEFAULT_STATES:
            model.advance()  # type: ignore[attr-defined]


def engine_way(count: int) -> None:
    """Attach one cursor per onboarding to the shared machine, as the runner does."""
    steps = {state: "noop" for state in DEFAULT_STATES}
    machine = WorkflowMachine("bench", WorkflowConfig(steps=steps))
    for _ in range(count):
        cursor = Cursor()
        with machine.attached(cursor, START_STATE):
            for _ in DEFAULT_STATES:
                cursor.load(dict)
                machine.advance(cursor)


def timed(label: str, action: Callable[[int], None], count: int) -> float:
    """Run ``action`` and print its time per onboarding."""
    started = time.perf_counter()
    action(count)
    elapsed = time.perf_counter() - started
    print(f"{label:32} {elapsed:8.3f} s  {elapsed / count * 1e6:9.1f} us/onboarding")
    return elapsed


def main() -> None:
    """Run the three variants on the size given on the command line."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(f"{count} onboardings x {len(DEFAULT_STATES)} transitions")
    per = timed("machine per onboarding", machine_per_onboarding, count)
    shared = timed("shared machine, all models", shared_machine_all_models, count)
    ours = timed("shared machine, one attached", engine_way, count)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB")
    print(
        f"summary: n={count} per-onboarding={per:.3f}s shared-all={shared:.3f}s "
        f"engine={ours:.3f}s"
    )


if __name__ == "__main__":
    main()
