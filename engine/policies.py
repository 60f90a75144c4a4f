"""Policy documents: admin-style grants, parliament's lint, policy_sentry's levels.

Shared by config validation (at load), the LeastPrivilege and Role steps
(before anything is attached) and the review.
"""

from __future__ import annotations

import functools
import json
import warnings
from types import ModuleType
from typing import Any

# The access levels policy_sentry turns into actions, as workflows.yaml names them.
ACCESS_LEVELS = ("read", "write", "list", "tagging", "permissions-management")
# parliament findings that mean a document is wrong, not merely broad.
DEFECTS = frozenset(
    {
        "EXCEPTION",
        "MALFORMED_JSON",
        "MALFORMED",
        "DUPLICATE_SID",
        "INVALID_SID",
        "UNKNOWN_ACTION",
        "UNKNOWN_PREFIX",
        "RESOURCE_MISMATCH",
        "INVALID_ARN",
        "INVALID_VERSION",
        "MISMATCHED_TYPE",
        "MISMATCHED_TYPE_OPERATION_TO_NULL",
        "UNKNOWN_CONDITION_FOR_ACTION",
        "UNKNOWN_OPERATOR",
        "BAD_PATTERN_FOR_MFA",
    }
)

# A finding about a wildcard can name hundreds of actions; a message shows a few.
MAX_SHOWN = 3


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


def admin_reasons(document: dict[str, Any]) -> list[str]:
    """Return every reason a document is admin-style: broad grants or escalations."""
    broad = admin_grant(document)
    if broad is not None:
        # Expanding * costs parliament seconds, and the answer is already known.
        return [broad]
    return list(_escalations(json.dumps(document, sort_keys=True)))


@functools.lru_cache(maxsize=512)
def _escalations(text: str) -> tuple[str, ...]:
    """Return parliament's privilege-escalation findings, once per document."""
    return tuple(
        f"privilege escalation {f.location.get('type')} "
        f"({' + '.join(f.location.get('actions', []))})"
        for f in _findings(json.loads(text), community=True)
        if f.issue == "PRIVILEGE_ESCALATION"
    )


def lint(document: dict[str, Any]) -> list[str]:
    """Return parliament's findings that make a document wrong, one line each."""
    return [
        f"{f.issue}: {_describe(f)}"
        for f in _findings(document, community=False)
        if f.issue in DEFECTS
    ]


def _describe(finding: Any) -> str:
    if finding.issue == "RESOURCE_MISMATCH":
        wanted = [f"{d['action']} needs {d['required_format']}" for d in finding.detail]
        shown = "; ".join(wanted[:MAX_SHOWN])
        more = len(wanted) - MAX_SHOWN
        return shown + (f"; and {more} more action(s) like these" if more > 0 else "")
    return str(finding.detail or finding.title or finding.location.get("string"))


def generate(levels: dict[str, list[str]]) -> dict[str, Any]:
    """Return the least-privilege policy policy_sentry writes for access levels."""
    key = json.dumps(levels, sort_keys=True)
    return json.loads(_generate(key))  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=256)
def _generate(key: str) -> str:
    from policy_sentry.writing.sid_group import SidGroup

    template = {"mode": "crud", **json.loads(key)}
    try:
        written = SidGroup().process_template(template)
    # policy_sentry raises bare exceptions for resources it cannot parse.
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"policy_sentry cannot use these resources: {err}") from None
    statements = [_agreed(s) for s in written.get("Statement", [])]
    kept = [s for s in statements if s["Action"]]
    if not kept:
        raise ValueError("the access levels match no action on those resources")
    return json.dumps({"Version": "2012-10-17", "Statement": kept})


def _agreed(statement: dict[str, Any]) -> dict[str, Any]:
    """Drop actions parliament's older IAM database does not know for the resource."""
    # Known shortcoming: policy_sentry's database is newer than parliament's; an
    # action only one of them knows is left out, so the lint always passes.
    document = {"Version": "2012-10-17", "Statement": [statement]}
    unknown: set[str] = set()
    for found in _findings(document, community=False):
        if found.issue == "UNKNOWN_ACTION":
            unknown.add(str(found.location.get("string")))
        elif found.issue == "RESOURCE_MISMATCH":
            unknown.update(str(d["action"]) for d in found.detail)
    actions = [a for a in _as_list(statement["Action"]) if a not in unknown]
    return {**statement, "Action": actions}


def _findings(document: dict[str, Any], community: bool) -> list[Any]:
    parliament = _parliament()
    text = json.dumps(document)
    try:
        policy = parliament.analyze_policy_string(
            text, include_community_auditors=community
        )
    # parliament raises bare exceptions on documents it cannot read; such a
    # document is refused as a finding, never passed as clean.
    except Exception as err:  # noqa: BLE001
        return [_Crash(err)]
    return list(policy.findings)


class _Crash:
    """A parliament failure, shaped like one of its findings."""

    def __init__(self, err: Exception) -> None:
        self.issue = "EXCEPTION"
        self.title = "parliament could not read the document"
        self.detail = f"{type(err).__name__}: {err}"
        self.location: dict[str, Any] = {}


@functools.cache
def _parliament() -> ModuleType:
    with warnings.catch_warnings():
        # parliament 1.6 opens its data files without closing them at import.
        # Known shortcoming: it imports pkg_resources, gone from setuptools 81.
        warnings.simplefilter("ignore")
        import parliament
    module: ModuleType = parliament
    return module
