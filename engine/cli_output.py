"""Turn outcomes, history and status into tables or JSON; the CLI prints them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from rich.table import Table

from engine.review import UserReview
from engine.runner import Outcome
from engine.store import Onboarding

TRACKER = ("Created", "LeastPrivilege", "MFA", "Role", "Rotated", "Monitored")


def outcomes_table(outcomes: list[Outcome]) -> Table:
    """Return the end-of-run summary: one row per user."""
    table = Table(title="Onboarding summary")
    for column in ("user", "state", "status", "entered this run", "error"):
        table.add_column(column, overflow="fold")
    for item in outcomes:
        entered = ", ".join(item.entered) or "-"
        table.add_row(item.user, item.state, item.status, entered, item.error or "")
    return table


def outcomes_json(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Return the end-of-run summary as plain objects."""
    return [asdict(item) for item in outcomes]


def summary_line(outcomes: list[Outcome]) -> str:
    """Return one sentence that says what the run did."""
    changed = [item for item in outcomes if item.entered]
    waiting = [item.user for item in outcomes if item.waiting]
    unfinished = [item for item in outcomes if not item.settled and not item.waiting]
    cancelled = sum(item.status == "cancelled" for item in outcomes)
    if not changed and not unfinished and not waiting:
        also = f" or cancelled ({cancelled})" if cancelled else ""
        return (
            f"Nothing to do: all {len(outcomes)} onboardings are already complete"
            f"{also}; nothing was changed."
        )
    done = len(outcomes) - len(unfinished) - len(waiting) - cancelled
    text = (
        f"{plural(len(outcomes), 'onboarding')}: {done} complete, "
        f"{cancelled} cancelled, "
        f"{len(waiting)} waiting, {len(unfinished)} not finished; "
        f"{len(changed)} advanced this run."
    )
    if waiting:
        text += (
            f" Waiting for MFA enrolment: {', '.join(waiting)} (run again, or "
            "run --wait SECONDS, once they have signed in)."
        )
    if unfinished:
        names = ", ".join(item.user for item in unfinished)
        text += f" Not finished: {names} (see the table; fix the cause and run again)."
    return text


HISTORY_COLUMNS = (
    "id",
    "user_name",
    "from_state",
    "to_state",
    "trigger",
    "outcome",
    "actor",
    "started_at",
    "error_code",
    "note",
)


def history_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return history rows with the names the JSON output documents."""
    renamed = {"user_name": "user", "error_message": "error"}
    return [
        {renamed.get(key, key): value for key, value in row.items()} for row in rows
    ]


def history_table(rows: list[dict[str, Any]]) -> Table:
    """Return the history as a table, one row per transition."""
    table = Table(title="State history")
    for column in HISTORY_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        note = row["error_message"] or row["detail"].get("reason", "")
        cells = {**row, "note": note, "started_at": row["started_at"][:19]}
        table.add_row(*(str(cells.get(column) or "") for column in HISTORY_COLUMNS))
    return table


def tracker(onboarding: Onboarding, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Return one user's status-tracker row, read from its successful transitions."""
    details = {row["to_state"]: row["detail"] for row in rows if row["outcome"] == "ok"}
    return {
        "user": onboarding.user_name,
        "workflow": onboarding.workflow,
        "state": onboarding.state,
        "status": onboarding.status,
        "attempts": onboarding.attempts,
        "iam_user": _iam_user(details.get("Created")),
        "permissions": _permissions(details.get("LeastPrivilege")),
        "mfa": _mfa(details.get("MFA")),
        "access_keys": _keys(details.get("Rotated")),
        "roles": _action(details.get("Role"), "role_arn"),
        "monitoring": _monitoring(details.get("Monitored")),
        "last_error": onboarding.last_error,
    }


def _iam_user(detail: dict[str, Any] | None) -> str:
    return "-" if detail is None else str(detail.get("action", "present"))


def _permissions(detail: dict[str, Any] | None) -> str:
    if detail is None:
        return "-"
    groups = [item["group"] for item in detail.get("groups", [])]
    parts = [f"groups: {', '.join(groups)}"] if groups else []
    if detail.get("attached"):
        parts.append(f"{len(detail['attached'])} attached")
    if detail.get("inline"):
        parts.append("inline")
    return "; ".join(parts) or "none"


def _mfa(detail: dict[str, Any] | None) -> str:
    if detail is None:
        return "-"
    if detail.get("action") == "skipped":
        return "not needed"
    return f"enabled ({str(detail.get('device', '')).rsplit('/', 1)[-1]})"


def _action(detail: dict[str, Any] | None, key: str) -> str:
    if detail is None:
        return "-"
    if detail.get("action") == "skipped":
        return "not needed"
    value = str(detail.get(key, ""))
    return value.rsplit("/", 1)[-1] if value else str(detail.get("action"))


def _keys(detail: dict[str, Any] | None) -> str:
    if detail is None:
        return "-"
    if detail.get("action") == "skipped":
        return "none (no programmatic access)"
    return f"1 active ({detail.get('key_id')}, {detail.get('action')})"


def _monitoring(detail: dict[str, Any] | None) -> str:
    if detail is None:
        return "-"
    return f"trail {str(detail.get('trail_arn', '')).rsplit('/', 1)[-1]} logging"


STATUS_COLUMNS = (
    "user",
    "state",
    "status",
    "iam_user",
    "permissions",
    "mfa",
    "access_keys",
    "roles",
    "monitoring",
    "last_error",
)


def status_table(rows: list[dict[str, Any]]) -> Table:
    """Return the status tracker as a table."""
    table = Table(title="Onboarding status")
    for column in STATUS_COLUMNS:
        table.add_column(column.replace("_", " "), overflow="fold")
    for row in rows:
        table.add_row(*(str(row.get(column) or "") for column in STATUS_COLUMNS))
    return table


REVIEW_COLUMNS = ("user", "severity", "id", "control", "resource", "message", "fix")


def _review_rows(reviews: list[UserReview]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for item in reviews:
        note = f"not reviewed: {item.skipped}" if item.skipped else "no findings"
        if item.skipped or not item.findings:
            rows.append((item.user, "-", "-", "-", "-", note, ""))
        for f in item.findings:
            fields = (f.severity, f.id, f.control, f.resource, f.message, f.remediation)
            rows.append((item.user, *fields))
    return rows


def review_table(reviews: list[UserReview]) -> Table:
    """Return the review's findings as a table, one row per finding."""
    table = Table(title="Review findings")
    for column in REVIEW_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in _review_rows(reviews):
        table.add_row(*row)
    return table


def review_markdown(reviews: list[UserReview]) -> str:
    """Return the review's findings as a Markdown table."""
    lines = [
        "| " + " | ".join(REVIEW_COLUMNS) + " |",
        "|" + "---|" * len(REVIEW_COLUMNS),
    ]
    for row in _review_rows(reviews):
        cells = (cell.replace("|", "\\|").replace("\n", " ") for cell in row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def review_json(reviews: list[UserReview]) -> list[dict[str, Any]]:
    """Return each user's review as plain objects."""
    return [
        {
            "user": item.user,
            "state": item.state,
            "reviewed": item.skipped is None,
            "skipped": item.skipped,
            "recorded": item.recorded,
            "high": item.high,
            "findings": [f.as_dict() for f in item.findings],
        }
        for item in reviews
    ]


def plural(count: int, noun: str) -> str:
    """Return ``count`` and ``noun``, with an s unless there is exactly one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def review_summary(reviews: list[UserReview]) -> str:
    """Return one sentence that says what the review found and recorded."""
    done = [item for item in reviews if item.skipped is None]
    high = [item.user for item in done if item.high]
    recorded = sum(item.recorded is not None for item in done)
    text = (
        f"{plural(len(done), 'user')} reviewed, {len(reviews) - len(done)} not yet; "
        f"{len(high)} with high-severity findings; "
        f"{plural(recorded, 'history row')} recorded."
    )
    if high:
        text += f" High findings: {', '.join(high)} (see the fix column)."
    return text
