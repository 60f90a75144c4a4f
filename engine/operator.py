"""Operators' actions on one onboarding: retry, cancel, reset to an earlier state.

Each action is a history row like any transition (trigger ``retry``,
``cancel`` or ``reset``, outcome ``operator``), written in the same
transaction as the onboarding's change, with who did it and why.
"""

from __future__ import annotations

from engine.config import WorkflowConfig
from engine.errors import OperatorError
from engine.store import (
    CANCELLED,
    DONE,
    FAILED,
    OPERATOR,
    PENDING,
    START_STATE,
    Onboarding,
    Store,
    Transition,
    utcnow,
)


def retry(store: Store, user: str, actor: str, reason: str) -> Onboarding:
    """Let a failed or cancelled onboarding run again, with its attempts reset."""
    current = _find(store, user)
    if current.status not in (FAILED, CANCELLED):
        raise OperatorError(
            f"{user} is {current.status}, not failed or cancelled; nothing to retry"
        )
    return _act(store, current, "retry", current.state, PENDING, actor, reason)


def cancel(store: Store, user: str, actor: str, reason: str) -> Onboarding:
    """Stop an onboarding: later runs skip it until it is retried or reset."""
    current = _find(store, user)
    if current.status in (DONE, CANCELLED):
        raise OperatorError(f"{user} is already {current.status}; nothing to cancel")
    return _act(store, current, "cancel", current.state, CANCELLED, actor, reason)


def reset(
    store: Store,
    user: str,
    to: str,
    workflow: WorkflowConfig | None,
    actor: str,
    reason: str,
) -> Onboarding:
    """Move an onboarding back to ``to`` under the file's definition of its workflow."""
    current = _find(store, user)
    if workflow is None:
        raise OperatorError(f"workflow {current.workflow} of {user} is not in the file")
    order = [START_STATE, *workflow.states]
    if to not in order:
        raise OperatorError(
            f"{to} is not a state of workflow {current.workflow}; "
            f"states: {', '.join(order)}"
        )
    if to == order[-1]:
        raise OperatorError(
            f"{to} is the last state of workflow {current.workflow}: nothing would "
            f"run after it; reset to {order[-2]} to run its step again"
        )
    if current.state in order and order.index(to) > order.index(current.state):
        raise OperatorError(
            f"{user} is at {current.state}; reset only goes back, not forward to {to}"
        )
    adopt = {
        "definition_hash": workflow.definition_hash(),
        "definition": workflow.definition(),
    }
    return _act(store, current, "reset", to, PENDING, actor, reason, adopt)


def _find(store: Store, user: str) -> Onboarding:
    found = store.onboarding(user)
    if found is None:
        raise OperatorError(
            f"no onboarding for user {user}; `python -m engine status` lists them"
        )
    return found


def _act(
    store: Store,
    current: Onboarding,
    trigger: str,
    to: str,
    status: str,
    actor: str,
    reason: str,
    also: dict[str, str] | None = None,
) -> Onboarding:
    holder = store.live_lease(current.id)
    if holder is not None:
        raise OperatorError(
            f"{current.user_name} is being driven by {holder}; "
            "try again when that run ends"
        )
    transition = Transition(
        onboarding=current,
        to_state=to,
        trigger=trigger,
        actor=actor,
        started_at=utcnow(),
        outcome=OPERATOR,
        detail={"reason": reason, "status": status},
    )
    return store.record(transition, status, also)
