"""One transitions Machine per workflow definition, shared by every onboarding.

The machine knows the states and the single trigger, ``advance``, that moves
an onboarding one state forward. A Cursor is the model: it is attached to
the shared machine once for the time one onboarding is driven, then
detached, so the machine never holds more than the onboardings in flight
(bench/machine.py compares this with a Machine per onboarding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from transitions import Machine, MachineError

from engine.config import WorkflowConfig
from engine.store import START_STATE

TRIGGER = "advance"


class Cursor:
    """The model of one onboarding while it is driven; transitions sets ``state``."""

    state: str

    def __init__(self) -> None:
        self.detail: dict[str, Any] = {}
        self._work: Callable[[], dict[str, Any]] | None = None

    def load(self, work: Callable[[], dict[str, Any]]) -> None:
        """Set the step to run on the next ``advance``."""
        self._work = work
        self.detail = {}

    def run_step(self, _event: Any) -> None:
        """Run the loaded step before the state changes; raising aborts the move."""
        if self._work is None:
            raise RuntimeError("advance fired with no step loaded")
        work, self._work = self._work, None
        self.detail = work()


class WorkflowMachine:
    """The states of one workflow and the order in which they are entered."""

    def __init__(self, name: str, workflow: WorkflowConfig) -> None:
        self.name = name
        self.states = [START_STATE, *workflow.states]
        self.final = self.states[-1]
        self._machine = Machine(
            model=None,
            states=self.states,
            initial=START_STATE,
            transitions=self._chain(),
            auto_transitions=False,
            send_event=True,
            before_state_change="run_step",
        )

    def _chain(self) -> list[dict[str, str]]:
        pairs = zip(self.states, self.states[1:], strict=False)
        return [{"trigger": TRIGGER, "source": a, "dest": b} for a, b in pairs]

    def next_state(self, state: str) -> str | None:
        """Return the state after ``state``, or None at the end."""
        found = self._machine.get_transitions(trigger=TRIGGER, source=state)
        return found[0].dest if found else None

    def knows(self, state: str) -> bool:
        """Tell whether ``state`` belongs to this workflow."""
        return state in self.states

    @contextmanager
    def attached(self, cursor: Cursor, state: str) -> Iterator[Cursor]:
        """Attach ``cursor`` in ``state`` for the duration of the block."""
        self._machine.add_model(cursor, initial=state)
        try:
            yield cursor
        finally:
            self._machine.remove_model(cursor)

    @staticmethod
    def advance(cursor: Cursor) -> None:
        """Fire the trigger; the step runs in the before-callback."""
        try:
            getattr(cursor, TRIGGER)()
        except MachineError as err:
            raise RuntimeError(f"cannot advance from {cursor.state}: {err}") from err
