"""Claims onboardings and drives each one, state by state, to its workflow's end."""

from __future__ import annotations

import getpass
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from engine.aws import AwsTarget
from engine.config import LoadedConfig, RetryConfig, UserConfig, WorkflowConfig
from engine.errors import AwaitingUser, StepError, StoreError
from engine.faults import FaultPoints
from engine.leases import AccountLocks, is_dead_here, make_owner
from engine.machine import Cursor, WorkflowMachine
from engine.retry import backoff_seconds, is_transient
from engine.secrets import SecretSink
from engine.store import (
    AWAITING_MFA,
    CANCELLED,
    DONE,
    FAILED,
    OPERATOR,
    RUNNING,
    START_STATE,
    WAITING,
    NewOnboarding,
    Onboarding,
    Store,
    Transition,
    utcnow,
)
from steps import REGISTRY
from steps.base import Clients, StepContext

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)


@dataclass
class Outcome:
    """How one onboarding ended this run."""

    user: str
    state: str
    status: str
    entered: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def settled(self) -> bool:
        """Tell whether nothing is left to do: complete, or cancelled by an operator."""
        return self.status in (DONE, CANCELLED)

    @property
    def waiting(self) -> bool:
        """Tell whether the onboarding waits for its user to enrol an MFA device."""
        return self.status == AWAITING_MFA


ProgressHook = Callable[[str, str], None]


def default_actor() -> str:
    """Return who is acting: the OS user, falling back to the process id."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"pid-{os.getpid()}"


class Runner:
    """Drives every onboarding of a validated file against one AWS target."""

    def __init__(
        self,
        loaded: LoadedConfig,
        store: Store,
        target: AwsTarget,
        secrets: SecretSink,
        faults: FaultPoints | None = None,
        adopt_definitions: bool = False,
    ) -> None:
        self.loaded = loaded
        self.faults = faults or FaultPoints()
        self.adopt_definitions = adopt_definitions
        self._local = threading.local()
        self.store = store
        self.target = target
        self.secrets = secrets
        self.actor = default_actor()
        self.owner = make_owner()
        target.account.guard = AccountLocks(store, self.owner, LEASE).hold
        self.rng = random.Random()
        self.sleep: Callable[[float], None] = time.sleep
        config = loaded.config
        self.machines = {
            name: WorkflowMachine(name, wf) for name, wf in config.workflows.items()
        }

    def run(
        self,
        on_step: ProgressHook | None = None,
        workers: int = 1,
        on_done: Callable[[Outcome], None] | None = None,
    ) -> list[Outcome]:
        """Drive every user, ``workers`` at a time; one failure does not stop others."""
        users = self.loaded.config.users
        known = self.store.ensure_onboardings(self.new_onboardings())

        def one(user: UserConfig) -> Outcome:
            outcome = self.drive(user, on_step, known.get(user.name))
            if on_done is not None:
                on_done(outcome)
            return outcome

        with self.heartbeat():
            if workers <= 1:
                return [one(user) for user in users]
            with ThreadPoolExecutor(workers, thread_name_prefix="onboard") as pool:
                return list(pool.map(one, users))

    def new_onboardings(self) -> list[NewOnboarding]:
        """Return how each user of the file starts: its workflow and definition."""
        config = self.loaded.config
        made = []
        for user in config.users:
            name = config.workflow_of(user)
            spec = config.workflows[name]
            made.append(
                NewOnboarding(
                    user.name, name, spec.definition_hash(), spec.definition()
                )
            )
        return made

    def workers_for(self, asked: int) -> int:
        """Return how many workers the target allows, saying so when it is fewer."""
        allowed = min(asked, self.target.max_workers)
        if allowed < asked:
            log.warning(
                "the sandbox runs %d onboarding(s) at a time, not %d", allowed, asked
            )
        return max(allowed, 1)

    def _clients(self) -> Clients:
        """Return this thread's clients: the target's own on the first thread."""
        made: Clients | None = getattr(self._local, "clients", None)
        if made is not None:
            return made
        if (
            self.target.new_clients is None
            or threading.current_thread() is threading.main_thread()
        ):
            made = self.target.clients
        else:
            made = self.target.new_clients()
            for client in vars(made).values():
                self.faults.watch(client)
        self._local.clients = made
        return made

    def drive(
        self,
        user: UserConfig,
        on_step: ProgressHook | None = None,
        known: Onboarding | None = None,
    ) -> Outcome:
        """Advance one onboarding from its persisted state to the end or a failure.

        ``known`` is the onboarding's row when the caller has already read it.
        """
        workflow = self.loaded.config.workflow_of(user)
        machine = self.machines[workflow]
        spec = self.loaded.config.workflows[workflow]
        onboarding = known or self.store.ensure_onboarding(
            user.name, workflow, spec.definition_hash(), spec.definition()
        )
        if onboarding.status in (DONE, CANCELLED):
            return Outcome(user.name, onboarding.state, onboarding.status)
        # The row under the lease: the one read before may be out of date.
        fresh = self._claim(onboarding)
        if fresh is None:
            error = "another worker holds its lease"
            return Outcome(user.name, onboarding.state, "busy", error=error)
        try:
            return self._drive_claimed(user, machine, spec, fresh, on_step)
        finally:
            self.store.release(onboarding.id, self.owner)

    def drive_leased(
        self, user: UserConfig, leased: Onboarding, on_step: ProgressHook | None
    ) -> Outcome:
        """Advance an onboarding whose lease this runner already took, then release."""
        workflow = self.loaded.config.workflow_of(user)
        spec = self.loaded.config.workflows[workflow]
        try:
            return self._drive_claimed(
                user, self.machines[workflow], spec, leased, on_step
            )
        finally:
            self.store.release(leased.id, self.owner)

    def _drive_claimed(
        self,
        user: UserConfig,
        machine: WorkflowMachine,
        spec: WorkflowConfig,
        onboarding: Onboarding,
        on_step: ProgressHook | None,
    ) -> Outcome:
        if onboarding.status in (DONE, CANCELLED):
            return Outcome(user.name, onboarding.state, onboarding.status)
        if onboarding.definition_hash != spec.definition_hash():
            problem = definition_change(onboarding, spec)
            if problem and not (
                self.adopt_definitions and machine.knows(onboarding.state)
            ):
                return Outcome(user.name, onboarding.state, FAILED, error=problem)
            onboarding = self._adopt(onboarding, spec, problem)
        if (
            onboarding.status == FAILED
            and onboarding.attempts >= spec.retry.max_attempts
        ):
            error = _gave_up_message(onboarding)
            return Outcome(user.name, onboarding.state, FAILED, error=error)
        return self._advance_all(user, machine, onboarding, on_step)

    def _claim(self, onboarding: Onboarding) -> Onboarding | None:
        claimed = self.store.claim(onboarding.id, self.owner, LEASE)
        if claimed is not None:
            return claimed
        holder = self.store.lease_owner(onboarding.id)
        if holder is None or not is_dead_here(holder):
            return None
        log.warning(
            "taking over %s's lease from %s, which is no longer running",
            onboarding.user_name,
            holder,
        )
        return self.store.claim(onboarding.id, self.owner, LEASE, replacing=holder)

    def _adopt(
        self, onboarding: Onboarding, spec: WorkflowConfig, problem: str | None
    ) -> Onboarding:
        why = (
            "adopted with --adopt-definition"
            if problem
            else "remaining states unchanged"
        )
        transition = Transition(
            onboarding=onboarding,
            to_state=onboarding.state,
            trigger="definition-changed",
            actor=self.actor,
            started_at=utcnow(),
            outcome=OPERATOR,
            detail={
                "reason": why,
                "from_hash": onboarding.definition_hash,
                "to_hash": spec.definition_hash(),
            },
        )
        also = {
            "definition_hash": spec.definition_hash(),
            "definition": spec.definition(),
        }
        return self.store.record(transition, onboarding.status, also)

    def _advance_all(
        self,
        user: UserConfig,
        machine: WorkflowMachine,
        onboarding: Onboarding,
        on_step: ProgressHook | None,
    ) -> Outcome:
        outcome = Outcome(user.name, onboarding.state, onboarding.status)
        retry = self.loaded.config.workflows[machine.name].retry
        cursor = Cursor()
        announced = False
        with machine.attached(cursor, onboarding.state):
            while (dest := machine.next_state(onboarding.state)) is not None:
                if on_step is not None:
                    on_step(user.name, dest)
                onboarding, transient = self._advance(
                    user, machine, cursor, onboarding, dest, announced
                )
                # A step that succeeded marked the next one started in its commit.
                announced = onboarding.pending_state is not None
                if onboarding.status == AWAITING_MFA:
                    outcome.error = onboarding.last_error
                    break
                if onboarding.status != FAILED:
                    outcome.entered.append(dest)
                    continue
                if not transient or onboarding.attempts >= retry.max_attempts:
                    outcome.error = (
                        f"{onboarding.last_error_code}: {onboarding.last_error}"
                    )
                    break
                self._wait_before_retry(onboarding, dest, retry)
        outcome.state, outcome.status = onboarding.state, onboarding.status
        return outcome

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Renew every lease this runner holds, every third of a lease, until done."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(LEASE.total_seconds() / 3):
                self.store.renew_leases(self.owner, LEASE)

        beater = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        beater.start()
        try:
            yield
        finally:
            stop.set()
            beater.join()

    def _wait_before_retry(
        self, onboarding: Onboarding, dest: str, retry: RetryConfig
    ) -> None:
        delay = backoff_seconds(onboarding.attempts, retry, self.rng)
        log.warning(
            "step %s of %s failed with %s (attempt %d of %d); trying again in %.1f s",
            dest,
            onboarding.user_name,
            onboarding.last_error_code,
            onboarding.attempts,
            retry.max_attempts,
            delay,
            extra={"onboarding": onboarding.user_name},
        )
        self.sleep(delay)

    def _advance(
        self,
        user: UserConfig,
        machine: WorkflowMachine,
        cursor: Cursor,
        current: Onboarding,
        dest: str,
        announced: bool = False,
    ) -> tuple[Onboarding, bool]:
        """Run the step into ``dest`` and record it.

        ``announced`` says this run's previous commit already marked the step
        started; otherwise a marker is committed here before AWS is called.
        """
        in_doubt = not announced and current.pending_state == dest
        if not announced:
            current = self.store.mark_started(current, dest, LEASE)
        started = utcnow()
        context = self._context(user, machine.name, in_doubt)
        step = REGISTRY[self.loaded.config.workflows[machine.name].steps[dest]]
        note = " (reconciling an interrupted attempt)" if in_doubt else ""
        context.log.info("step %s started%s", dest, note)
        cursor.load(lambda: step(context))
        try:
            machine.advance(cursor)
        except StoreError:
            raise
        except AwaitingUser as wait:
            return self._record_waiting(context, current, dest, started, wait), False
        except Exception as err:  # noqa: BLE001 - every failure is recorded, none hidden
            failed = self._record_failure(context, current, dest, started, err)
            return failed, is_transient(err)
        detail = dict(cursor.detail)
        if in_doubt:
            detail["reconciled_interrupted_attempt"] = True
        status = DONE if dest == machine.final else RUNNING
        context.log.info("step %s finished", dest)
        after = _after_success(machine.next_state(dest))
        recorded = self._record(
            current, dest, started, "ok", detail, status=status, also=after
        )
        return recorded, False

    def _record_waiting(
        self,
        context: StepContext,
        current: Onboarding,
        dest: str,
        started: Any,
        wait: AwaitingUser,
    ) -> Onboarding:
        context.log.info("step %s waits for the user: %s", dest, wait)
        return self._record(
            current,
            dest,
            started,
            WAITING,
            wait.detail,
            status=AWAITING_MFA,
            code=wait.code,
            message=str(wait),
        )

    def wait_for_users(
        self, outcomes: list[Outcome], timeout: float, interval: float
    ) -> list[Outcome]:
        """Drive waiting onboardings again, every ``interval`` s, for ``timeout`` s."""
        deadline = time.monotonic() + timeout
        users = {user.name: user for user in self.loaded.config.users}
        while any(item.waiting for item in outcomes):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sleep(min(interval, left))
            with self.heartbeat():
                outcomes = [
                    self._drive_again(users[item.user], item) if item.waiting else item
                    for item in outcomes
                ]
        return outcomes

    def _drive_again(self, user: UserConfig, before: Outcome) -> Outcome:
        after = self.drive(user)
        after.entered[:0] = before.entered
        return after

    def _record_failure(
        self,
        context: StepContext,
        current: Onboarding,
        dest: str,
        started: Any,
        err: Exception,
    ) -> Onboarding:
        code, message, detail = describe_failure(err)
        detail = {
            **detail,
            "transient": is_transient(err),
            "attempt": current.attempts + 1,
        }
        context.log.error(
            "step %s failed: %s: %s",
            dest,
            code,
            message,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        return self._record(
            current, dest, started, "failed", detail, code=code, message=message
        )

    def _record(
        self,
        current: Onboarding,
        dest: str,
        started: Any,
        outcome: str,
        detail: dict[str, Any],
        status: str = FAILED,
        code: str | None = None,
        message: str | None = None,
        also: dict[str, Any] | None = None,
    ) -> Onboarding:
        self.target.checkpoint()
        transition = Transition(
            onboarding=current,
            to_state=dest,
            trigger="advance",
            actor=self.actor,
            started_at=started,
            outcome=outcome,
            detail=self._safe_detail(detail),
            error_code=code,
            error_message=self.secrets.redactor.mask(message) if message else None,
        )
        self.faults.hit(f"before-commit:{dest}")
        recorded = self.store.record(transition, status, also)
        self.faults.hit(f"after-commit:{dest}")
        return recorded

    def _safe_detail(self, detail: dict[str, Any]) -> dict[str, Any]:
        if self.secrets.redactor.contains_secret(json.dumps(detail, default=str)):
            log.error(
                "a step's detail carried a secret; it was withheld from the history"
            )
            return {"withheld": "the step's detail carried a secret value"}
        return detail

    def _context(self, user: UserConfig, workflow: str, in_doubt: bool) -> StepContext:
        adapter = logging.LoggerAdapter(
            logging.getLogger("steps"), {"onboarding": user.name}
        )
        return StepContext(
            user=user,
            workflow=self.loaded.config.workflows[workflow],
            loaded=self.loaded,
            clients=self._clients(),
            secrets=self.secrets,
            account=self.target.account,
            log=adapter,
            in_doubt=in_doubt,
        )


def _after_success(next_state: str | None) -> dict[str, Any]:
    """Return what a successful transition's commit also writes to the onboarding.

    The next step is marked started in the same commit (saving one commit per
    step); after the final state the lease is given back instead.
    """
    if next_state is None:
        return {"lease_owner": None, "lease_expires_at": None}
    return {"pending_state": next_state, "lease_expires_at": utcnow() + LEASE}


def definition_change(onboarding: Onboarding, spec: WorkflowConfig) -> str | None:
    """Say how a changed definition alters what is left to do; None if it does not."""
    name, user, state = onboarding.workflow, onboarding.user_name, onboarding.state
    advice = (
        f"; to go on, run `python -m engine reset {user} --to STATE --reason ...` "
        "or `run --adopt-definition`"
    )
    if state != START_STATE and state not in spec.states:
        return (
            f"its state {state} is no longer in workflow {name}; run `python -m engine "
            f"reset {user} --to STATE --reason ...` with one of "
            f"{', '.join(spec.states)}"
        )
    # Known shortcoming: onboardings from before migration 0002 kept no definition,
    # so a change cannot be compared and the operator has to decide.
    if onboarding.definition is None:
        return f"workflow {name} changed since {user} started{advice}"
    before = json.loads(onboarding.definition)
    old = WorkflowConfig(states=before["states"], steps=before["steps"]).remaining(
        state
    )
    new = spec.remaining(state)
    if old == new:
        return None
    return (
        f"workflow {name} changed since {user} started: the states after {state} were "
        f"{_chain(old)}, now {_chain(new)}{advice}"
    )


def _chain(pairs: list[tuple[str, str]]) -> str:
    return " -> ".join(state for state, _ in pairs) or "none"


def _gave_up_message(onboarding: Onboarding) -> str:
    return (
        f"gave up after {onboarding.attempts} attempts ({onboarding.last_error_code}: "
        f"{onboarding.last_error}); fix the cause, then run "
        f"`python -m engine retry {onboarding.user_name}`"
    )


def describe_failure(err: Exception) -> tuple[str, str, dict[str, Any]]:
    """Return the error code, one-line message and detail to record for a failure."""
    if isinstance(err, StepError):
        return err.code, str(err), err.detail
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        operation = err.operation_name
        return (
            code,
            f"AWS {operation} failed: {error.get('Message', '')}".strip(),
            {"operation": operation},
        )
    if isinstance(err, BotoCoreError):
        return type(err).__name__, str(err), {}
    return "InternalError", f"{type(err).__name__}: {err}", {}
