"""Lease owners: who holds an onboarding, and whether that holder is known dead.

An owner is ``host:pid:nonce``. A lease normally ends when its holder
releases it or when it expires; a holder on this same host whose process no
longer exists (it was killed) cannot release it, so its lease is taken over
at once instead of after the expiry. Account-wide set-up (the trail, the
password policy) is held the same way, under a named account lock.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from engine.errors import StepError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2


class LockStore(Protocol):
    """The part of the store account locks need."""

    def take_account_lock(
        self, name: str, owner: str, ttl: timedelta, replacing: str | None = None
    ) -> str | None: ...

    def release_account_lock(self, name: str, owner: str) -> None: ...


def make_owner() -> str:
    """Return a lease owner name unique to this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def is_dead_here(owner: str) -> bool:
    """Tell whether ``owner`` was a process on this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class AccountLocks:
    """Named locks on account-wide set-up, shared by every process on one store."""

    store: LockStore
    owner: str
    ttl: timedelta
    sleep: Callable[[float], None] = field(default=time.sleep)

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        """Wait for the lock ``name`` (at most twice its lifetime), hold it, release."""
        self._take(name)
        try:
            yield
        finally:
            self.store.release_account_lock(name, self.owner)

    def _take(self, name: str) -> None:
        deadline = time.monotonic() + 2 * self.ttl.total_seconds()
        holder = self.store.take_account_lock(name, self.owner, self.ttl)
        while holder is not None:
            if is_dead_here(holder):
                log.warning("taking over %s from %s, no longer running", name, holder)
                holder = self.store.take_account_lock(
                    name, self.owner, self.ttl, replacing=holder
                )
                continue
            if time.monotonic() > deadline:
                raise StepError(
                    f"account-wide set-up {name} is still held by {holder}; run "
                    "again once that run has finished",
                    code="AccountLockBusy",
                )
            log.debug("waiting for %s, held by %s", name, holder)
            self.sleep(POLL_SECONDS)
            holder = self.store.take_account_lock(name, self.owner, self.ttl)
