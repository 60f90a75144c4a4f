"""The engine's exception tree.

    EngineError                 base; ``exit_code`` is what the CLI returns
    ├── ConfigError             workflows.yaml is unreadable or invalid (exit 2)
    ├── StoreError              the database cannot be opened or migrated (exit 3)
    │   └── StoreUrlError       the database URL itself is unusable (exit 2)
    ├── AwsSetupError           no usable AWS target: credentials, sandbox (exit 3)
    ├── OperatorError           an operator command that cannot apply (exit 2)
    ├── StepError               one step failed for one onboarding (exit 1)
    │   └── PolicyRefused       a policy grants more than the user entry allows
    └── AwaitingUser            a step waits for its user to act: not a failure (exit 5)

Every message names what was involved and what the user can do next. Only
the CLI turns these into exit codes and one-line messages.
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    exit_code = 1


class ConfigError(EngineError):
    """workflows.yaml cannot be used; nothing has been run or written."""

    exit_code = 2

    def __init__(self, path: str, line: int | None, field: str, problem: str) -> None:
        self.path = path
        self.line = line
        self.field = _printable(field)
        self.problem = _printable(problem)
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {self.field}: {self.problem}")


class StoreError(EngineError):
    """The state store cannot be opened, migrated or written."""

    exit_code = 3


class StoreUrlError(StoreError):
    """The database URL or path is malformed or names a driver the engine lacks."""

    exit_code = 2


def _printable(text: str) -> str:
    """Escape control characters, so that a message stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class AwsSetupError(EngineError):
    """The AWS target (sandbox, endpoint or account) cannot be used."""

    exit_code = 3


class OperatorError(EngineError):
    """An operator command (retry, cancel, reset) does not apply to this onboarding."""

    exit_code = 2


class StepError(EngineError):
    """A step failed; the onboarding stops and the error lands in the history."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        code: str = "StepFailed",
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.code = code
        self.detail = detail or {}
        super().__init__(message)


class PolicyRefused(StepError):
    """A policy grants admin-style access that the user entry does not allow."""

    def __init__(self, user: str, source: str, reason: str) -> None:
        super().__init__(
            f"refused {source} for user {user}: {reason}; remove it, or add "
            "allow_admin with a reason to the user entry",
            code="PolicyRefused",
            detail={"policy": source, "reason": reason},
        )


class AwaitingUser(EngineError):
    """A step did all it can and waits for its user (to enrol MFA); not a failure."""

    exit_code = 5

    def __init__(
        self,
        message: str,
        code: str = "AwaitingMFA",
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.code = code
        self.detail = detail or {}
        super().__init__(message)
