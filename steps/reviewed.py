"""Reviewed: audit one user's permissions and credentials and record the findings.

An onboarding reaches Reviewed only when no finding is of high severity;
otherwise the step fails with every finding in the history detail.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import timedelta
from typing import Any

from botocore.exceptions import ClientError

from engine.errors import StepError
from steps.base import (
    StepContext,
    admin_grant,
    as_document,
    is_code,
    managed_policy_document,
    paginate,
)
from steps.least_privilege import INLINE_POLICY_NAME
from steps.mfa import REQUIRE_MFA_POLICY

REPORT_POLLS = 10
REPORT_WAIT_SECONDS = 0.5
REPORT_NOT_READY = (
    "ReportNotPresent",
    "ReportInProgress",
    "ReportExpired",
    "ReportNotReady",
)


def finding(rule: str, severity: str, message: str, remediation: str) -> dict[str, str]:
    """Return one finding in the shape the history records."""
    return {
        "id": rule,
        "severity": severity,
        "message": message,
        "remediation": remediation,
    }


def run(ctx: StepContext) -> dict[str, Any]:
    """Check the user against the practices; fail on any high-severity finding."""
    findings = _mfa(ctx) + _keys(ctx) + _admin(ctx) + _inline(ctx) + _trail(ctx)
    report_row = _credential_report_row(ctx)
    findings += _report_checks(ctx, report_row)
    high = [item for item in findings if item["severity"] == "high"]
    detail = {"findings": findings, "high": len(high), "total": len(findings)}
    if high:
        summary = "; ".join(item["message"] for item in high)
        raise StepError(
            f"review of {ctx.user.name} found: {summary}",
            code="ReviewFindings",
            detail=detail,
        )
    return detail


def _mfa(ctx: StepContext) -> list[dict[str, str]]:
    if ctx.user.mfa == "none":
        return [
            finding(
                "IAM.MFA",
                "info",
                "MFA not required by the user entry (mfa: none)",
                "use mfa: virtual for people",
            )
        ]
    devices = list(
        paginate(
            ctx.clients.iam, "list_mfa_devices", "MFADevices", UserName=ctx.user.name
        )
    )
    if devices:
        return []
    return [
        finding(
            "IAM.MFA",
            "high",
            "no MFA device is enabled",
            "re-run the MFA step: python -m engine run",
        )
    ]


def _keys(ctx: StepContext) -> list[dict[str, str]]:
    keys = list(
        paginate(
            ctx.clients.iam,
            "list_access_keys",
            "AccessKeyMetadata",
            UserName=ctx.user.name,
        )
    )
    active = [key for key in keys if key["Status"] == "Active"]
    found: list[dict[str, str]] = []
    if active and not ctx.user.programmatic_access:
        found.append(
            finding(
                "IAM.Keys.Undeclared",
                "high",
                f"{len(active)} active access key(s) without programmatic_access",
                "delete the keys, or declare programmatic_access",
            )
        )
    if len(active) > 1:
        found.append(
            finding(
                "IAM.Keys.Count",
                "high",
                f"{len(active)} active access keys (at most one)",
                "deactivate all but the newest key",
            )
        )
    limit = timedelta(days=ctx.workflow.key_max_age_days)
    for key in active:
        if ctx.now() - key["CreateDate"] > limit:
            found.append(
                finding(
                    "IAM.Keys.Age",
                    "high",
                    f"access key {key['AccessKeyId']} is older than {limit.days} days",
                    "re-run the engine to rotate it",
                )
            )
    return found


def _admin(ctx: StepContext) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    for source, document in _effective_documents(ctx):
        reason = admin_grant(document)
        if reason is None:
            continue
        if ctx.user.allow_admin is not None:
            found.append(
                finding(
                    "IAM.Admin",
                    "info",
                    f"{source}: {reason}; allowed: {ctx.user.allow_admin.reason}",
                    "review the exception regularly",
                )
            )
        else:
            found.append(
                finding(
                    "IAM.Admin",
                    "high",
                    f"{source}: {reason}",
                    "detach it, or add allow_admin with a reason",
                )
            )
    return found


def _effective_documents(ctx: StepContext) -> list[tuple[str, dict[str, Any]]]:
    iam = ctx.clients.iam
    user = ctx.user.name
    attached = [
        p["PolicyArn"]
        for p in paginate(
            iam, "list_attached_user_policies", "AttachedPolicies", UserName=user
        )
    ]
    documents = [(arn, managed_policy_document(ctx, arn)) for arn in attached]
    for group in paginate(iam, "list_groups_for_user", "Groups", UserName=user):
        name = group["GroupName"]
        arns = [
            p["PolicyArn"]
            for p in paginate(
                iam, "list_attached_group_policies", "AttachedPolicies", GroupName=name
            )
        ]
        documents += [
            (f"group {name}: {arn}", managed_policy_document(ctx, arn)) for arn in arns
        ]
    for policy in paginate(iam, "list_user_policies", "PolicyNames", UserName=user):
        raw = iam.get_user_policy(UserName=user, PolicyName=policy)["PolicyDocument"]
        documents.append((f"inline policy {policy}", as_document(raw)))
    return documents


def _inline(ctx: StepContext) -> list[dict[str, str]]:
    names = set(
        paginate(
            ctx.clients.iam, "list_user_policies", "PolicyNames", UserName=ctx.user.name
        )
    )
    declared = {INLINE_POLICY_NAME} if ctx.user.inline_policy is not None else set()
    found = [
        finding(
            "IAM.Inline",
            "medium",
            f"undeclared inline policy {name}",
            "delete it, or declare it in the file",
        )
        for name in sorted(names - declared)
    ]
    attached = paginate(
        ctx.clients.iam,
        "list_attached_user_policies",
        "AttachedPolicies",
        UserName=ctx.user.name,
    )
    allowed = set(ctx.user.managed_policies) | {REQUIRE_MFA_POLICY}
    for policy in attached:
        if policy["PolicyArn"] not in allowed and policy["PolicyName"] not in allowed:
            found.append(
                finding(
                    "IAM.Attached",
                    "medium",
                    f"undeclared policy {policy['PolicyArn']} attached to the user",
                    "detach it, or declare it in the file",
                )
            )
    return found


def _trail(ctx: StepContext) -> list[dict[str, str]]:
    name = ctx.loaded.config.monitoring.trail_name
    try:
        status = ctx.clients.cloudtrail.get_trail_status(Name=name)
    except ClientError as err:
        if not is_code(err, "TrailNotFoundException"):
            raise
        return [
            finding(
                "CloudTrail.Missing",
                "high",
                f"trail {name} does not exist",
                "re-run the Monitored step",
            )
        ]
    if status.get("IsLogging"):
        return []
    return [
        finding(
            "CloudTrail.Logging",
            "high",
            f"trail {name} is not logging",
            "start logging: re-run the Monitored step",
        )
    ]


def _credential_report_row(ctx: StepContext) -> dict[str, str] | None:
    content = _credential_report(ctx)
    rows = csv.DictReader(io.StringIO(content.decode("utf-8")))
    return next((row for row in rows if row.get("user") == ctx.user.name), None)


def _credential_report(ctx: StepContext) -> bytes:
    iam = ctx.clients.iam
    for attempt in range(REPORT_POLLS):
        if attempt == 0 or attempt % 3 == 0:
            iam.generate_credential_report()
        try:
            content: bytes = iam.get_credential_report()["Content"]
            return content
        except ClientError as err:
            if not is_code(err, *REPORT_NOT_READY):
                raise
            ctx.log.info(
                "credential report not ready (%s), waiting",
                err.response["Error"]["Code"],
            )
            time.sleep(REPORT_WAIT_SECONDS * (attempt + 1))
    raise StepError(
        f"the credential report was not ready after {REPORT_POLLS} polls; "
        "run again later",
        code="CredentialReportNotReady",
    )


def _report_checks(
    ctx: StepContext, row: dict[str, str] | None
) -> list[dict[str, str]]:
    if row is None:
        return [
            finding(
                "IAM.Report",
                "medium",
                "the user is missing from the credential report",
                "run the review again in a few minutes",
            )
        ]
    if ctx.user.mfa == "virtual" and row.get("mfa_active") != "true":
        return [
            finding(
                "IAM.Report.MFA",
                "medium",
                "the credential report does not show MFA active yet",
                "run the review again once the report refreshes",
            )
        ]
    return []
