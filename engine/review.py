"""The review command: audit every onboarded user again and record drift.

A user is reviewed once its onboarding has passed every state before the
review step (all its set-up steps ran), whatever its status. For an
onboarding already in its final state, the review writes a history row
(trigger ``review``, from and to that state) only when the set of findings
(rule id and resource) differs from the last recorded review: outcome
``drift`` when a high or medium finding is present, ``ok`` when none is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from engine.aws import AwsTarget
from engine.config import LoadedConfig, UserConfig, WorkflowConfig
from engine.secrets import SecretSink
from engine.store import DONE, START_STATE, Onboarding, Store, Transition, utcnow
from steps import reviewed
from steps.base import StepContext
from steps.findings import HIGH, LOW, Finding, audit, credential_report, summary

log = logging.getLogger(__name__)

REVIEW_STEP = "review"
TRIGGER = "review"
DRIFT, CLEAN = "drift", "ok"


@dataclass
class UserReview:
    """One user's review: its findings, or why it was not reviewed."""

    user: str
    state: str
    findings: list[Finding] = field(default_factory=list)
    recorded: str | None = None
    skipped: str | None = None

    @property
    def high(self) -> int:
        """Return how many findings are of high severity."""
        return sum(item.severity == HIGH for item in self.findings)


class Reviewer:
    """Audits onboarded users against one AWS target and records drift."""

    def __init__(
        self,
        loaded: LoadedConfig,
        store: Store,
        target: AwsTarget,
        secrets: SecretSink,
        actor: str,
    ) -> None:
        self.loaded = loaded
        self.store = store
        self.target = target
        self.secrets = secrets
        self.actor = actor

    def review(self, only: str | None = None) -> list[UserReview]:
        """Review every user of the file (or only ``only``), in the file's order."""
        users = [u for u in self.loaded.config.users if _matches(u, only)]
        report: dict[str, dict[str, str]] | None = None
        results = []
        for user in users:
            result, onboarding = self._prepare(user)
            if result.skipped is None and onboarding is not None:
                if report is None:
                    report = self._report()
                self._audit(user, onboarding, result, report)
            results.append(result)
        return results

    def _prepare(self, user: UserConfig) -> tuple[UserReview, Onboarding | None]:
        onboarding = self.store.onboarding(user.name)
        if onboarding is None:
            return UserReview(user.name, START_STATE, skipped="not onboarded yet"), None
        workflow = self._workflow(user)
        ready = ready_state(workflow)
        result = UserReview(user.name, onboarding.state)
        if not reached(workflow, onboarding.state, ready):
            result.skipped = f"at {onboarding.state}; reviewed once it reaches {ready}"
        return result, onboarding

    def _workflow(self, user: UserConfig) -> WorkflowConfig:
        return self.loaded.config.workflows[self.loaded.config.workflow_of(user)]

    def _report(self) -> dict[str, dict[str, str]]:
        return credential_report(
            self.target.clients.iam,
            log,
            reviewed.REPORT_POLLS,
            reviewed.REPORT_WAIT_SECONDS,
        )

    def _audit(
        self,
        user: UserConfig,
        onboarding: Onboarding,
        result: UserReview,
        report: dict[str, dict[str, str]],
    ) -> None:
        result.findings = audit(self._context(user), report)
        workflow = self._workflow(user)
        final = onboarding.state == workflow.states[-1] and onboarding.status == DONE
        if final and self._changed(onboarding, result.findings):
            result.recorded = self._record(onboarding, result.findings)

    def _context(self, user: UserConfig) -> StepContext:
        return StepContext(
            user=user,
            workflow=self._workflow(user),
            loaded=self.loaded,
            clients=self.target.clients,
            secrets=self.secrets,
            account=self.target.account,
            log=logging.LoggerAdapter(
                logging.getLogger("steps"), {"onboarding": user.name}
            ),
        )

    def _changed(self, onboarding: Onboarding, findings: list[Finding]) -> bool:
        rows = self.store.history(user=onboarding.user_name, state=onboarding.state)
        recorded = [row for row in rows if row["outcome"] in (CLEAN, DRIFT)]
        if not recorded:
            return True
        before = recorded[-1]["detail"].get("findings", [])
        return fingerprint(before) != fingerprint([f.as_dict() for f in findings])

    def _record(self, onboarding: Onboarding, findings: list[Finding]) -> str | None:
        holder = self.store.live_lease(onboarding.id)
        if holder is not None:
            log.warning(
                "not recording %s's review: %s is driving it; review again later",
                onboarding.user_name,
                holder,
            )
            return None
        outcome = DRIFT if any(f.severity != LOW for f in findings) else CLEAN
        transition = Transition(
            onboarding=onboarding,
            to_state=onboarding.state,
            trigger=TRIGGER,
            actor=self.actor,
            started_at=utcnow(),
            outcome=outcome,
            detail=summary(findings),
        )
        self.store.record(transition, onboarding.status)
        return outcome


def fingerprint(findings: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Return what identifies a set of findings: each rule id and its resource."""
    return {(str(f.get("id")), str(f.get("resource", ""))) for f in findings}


def ready_state(workflow: WorkflowConfig) -> str:
    """Return the state after which a user can be reviewed: the one before review."""
    order = [START_STATE, *workflow.states]
    for index, state in enumerate(order[1:]):
        if workflow.steps.get(state) == REVIEW_STEP:
            return order[index]
    return order[-1]


def reached(workflow: WorkflowConfig, state: str, target: str) -> bool:
    """Tell whether ``state`` is ``target`` or a later state of ``workflow``."""
    order = [START_STATE, *workflow.states]
    return state in order and order.index(state) >= order.index(target)


def _matches(user: UserConfig, only: str | None) -> bool:
    return only is None or user.name.lower() == only.lower()
