"""Reviewed: audit one user's permissions and credentials and record the findings.

An onboarding reaches Reviewed only when no finding is of high severity;
otherwise the step fails (error code ReviewFindings) with every finding in
the history detail. The rules themselves live in steps.findings.
"""

from __future__ import annotations

from typing import Any

from engine.errors import StepError
from steps.base import StepContext
from steps.findings import HIGH, audit, credential_report, summary

REPORT_POLLS = 10
REPORT_WAIT_SECONDS = 0.5


def run(ctx: StepContext) -> dict[str, Any]:
    """Check the user against the practices; fail on any high-severity finding."""
    iam = ctx.clients.iam
    report = credential_report(iam, ctx.log, REPORT_POLLS, REPORT_WAIT_SECONDS)
    findings = audit(ctx, report)
    detail = summary(findings)
    high = [item for item in findings if item.severity == HIGH]
    if high:
        listed = "; ".join(f"{item.id} ({item.resource})" for item in high)
        raise StepError(
            f"review of {ctx.user.name} found {len(high)} high-severity finding(s): "
            f"{listed}; `python -m engine history --user {ctx.user.name}` shows "
            "each with its remediation",
            code="ReviewFindings",
            detail=detail,
        )
    return detail
