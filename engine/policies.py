"""What makes a policy document admin-style; shared by validation, steps and review."""

from __future__ import annotations

from typing import Any


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def admin_grant(document: dict[str, Any]) -> str | None:
    """Return why a policy document is admin-style, or None when it is not."""
    for statement in _as_list(document.get("Statement", [])):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        resources = _as_list(statement.get("Resource", []))
        if "NotAction" in statement:
            return "a statement allows NotAction, which grants everything not listed"
        actions = _as_list(statement.get("Action", []))
        if "*" in actions and "*" in resources:
            return "a statement allows action * on resource *"
        if "iam:*" in actions:
            return "a statement allows iam:*, which lets the user grant itself anything"
    return None
