"""Fault points, for tests only: kill the process at a named point of a run.

``IAM_ENGINE_FAULT=after-call:iam.CreateAccessKey`` makes the engine kill
itself with SIGKILL right after that AWS call returns; ``NAME@N`` waits for
the Nth time the point is reached. The points are ``before-call:`` and
``after-call:`` each AWS operation (``service.Operation``), and
``before-commit:`` and ``after-commit:`` each state's transition write.
``IAM_ENGINE_FAULT_LOG=FILE`` appends every point reached to FILE, one per
line, so a test can list them. With neither variable set, nothing happens.
"""

from __future__ import annotations

import os
import signal
from typing import Any

FAULT_ENV = "IAM_ENGINE_FAULT"
FAULT_LOG_ENV = "IAM_ENGINE_FAULT_LOG"


class FaultPoints:
    """Counts the points a run reaches and kills the process at the chosen one."""

    def __init__(self, target: str | None = None, log_path: str | None = None) -> None:
        name, _, nth = (target or "").partition("@")
        self.target = name or None
        self.nth = int(nth) if nth else 1
        self.log_path = log_path
        self.seen = 0

    @classmethod
    def from_env(cls) -> FaultPoints:
        """Build the fault points the environment asks for (usually none)."""
        return cls(os.environ.get(FAULT_ENV), os.environ.get(FAULT_LOG_ENV))

    @property
    def active(self) -> bool:
        """Tell whether any point needs watching."""
        return bool(self.target or self.log_path)

    def hit(self, point: str) -> None:
        """Note that ``point`` was reached; die there if it is the chosen one."""
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(point + "\n")
        if point != self.target:
            return
        self.seen += 1
        if self.seen == self.nth:
            os.kill(os.getpid(), signal.SIGKILL)

    def watch(self, client: Any) -> None:
        """Hook the before- and after-call events of a boto3 client."""
        if not self.active:
            return
        client.meta.events.register("before-call", self._on_call)
        client.meta.events.register("after-call", self._on_call)

    def _on_call(self, event_name: str, **_: Any) -> None:
        phase, service, operation = event_name.split(".", 2)
        self.hit(f"{phase}:{service}.{operation}")
