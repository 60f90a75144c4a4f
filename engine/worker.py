"""A worker: claims onboardings from a shared database, one lease at a time.

Any number of workers, on any number of machines, may serve the same file and
database. Each takes the next unsettled onboarding nobody holds (on PostgreSQL
with ``FOR UPDATE SKIP LOCKED``), leases it, drives it as far as it goes, and
takes the next. One pass visits each onboarding at most once; ``follow`` keeps
passing until stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from engine.runner import LEASE, Outcome, ProgressHook, Runner
from engine.store import Onboarding

log = logging.getLogger(__name__)


class Worker:
    """Serves one validated file's onboardings from the runner's store."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.users = {user.name: user for user in runner.loaded.config.users}
        self.workflows = list(runner.loaded.config.workflows)
        self._lock = threading.Lock()
        self._after = 0

    def enlist(self) -> None:
        """Create the onboardings of users the database does not have yet."""
        self.runner.store.ensure_onboardings(self.runner.new_onboardings())

    def one_pass(
        self,
        threads: int = 1,
        on_step: ProgressHook | None = None,
        on_done: Callable[[Outcome], None] | None = None,
    ) -> list[Outcome]:
        """Drive every onboarding this worker can claim now; return what it drove."""
        self._after = 0
        outcomes: list[Outcome] = []

        def serve() -> None:
            while (leased := self._next()) is not None:
                outcome = self._drive(leased, on_step)
                if outcome is None:
                    continue
                outcomes.append(outcome)
                if on_done is not None:
                    on_done(outcome)

        with self.runner.heartbeat(), ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(serve) for _ in range(threads)]:
                future.result()
        return outcomes

    def _next(self) -> Onboarding | None:
        # Claims go in id order under one lock, so a pass visits each row once.
        with self._lock:
            leased = self.runner.store.claim_next(
                self.runner.owner, LEASE, self.workflows, self._after
            )
            if leased is not None:
                self._after = leased.id
        return leased

    def _drive(
        self, leased: Onboarding, on_step: ProgressHook | None
    ) -> Outcome | None:
        user = self.users.get(leased.user_name)
        if user is None:
            # The row belongs to a user another file onboards; leave it to that file.
            self.runner.store.release(leased.id, self.runner.owner)
            return None
        log.debug("worker %s took %s", self.runner.owner, leased.user_name)
        return self.runner.drive_leased(user, leased, on_step)
