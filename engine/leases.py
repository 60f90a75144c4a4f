"""Lease owners: who holds an onboarding, and whether that holder is known dead.

An owner is ``host:pid:nonce``. A lease normally ends when its holder
releases it or when it expires; a holder on this same host whose process no
longer exists (it was killed) cannot release it, so its lease is taken over
at once instead of after the expiry.
"""

from __future__ import annotations

import os
import socket
import uuid


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
