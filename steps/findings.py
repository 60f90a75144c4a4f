"""The review's rules: what is observed of one user, and the findings it yields.

Every rule has a stable id, a severity (high, medium or low), the control it
covers (CIS AWS Foundations Benchmark v5.0 numbering) and a remediation line.
The Reviewed step and the ``review`` command both call ``audit``: the step
fails on a high finding, the command reports and records drift.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from engine.errors import StepError
from steps.base import (
    ENGINE_POLICY_PATH,
    StepContext,
    admin_grant,
    as_document,
    is_code,
    managed_policy_document,
    paginate,
)
from steps.grants import declared_inline
from steps.rotated import grace_ends

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
HIGH, MEDIUM, LOW = "high", "medium", "low"
SEVERITIES = (HIGH, MEDIUM, LOW)
REPORT_NOT_READY = (
    "ReportNotPresent",
    "ReportInProgress",
    "ReportExpired",
    "ReportNotReady",
)
REDO = "; to redo it: python -m engine reset {user} --to {state} --reason ..., then run"


@dataclass(frozen=True)
class Finding:
    """One departure from the practices, as the history and the CLI show it."""

    id: str
    severity: str
    control: str
    resource: str
    message: str
    remediation: str

    def as_dict(self) -> dict[str, str]:
        """Return the finding as plain JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class Rule:
    """A check's fixed identity: id, severity, control and what to do about it."""

    id: str
    severity: str
    control: str
    remediation: str
    redo_step: str | None = None

    def found(self, ctx: StepContext, resource: str, message: str) -> Finding:
        """Return a finding of this rule about ``resource``."""
        fix = self.remediation
        state = _state_before(ctx, self.redo_step)
        if state is not None:
            fix += REDO.format(user=ctx.user.name, state=state)
        return Finding(self.id, self.severity, self.control, resource, message, fix)


def _state_before(ctx: StepContext, step: str | None) -> str | None:
    """Return the state to reset to so that ``step`` runs again, if it is used."""
    order = ["New", *ctx.workflow.states]
    for index, state in enumerate(order[1:]):
        if ctx.workflow.steps.get(state) == step:
            return order[index]
    return None


MFA_NOT_ACTIVE = Rule(
    "IAM.MFA_NOT_ACTIVE",
    HIGH,
    "CIS 1.9",
    "enable an MFA device for the user",
    "mfa",
)
KEY_NOT_DECLARED = Rule(
    "IAM.KEY_NOT_DECLARED",
    HIGH,
    "CIS 1.10",
    "delete the key (aws iam delete-access-key), or declare programmatic_access",
)
KEY_MULTIPLE_ACTIVE = Rule(
    "IAM.KEY_MULTIPLE_ACTIVE",
    HIGH,
    "CIS 1.12",
    "deactivate every key but the one stored in Secrets Manager",
    "access_keys",
)
KEY_TOO_OLD = Rule(
    "IAM.KEY_TOO_OLD",
    HIGH,
    "CIS 1.13",
    "rotate the key",
    "access_keys",
)
KEY_NOT_STORED = Rule(
    "IAM.KEY_NOT_STORED",
    MEDIUM,
    "CIS 1.12",
    "replace the key with one the engine stores",
    "access_keys",
)
KEY_RETIRED_PAST_GRACE = Rule(
    "IAM.KEY_RETIRED_PAST_GRACE",
    LOW,
    "CIS 1.13",
    "delete the inactive key",
    "access_keys",
)
CREDENTIALS_UNUSED = Rule(
    "IAM.CREDENTIALS_UNUSED",
    MEDIUM,
    "CIS 1.11",
    "disable the credential (deactivate the key or delete the login profile), "
    "or find out why it is not used",
)
REPORT_MISSING_USER = Rule(
    "IAM.REPORT_MISSING_USER",
    LOW,
    "CIS 1.11",
    "run `python -m engine review` again once AWS refreshes the credential report "
    "(at most every 4 hours)",
)
POLICY_ATTACHED_TO_USER = Rule(
    "IAM.POLICY_ATTACHED_TO_USER",
    MEDIUM,
    "CIS 1.14",
    "detach it and grant it through a group, or declare it in the user entry",
)
INLINE_POLICY_UNDECLARED = Rule(
    "IAM.INLINE_POLICY_UNDECLARED",
    MEDIUM,
    "CIS 1.14",
    "delete it (aws iam delete-user-policy), or declare it in the user entry",
)
GROUP_UNDECLARED = Rule(
    "IAM.GROUP_UNDECLARED",
    MEDIUM,
    "CIS 1.14",
    "remove the user from the group, or add the group to the user entry",
)
ADMIN_GRANT = Rule(
    "IAM.ADMIN_GRANT",
    HIGH,
    "CIS 1.15",
    "remove the grant, or add allow_admin with a reason to the user entry",
)
ADMIN_ALLOWED = Rule(
    "IAM.ADMIN_ALLOWED",
    LOW,
    "CIS 1.15",
    "review the allow_admin exception regularly",
)
TRAIL_NOT_LOGGING = Rule(
    "CLOUDTRAIL.NOT_LOGGING",
    HIGH,
    "CIS 3.1",
    "start logging on the trail",
    "cloudtrail",
)


@dataclass
class Observed:
    """What AWS says about one user, read once and shared by every rule."""

    keys: list[dict[str, Any]]
    stored_key: str | None
    mfa_devices: list[str]
    attached: list[dict[str, str]]
    inline: list[str]
    groups: list[str]
    documents: list[tuple[str, dict[str, Any]]]
    report_row: dict[str, str] | None


def audit(ctx: StepContext, report: dict[str, dict[str, str]]) -> list[Finding]:
    """Return every finding about the user of ``ctx``, worst first."""
    seen = observe(ctx, report)
    found = [item for check in CHECKS for item in check(ctx, seen)]
    found += _trail(ctx)
    return sorted(found, key=lambda item: SEVERITIES.index(item.severity))


def summary(findings: list[Finding]) -> dict[str, Any]:
    """Return the findings as the history detail records them."""
    return {
        "findings": [item.as_dict() for item in findings],
        "high": sum(item.severity == HIGH for item in findings),
        "total": len(findings),
    }


def observe(ctx: StepContext, report: dict[str, dict[str, str]]) -> Observed:
    """Read what the rules need about the user of ``ctx``."""
    iam, name = ctx.clients.iam, ctx.user.name
    stored = None
    if ctx.user.programmatic_access:
        stored = ctx.secrets.stored_key_id(ctx.clients.secretsmanager, name)
    attached = list(
        paginate(iam, "list_attached_user_policies", "AttachedPolicies", UserName=name)
    )
    inline = list(paginate(iam, "list_user_policies", "PolicyNames", UserName=name))
    groups = [
        g["GroupName"]
        for g in paginate(iam, "list_groups_for_user", "Groups", UserName=name)
    ]
    return Observed(
        keys=list(
            paginate(iam, "list_access_keys", "AccessKeyMetadata", UserName=name)
        ),
        stored_key=stored,
        mfa_devices=[
            d["SerialNumber"]
            for d in paginate(iam, "list_mfa_devices", "MFADevices", UserName=name)
        ],
        attached=attached,
        inline=inline,
        groups=groups,
        documents=_user_documents(ctx, attached, inline)
        + [doc for group in groups for doc in _group_documents(ctx, group)],
        report_row=report.get(name),
    )


def _user_documents(
    ctx: StepContext, attached: list[dict[str, str]], inline: list[str]
) -> list[tuple[str, dict[str, Any]]]:
    documents = [
        (p["PolicyArn"], managed_policy_document(ctx, p["PolicyArn"])) for p in attached
    ]
    for policy in inline:
        raw = ctx.clients.iam.get_user_policy(UserName=ctx.user.name, PolicyName=policy)
        documents.append(
            (f"inline policy {policy}", as_document(raw["PolicyDocument"]))
        )
    return documents


def _group_documents(ctx: StepContext, group: str) -> list[tuple[str, dict[str, Any]]]:
    iam = ctx.clients.iam
    documents = [
        (
            f"group {group}: {p['PolicyArn']}",
            managed_policy_document(ctx, p["PolicyArn"]),
        )
        for p in paginate(
            iam, "list_attached_group_policies", "AttachedPolicies", GroupName=group
        )
    ]
    for policy in paginate(iam, "list_group_policies", "PolicyNames", GroupName=group):
        raw = iam.get_group_policy(GroupName=group, PolicyName=policy)
        documents.append(
            (f"group {group}: inline {policy}", as_document(raw["PolicyDocument"]))
        )
    return documents


def _mfa(ctx: StepContext, seen: Observed) -> list[Finding]:
    console = (seen.report_row or {}).get("password_enabled") == "true"
    if seen.mfa_devices or (ctx.user.mfa == "none" and not console):
        return []
    why = "a console password" if ctx.user.mfa == "none" else f"mfa: {ctx.user.mfa}"
    return [MFA_NOT_ACTIVE.found(ctx, "mfa", f"no MFA device is active ({why})")]


def _active(seen: Observed) -> list[dict[str, Any]]:
    return [key for key in seen.keys if key["Status"] == "Active"]


def _key_declared(ctx: StepContext, seen: Observed) -> list[Finding]:
    if ctx.user.programmatic_access:
        return []
    return [
        KEY_NOT_DECLARED.found(
            ctx,
            key["AccessKeyId"],
            "active access key on a user without programmatic_access",
        )
        for key in _active(seen)
    ]


def _key_count(ctx: StepContext, seen: Observed) -> list[Finding]:
    active = _active(seen)
    if len(active) < 2:
        return []
    ids = ", ".join(key["AccessKeyId"] for key in active)
    message = f"{len(active)} active access keys ({ids}); at most one"
    return [KEY_MULTIPLE_ACTIVE.found(ctx, "access-keys", message)]


def _key_age(ctx: StepContext, seen: Observed) -> list[Finding]:
    limit = ctx.workflow.key_max_age_days
    return [
        KEY_TOO_OLD.found(
            ctx, key["AccessKeyId"], f"active access key older than {limit} days"
        )
        for key in _active(seen)
        if ctx.now() - key["CreateDate"] >= timedelta(days=limit)
    ]


def _key_stored(ctx: StepContext, seen: Observed) -> list[Finding]:
    if not ctx.user.programmatic_access:
        return []
    return [
        KEY_NOT_STORED.found(
            ctx, key["AccessKeyId"], "active access key not held in Secrets Manager"
        )
        for key in _active(seen)
        if key["AccessKeyId"] != seen.stored_key
    ]


def _key_grace(ctx: StepContext, seen: Observed) -> list[Finding]:
    current = next(
        (k for k in _active(seen) if k["AccessKeyId"] == seen.stored_key), None
    )
    if current is None:
        return []
    days = ctx.workflow.key_grace_days
    return [
        KEY_RETIRED_PAST_GRACE.found(
            ctx, key["AccessKeyId"], f"inactive key kept past its {days}-day grace"
        )
        for key in seen.keys
        if key["Status"] != "Active" and ctx.now() >= grace_ends(ctx, key, current)
    ]


def _unused(ctx: StepContext, seen: Observed) -> list[Finding]:
    row = seen.report_row
    if row is None:
        message = "not in the credential report yet; unused credentials not checked"
        return [REPORT_MISSING_USER.found(ctx, "credential-report", message)]
    limit = ctx.workflow.unused_credentials_days
    found = []
    for credential, last in _credential_use(row):
        if last is not None and ctx.now() - last >= timedelta(days=limit):
            message = f"{credential} not used for {limit} days or more"
            found.append(CREDENTIALS_UNUSED.found(ctx, credential, message))
    return found


def _credential_use(row: dict[str, str]) -> list[tuple[str, datetime | None]]:
    """Return each enabled credential with its last use (or creation, if never used)."""
    created = report_time(row.get("user_creation_time"))
    used: list[tuple[str, datetime | None]] = []
    if row.get("password_enabled") == "true":
        changed = report_time(row.get("password_last_changed")) or created
        used.append(("password", report_time(row.get("password_last_used")) or changed))
    for n in (1, 2):
        if row.get(f"access_key_{n}_active") != "true":
            continue
        rotated = report_time(row.get(f"access_key_{n}_last_rotated")) or created
        last = report_time(row.get(f"access_key_{n}_last_used_date")) or rotated
        used.append((f"access_key_{n}", last))
    return used


def report_time(value: str | None) -> datetime | None:
    """Parse a credential-report time; N/A, no_information and the like give None."""
    try:
        parsed = datetime.fromisoformat(value or "")
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _declared_arns(ctx: StepContext) -> set[str]:
    return set(ctx.user.managed_policies)


def _attached(ctx: StepContext, seen: Observed) -> list[Finding]:
    declared = _declared_arns(ctx)
    return [
        POLICY_ATTACHED_TO_USER.found(
            ctx, p["PolicyArn"], "policy attached to the user, not through a group"
        )
        for p in seen.attached
        if p["PolicyArn"] not in declared and ENGINE_POLICY_PATH not in p["PolicyArn"]
    ]


def _inline(ctx: StepContext, seen: Observed) -> list[Finding]:
    declared = declared_inline(ctx.user)
    return [
        INLINE_POLICY_UNDECLARED.found(ctx, name, "undeclared inline user policy")
        for name in sorted(set(seen.inline) - declared)
    ]


def _groups(ctx: StepContext, seen: Observed) -> list[Finding]:
    return [
        GROUP_UNDECLARED.found(ctx, name, "member of a group the file does not list")
        for name in sorted(set(seen.groups) - set(ctx.user.groups))
    ]


def _admin(ctx: StepContext, seen: Observed) -> list[Finding]:
    found = []
    for source, document in seen.documents:
        reason = admin_grant(document)
        if reason is None:
            continue
        if ctx.user.allow_admin is None:
            found.append(ADMIN_GRANT.found(ctx, source, reason))
        else:
            allowed = f"{reason}; allowed: {ctx.user.allow_admin.reason}"
            found.append(ADMIN_ALLOWED.found(ctx, source, allowed))
    return found


CHECKS: tuple[Callable[[StepContext, Observed], list[Finding]], ...] = (
    _mfa,
    _key_declared,
    _key_count,
    _key_age,
    _key_stored,
    _key_grace,
    _unused,
    _attached,
    _inline,
    _groups,
    _admin,
)


def _trail(ctx: StepContext) -> list[Finding]:
    if "cloudtrail" not in ctx.workflow.steps.values():
        return []
    name = ctx.loaded.config.monitoring.trail_name
    try:
        status = ctx.clients.cloudtrail.get_trail_status(Name=name)
    except ClientError as err:
        if not is_code(err, "TrailNotFoundException"):
            raise
        return [TRAIL_NOT_LOGGING.found(ctx, name, "the trail does not exist")]
    if status.get("IsLogging"):
        return []
    return [TRAIL_NOT_LOGGING.found(ctx, name, "the trail is not logging")]


def credential_report(
    iam: Any, log: Logger, polls: int, wait_seconds: float
) -> dict[str, dict[str, str]]:
    """Generate the credential report, poll (bounded) until ready; rows by user."""
    content = _report_content(iam, log, polls, wait_seconds)
    rows = csv.DictReader(io.StringIO(content.decode("utf-8")))
    return {row["user"]: row for row in rows if row.get("user")}


def _report_content(iam: Any, log: Logger, polls: int, wait_seconds: float) -> bytes:
    for attempt in range(polls):
        if attempt % 3 == 0:
            iam.generate_credential_report()
        try:
            content: bytes = iam.get_credential_report()["Content"]
            return content
        except ClientError as err:
            if not is_code(err, *REPORT_NOT_READY):
                raise
            log.info("credential report not ready (%s), waiting", err)
            time.sleep(wait_seconds * (attempt + 1))
    raise StepError(
        f"the credential report was not ready after {polls} polls; run again later",
        code="CredentialReportNotReady",
    )
