"""Key rotation and the review: each rule kept, then planted by hand and caught."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.errors import StepError
from engine.store import open_store
from steps import created, least_privilege, mfa, reviewed, rotated
from steps.base import StepContext
from steps.findings import report_time
from tests.conftest import StepKit, write_workflows

ALICE: dict[str, Any] = {"name": "alice", "groups": ["readers"]}
BOT: dict[str, Any] = {"name": "bot", "mfa": "none", "programmatic_access": True}
ADMIN_ARN = "arn:aws:iam::aws:policy/AdministratorAccess"
READONLY_ARN = "arn:aws:iam::aws:policy/ReadOnlyAccess"
SHORT_STATES = ["Created", "LeastPrivilege", "MFA", "Rotated", "Reviewed"]
SHORT_STEPS = {
    "Created": "create_user",
    "LeastPrivilege": "least_privilege",
    "MFA": "mfa",
    "Rotated": "access_keys",
    "Reviewed": "review",
}


def _workflows(**settings: Any) -> dict[str, Any]:
    """A workflow without Role and Monitored, so these tests stand on their own."""
    return {"standard": {"states": SHORT_STATES, "steps": SHORT_STEPS, **settings}}


def _context(kit: StepKit, user: dict[str, Any], **settings: Any) -> StepContext:
    return kit.context(user, workflows=_workflows(**settings))


def _onboard(kit: StepKit, user: dict[str, Any], **settings: Any) -> StepContext:
    ctx = _context(kit, user, **settings)
    for step in (created, least_privilege, mfa, rotated):
        step.run(ctx)
    return ctx


def _later(ctx: StepContext, days: float) -> None:
    ctx.now = lambda: datetime.now(UTC) + timedelta(days=days)


def _keys(kit: StepKit, user: str) -> dict[str, str]:
    listed = kit.clients.iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    return {key["AccessKeyId"]: key["Status"] for key in listed}


def _stored(kit: StepKit, user: str) -> str:
    value = kit.clients.secretsmanager.get_secret_value(
        SecretId=kit.secrets.secret_name(user)
    )
    return str(json.loads(value["SecretString"])["AccessKeyId"])


class Wrapped:
    """A client that logs each call in a shared list and can replace some of them."""

    def __init__(
        self,
        inner: Any,
        calls: list[str],
        overrides: dict[str, Callable[..., Any]] | None = None,
    ) -> None:
        self._inner = inner
        self._calls = calls
        self._overrides = overrides or {}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._inner, name)
        if not callable(real) or name.startswith(("get_paginator", "_", "meta")):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.append(f"{name}:{kwargs.get('Status', '')}".rstrip(":"))
            return self._overrides.get(name, real)(*args, **kwargs)

        return call


def _wrap(ctx: StepContext, service: str, wrapped: Any) -> None:
    ctx.clients = type(ctx.clients)(**{**vars(ctx.clients), service: wrapped})


def _findings(ctx: StepContext) -> dict[str, dict[str, str]]:
    """Run the review step; return its findings by id, failed or not."""
    try:
        detail = reviewed.run(ctx)
    except StepError as err:
        assert err.code == "ReviewFindings"
        detail = err.detail
    return {item["id"]: item for item in detail["findings"]}


# Rotation -------------------------------------------------------------------


def test_rotation_keeps_one_secret_and_adds_a_version_per_rotation(
    kit: StepKit,
) -> None:
    ctx = _context(kit, BOT)
    created.run(ctx)
    first = rotated.run(ctx)
    _later(ctx, 91)

    second = rotated.run(ctx)

    sm = kit.clients.secretsmanager
    names = [s["Name"] for s in sm.list_secrets()["SecretList"]]
    versions = sm.list_secret_version_ids(SecretId=kit.secrets.secret_name("bot"))
    assert names == [kit.secrets.secret_name("bot")]
    assert len(versions["Versions"]) == 2
    assert second["action"] == "rotated" and _stored(kit, "bot") == second["key_id"]
    assert _keys(kit, "bot") == {
        first["key_id"]: "Inactive",
        second["key_id"]: "Active",
    }


def test_rotation_leaves_a_key_younger_than_the_maximum_age(kit: StepKit) -> None:
    ctx = _context(kit, BOT, key_max_age_days=30)
    created.run(ctx)
    first = rotated.run(ctx)
    _later(ctx, 29)

    again = rotated.run(ctx)

    assert again["action"] == "kept" and again["key_id"] == first["key_id"]
    assert _keys(kit, "bot") == {first["key_id"]: "Active"}


def test_rotation_order_frees_the_quota_before_creating_and_stores_before_retiring(
    kit: StepKit,
) -> None:
    """Case 2: an inactive and an active key, both past the maximum age."""
    ctx = _context(kit, BOT)
    created.run(ctx)
    iam = kit.clients.iam
    stale = iam.create_access_key(UserName="bot")["AccessKey"]["AccessKeyId"]
    iam.update_access_key(UserName="bot", AccessKeyId=stale, Status="Inactive")
    held = rotated.run(ctx)["key_id"]
    _later(ctx, 120)
    calls: list[str] = []
    _wrap(ctx, "iam", Wrapped(iam, calls))
    _wrap(ctx, "secretsmanager", Wrapped(kit.clients.secretsmanager, calls))

    detail = rotated.run(ctx)

    writes = [c for c in calls if not c.startswith(("list", "get"))]
    assert writes == [
        "delete_access_key",
        "create_access_key",
        "put_secret_value",
        "update_access_key:Inactive",
    ]
    assert detail["deleted"] == [stale] and detail["retired"] == [held]
    assert _keys(kit, "bot") == {held: "Inactive", detail["key_id"]: "Active"}


def test_a_retired_key_is_deleted_only_after_the_grace_period(kit: StepKit) -> None:
    ctx = _context(kit, BOT, key_grace_days=7)
    created.run(ctx)
    old = rotated.run(ctx)["key_id"]
    _later(ctx, 91)
    new = rotated.run(ctx)["key_id"]

    ctx.now = lambda: datetime.now(UTC) + timedelta(days=6)
    within = rotated.run(ctx)
    kept = _keys(kit, "bot")
    ctx.now = lambda: datetime.now(UTC) + timedelta(days=8)
    after = rotated.run(ctx)

    assert within["action"] == "kept" and within["purged"] == []
    assert kept == {old: "Inactive", new: "Active"}
    assert after["purged"] == [old] and _keys(kit, "bot") == {new: "Active"}


def test_a_key_whose_create_response_was_lost_is_not_leaked(kit: StepKit) -> None:
    """botocore retries a lost CreateAccessKey; AWS made the first key already."""
    ctx = _context(kit, BOT)
    created.run(ctx)
    held = rotated.run(ctx)["key_id"]
    _later(ctx, 91)
    iam = kit.clients.iam
    made: list[str] = []

    def lost_then_retried(**kwargs: Any) -> Any:
        if not made:
            made.append(iam.create_access_key(**kwargs)["AccessKey"]["AccessKeyId"])
        return iam.create_access_key(**kwargs)  # the retry: LimitExceeded the 1st time

    _wrap(ctx, "iam", Wrapped(iam, [], {"create_access_key": lost_then_retried}))

    detail = rotated.run(ctx)

    assert made[0] not in _keys(kit, "bot")
    assert _keys(kit, "bot") == {held: "Inactive", detail["key_id"]: "Active"}
    assert _stored(kit, "bot") == detail["key_id"]


def test_a_key_made_by_a_run_killed_before_storing_it_is_retired_then_deleted(
    kit: StepKit,
) -> None:
    ctx = _context(kit, BOT, key_grace_days=0)
    created.run(ctx)
    orphan = kit.clients.iam.create_access_key(UserName="bot")["AccessKey"]

    first = rotated.run(ctx)
    second = rotated.run(ctx)

    assert first["retired"] == [orphan["AccessKeyId"]]
    assert second["purged"] == [orphan["AccessKeyId"]]
    assert _keys(kit, "bot") == {first["key_id"]: "Active"}


def test_a_console_user_gets_no_key_at_setup(kit: StepKit) -> None:
    ctx = _context(kit, ALICE)
    created.run(ctx)

    assert rotated.run(ctx)["action"] == "skipped"
    assert _keys(kit, "alice") == {}


# Review rules ---------------------------------------------------------------


def test_a_fully_onboarded_user_passes_the_review(kit: StepKit) -> None:
    ctx = _onboard(kit, ALICE)

    detail = reviewed.run(ctx)

    assert detail["high"] == 0
    assert {f["severity"] for f in detail["findings"]} <= {"low"}


def test_review_finding_has_id_severity_control_message_and_remediation(
    kit: StepKit,
) -> None:
    ctx = _onboard(kit, ALICE)
    kit.clients.iam.create_access_key(UserName="alice")

    with pytest.raises(StepError) as caught:
        reviewed.run(ctx)

    found = {f["id"]: f for f in caught.value.detail["findings"]}
    item = found["IAM.KEY_NOT_DECLARED"]
    assert caught.value.code == "ReviewFindings" and caught.value.detail["high"] >= 1
    assert item["severity"] == "high" and item["control"] == "CIS 1.10"
    assert item["message"] and item["remediation"] and item["resource"]


def test_mfa_active_passes_and_a_deactivated_device_is_high(kit: StepKit) -> None:
    ctx = _onboard(kit, ALICE)
    assert "IAM.MFA_NOT_ACTIVE" not in _findings(ctx)
    iam = kit.clients.iam
    serial = iam.list_mfa_devices(UserName="alice")["MFADevices"][0]["SerialNumber"]
    iam.deactivate_mfa_device(UserName="alice", SerialNumber=serial)

    found = _findings(ctx)

    assert found["IAM.MFA_NOT_ACTIVE"]["severity"] == "high"
    assert (
        "reset alice --to LeastPrivilege" in found["IAM.MFA_NOT_ACTIVE"]["remediation"]
    )


def test_a_console_password_without_mfa_is_high_even_with_mfa_none(
    kit: StepKit,
) -> None:
    ctx = _onboard(kit, BOT)
    assert "IAM.MFA_NOT_ACTIVE" not in _findings(ctx)
    kit.clients.iam.create_login_profile(UserName="bot", Password="Xx1!" * 5)

    assert _findings(ctx)["IAM.MFA_NOT_ACTIVE"]["severity"] == "high"


def test_one_active_key_passes_and_a_second_one_is_high(kit: StepKit) -> None:
    ctx = _onboard(kit, BOT)
    assert not {"IAM.KEY_MULTIPLE_ACTIVE", "IAM.KEY_NOT_STORED"} & set(_findings(ctx))
    extra = kit.clients.iam.create_access_key(UserName="bot")["AccessKey"]

    found = _findings(ctx)

    assert found["IAM.KEY_MULTIPLE_ACTIVE"]["severity"] == "high"
    assert found["IAM.KEY_NOT_STORED"]["resource"] == extra["AccessKeyId"]


def test_a_fresh_key_passes_and_one_past_the_maximum_age_is_high(
    kit: StepKit,
) -> None:
    ctx = _onboard(kit, BOT)
    assert "IAM.KEY_TOO_OLD" not in _findings(ctx)
    _later(ctx, 90)

    found = _findings(ctx)

    assert found["IAM.KEY_TOO_OLD"]["control"] == "CIS 1.13"


def test_a_retired_key_past_its_grace_period_is_reported(kit: StepKit) -> None:
    ctx = _onboard(kit, BOT, key_grace_days=7)
    _later(ctx, 91)
    rotated.run(ctx)
    _later(ctx, 1)
    assert "IAM.KEY_RETIRED_PAST_GRACE" not in _findings(ctx)
    ctx.now = lambda: datetime.now(UTC) + timedelta(days=8)

    assert _findings(ctx)["IAM.KEY_RETIRED_PAST_GRACE"]["severity"] == "low"


def _report_row(user: str, **fields: str) -> str:
    columns = (
        "user,arn,user_creation_time,password_enabled,password_last_used,"
        "password_last_changed,password_next_rotation,mfa_active,"
        "access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,"
        "access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date"
    ).split(",")
    values = {name: "N/A" for name in columns}
    values.update(user=user, password_enabled="false", mfa_active="false")
    values.update(access_key_1_active="false", access_key_2_active="false")
    values.update(fields)
    return ",".join(columns) + "\n" + ",".join(values[c] for c in columns) + "\n"


def _fake_report(ctx: StepContext, content: str) -> None:
    def report() -> dict[str, Any]:
        return {"Content": content.encode(), "ReportFormat": "text/csv"}

    _wrap(
        ctx,
        "iam",
        Wrapped(ctx.clients.iam, [], {"get_credential_report": report}),
    )


def _ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).strftime(
        "%Y-%m-%dT%H:%M:%S+00:00"
    )


def test_credentials_used_recently_pass_and_unused_ones_are_reported(
    kit: StepKit,
) -> None:
    ctx = _onboard(kit, BOT)
    recent = _report_row(
        "bot",
        user_creation_time=_ago(200),
        access_key_1_active="true",
        access_key_1_last_rotated=_ago(80),
        access_key_1_last_used_date=_ago(3),
    )
    _fake_report(ctx, recent)
    assert "IAM.CREDENTIALS_UNUSED" not in _findings(ctx)

    stale = recent.replace(_ago(3), _ago(46)).replace("N/A", _ago(60), 1)
    _fake_report(ctx, stale.replace("false", "true", 1))
    found = _findings(ctx)

    assert found["IAM.CREDENTIALS_UNUSED"]["control"] == "CIS 1.11"
    assert found["IAM.CREDENTIALS_UNUSED"]["severity"] == "medium"


def test_a_never_used_key_counts_from_its_creation(kit: StepKit) -> None:
    ctx = _onboard(kit, BOT, unused_credentials_days=10)
    row = _report_row(
        "bot", access_key_1_active="true", access_key_1_last_rotated=_ago(11)
    )
    _fake_report(ctx, row)

    found = _findings(ctx)

    assert found["IAM.CREDENTIALS_UNUSED"]["resource"] == "access_key_1"


def test_a_user_missing_from_the_report_is_a_low_finding(kit: StepKit) -> None:
    ctx = _onboard(kit, BOT)
    _fake_report(ctx, _report_row("somebody-else"))

    assert _findings(ctx)["IAM.REPORT_MISSING_USER"]["severity"] == "low"


def test_report_times_that_are_not_times_are_none() -> None:
    assert report_time("N/A") is None and report_time("no_information") is None
    assert report_time("2026-01-02T03:04:05+00:00") == datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=UTC
    )


def test_group_permissions_pass_and_a_direct_attachment_is_reported(
    kit: StepKit,
) -> None:
    ctx = _onboard(kit, ALICE)
    assert "IAM.POLICY_ATTACHED_TO_USER" not in _findings(ctx)
    kit.clients.iam.attach_user_policy(UserName="alice", PolicyArn=READONLY_ARN)

    found = _findings(ctx)

    assert found["IAM.POLICY_ATTACHED_TO_USER"]["resource"] == READONLY_ARN
    assert found["IAM.POLICY_ATTACHED_TO_USER"]["control"] == "CIS 1.14"


def test_no_inline_policy_passes_and_an_undeclared_one_is_reported(
    kit: StepKit,
) -> None:
    ctx = _onboard(kit, ALICE)
    assert "IAM.INLINE_POLICY_UNDECLARED" not in _findings(ctx)
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
    }
    kit.clients.iam.put_user_policy(
        UserName="alice", PolicyName="sneaky", PolicyDocument=json.dumps(document)
    )

    assert _findings(ctx)["IAM.INLINE_POLICY_UNDECLARED"]["resource"] == "sneaky"


def test_declared_groups_pass_and_an_extra_group_is_reported(kit: StepKit) -> None:
    ctx = _onboard(kit, ALICE)
    assert "IAM.GROUP_UNDECLARED" not in _findings(ctx)
    kit.clients.iam.create_group(GroupName="side-door")
    kit.clients.iam.add_user_to_group(GroupName="side-door", UserName="alice")

    assert _findings(ctx)["IAM.GROUP_UNDECLARED"]["resource"] == "side-door"


def test_no_admin_passes_and_admin_through_a_group_is_high(kit: StepKit) -> None:
    ctx = _onboard(kit, ALICE)
    assert "IAM.ADMIN_GRANT" not in _findings(ctx)
    kit.clients.iam.attach_group_policy(GroupName="readers", PolicyArn=ADMIN_ARN)

    found = _findings(ctx)

    assert found["IAM.ADMIN_GRANT"]["severity"] == "high"
    assert found["IAM.ADMIN_GRANT"]["resource"] == f"group readers: {ADMIN_ARN}"


def test_an_allowed_admin_grant_is_recorded_low_and_does_not_block(
    kit: StepKit,
) -> None:
    user = {
        "name": "root-ish",
        "managed_policies": [ADMIN_ARN],
        "direct_policies": {"reason": "break-glass administrator, approved"},
        "allow_admin": {"reason": "break-glass administrator, approved"},
    }
    ctx = _onboard(kit, user)

    detail = reviewed.run(ctx)

    found = {f["id"]: f for f in detail["findings"]}
    assert found["IAM.ADMIN_ALLOWED"]["severity"] == "low"
    assert "break-glass" in found["IAM.ADMIN_ALLOWED"]["message"]


# The review command -----------------------------------------------------------

USERS = [ALICE, BOT]


@pytest.fixture
def onboarded(tmp_path: Path, aws: Any, capsys: pytest.CaptureFixture[str]) -> Path:
    """A file of two users, run to the end against in-process moto."""
    path = write_workflows(
        tmp_path,
        users=USERS,
        aws={"sandbox": False, "region": "us-east-1"},
        store={"path": "engine.db"},
        workflows=_workflows(),
    )
    code, _, err = _cli(capsys, "run", str(path), "--quiet")
    assert code == 0, err
    return path


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from engine.__main__ import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _review_rows(path: Path, user: str) -> list[dict[str, Any]]:
    store = open_store(f"sqlite:///{path.parent / 'engine.db'}")
    try:
        return [r for r in store.history(user=user) if r["trigger"] == "review"]
    finally:
        store.dispose()


def test_review_reports_a_clean_account_with_exit_0(
    onboarded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(capsys, "review", str(onboarded))

    assert code == 0
    assert "Review findings" in out and "2 users reviewed" in out
    assert "0 with high-severity findings" in out


def test_review_json_lists_each_user_and_exit_1_on_a_high_finding(
    onboarded: Path, aws: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.iam.attach_user_policy(UserName="alice", PolicyArn=ADMIN_ARN)

    code, out, err = _cli(capsys, "review", str(onboarded), "--format", "json")

    result = {item["user"]: item for item in json.loads(out)}
    ids = {f["id"] for f in result["alice"]["findings"]}
    assert code == 1 and "1 with high-severity findings" in err
    assert {"IAM.ADMIN_GRANT", "IAM.POLICY_ATTACHED_TO_USER"} <= ids
    assert result["alice"]["high"] == 1 and result["bot"]["high"] == 0
    assert result["alice"]["recorded"] == "drift"


def test_review_markdown_is_a_table(
    onboarded: Path, aws: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.iam.create_access_key(UserName="bot")

    code, out, _ = _cli(
        capsys, "review", str(onboarded), "--format", "markdown", "--user", "BOT"
    )

    lines = out.splitlines()
    assert code == 1
    assert lines[0].startswith("| user | severity | id |") and lines[1].startswith(
        "|---"
    )
    assert any("IAM.KEY_MULTIPLE_ACTIVE" in line for line in lines[2:])
    assert not any("| alice |" in line for line in lines)


def test_review_records_drift_once_and_the_repair_as_ok(
    onboarded: Path, aws: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _cli(capsys, "review", str(onboarded))
    assert _review_rows(onboarded, "alice") == []  # unchanged since the step's own row
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}],
    }
    aws.iam.put_user_policy(
        UserName="alice", PolicyName="extra", PolicyDocument=json.dumps(document)
    )

    _cli(capsys, "review", str(onboarded))
    _cli(capsys, "review", str(onboarded))
    aws.iam.delete_user_policy(UserName="alice", PolicyName="extra")
    _cli(capsys, "review", str(onboarded))

    rows = _review_rows(onboarded, "alice")
    assert [r["outcome"] for r in rows] == ["drift", "ok"]
    assert all(r["from_state"] == r["to_state"] == "Reviewed" for r in rows)
    ids = {f["id"] for f in rows[0]["detail"]["findings"]}
    assert "IAM.INLINE_POLICY_UNDECLARED" in ids


def test_review_skips_users_not_yet_onboarded(
    onboarded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = [*USERS, {"name": "carol", "groups": ["readers"]}]
    write_workflows(
        onboarded.parent,
        users=users,
        aws={"sandbox": False, "region": "us-east-1"},
        store={"path": "engine.db"},
        workflows=_workflows(),
    )

    code, out, _ = _cli(capsys, "review", str(onboarded), "--format", "json")

    carol = next(item for item in json.loads(out) if item["user"] == "carol")
    assert code == 0 and carol["reviewed"] is False
    assert carol["skipped"] == "not onboarded yet"


def test_review_refuses_an_unknown_user_and_a_missing_database(
    tmp_path: Path, onboarded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(capsys, "review", str(onboarded), "--user", "nobody")
    assert code == 2 and "no user nobody" in err

    code, _, err = _cli(
        capsys, "review", str(onboarded), "--db", str(tmp_path / "none.db")
    )
    assert code == 3 and "no database" in err


def test_review_help_has_an_example_and_the_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _cli(capsys, "review", "--help")

    assert code == 0 and "python -m engine review workflows.yaml" in out
    assert "Exit codes: 0 no high-severity finding, 1 at least one" in out


def test_a_high_finding_stops_the_run_with_the_findings_in_the_history(
    tmp_path: Path, aws: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = {"Key": "onboarded-by", "Value": "iam-onboarding-engine"}
    aws.iam.create_user(UserName="alice", Tags=[tag])
    aws.iam.create_access_key(UserName="alice")  # planted: a console user's key
    path = write_workflows(
        tmp_path,
        users=[ALICE],
        aws={"sandbox": False, "region": "us-east-1"},
        store={"path": "engine.db"},
        workflows=_workflows(retry={"max_attempts": 1}),
    )

    code, _, _ = _cli(capsys, "run", str(path), "--quiet")

    store = open_store(f"sqlite:///{tmp_path / 'engine.db'}")
    last = store.history(user="alice")[-1]
    store.dispose()
    ids = {f["id"] for f in last["detail"]["findings"]}
    assert code == 1 and last["to_state"] == "Reviewed"
    assert last["outcome"] == "failed" and last["error_code"] == "ReviewFindings"
    assert "IAM.KEY_NOT_DECLARED" in ids
