"""Each step alone on moto, and each step run a second time over its own result."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from engine.errors import PolicyRefused, StepError
from steps import created, least_privilege, mfa, monitored, reviewed, role, rotated
from steps.base import MANAGED_BY_TAG
from tests.conftest import StepKit

ALICE: dict[str, Any] = {
    "name": "alice",
    "groups": ["readers"],
    "tags": {"team": "data"},
}
BOT: dict[str, Any] = {"name": "bot", "mfa": "none", "programmatic_access": True}
APP: dict[str, Any] = {
    "name": "app",
    "mfa": "none",
    "service_role": {
        "service": "ec2.amazonaws.com",
        "managed_policies": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"],
    },
}


def test_created_makes_a_tagged_user_and_adopts_it_on_a_rerun(kit: StepKit) -> None:
    ctx = kit.context({**ALICE, "path": "/people/"})

    first = created.run(ctx)
    second = created.run(ctx)

    user = kit.clients.iam.get_user(UserName="alice")["User"]
    tags = {
        t["Key"]: t["Value"]
        for t in kit.clients.iam.list_user_tags(UserName="alice")["Tags"]
    }
    assert first["action"] == "created" and second["action"] == "adopted"
    assert user["Path"] == "/people/"
    assert tags == {"team": "data", MANAGED_BY_TAG[0]: MANAGED_BY_TAG[1]}
    assert len(kit.clients.iam.list_users()["Users"]) == 1


def test_created_refuses_a_user_the_engine_did_not_create(kit: StepKit) -> None:
    kit.clients.iam.create_user(UserName="alice")

    with pytest.raises(StepError, match="not created by this engine") as caught:
        created.run(kit.context(ALICE))

    assert caught.value.code == "UserNotOwned"


def test_created_sends_the_permissions_boundary(kit: StepKit) -> None:
    # moto accepts the boundary but does not store it, so the request is checked.
    boundary = "arn:aws:iam::aws:policy/PowerUserAccess"
    sent: list[dict[str, Any]] = []
    kit.clients.iam.meta.events.register(
        "provide-client-params.iam.CreateUser", lambda params, **_: sent.append(params)
    )

    created.run(kit.context({**ALICE, "permissions_boundary": boundary}))

    assert sent[0]["PermissionsBoundary"] == boundary


def test_least_privilege_joins_groups_and_is_idempotent(kit: StepKit) -> None:
    inline = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::b/*",
            }
        ],
    }
    direct = {"reason": "one bucket for alice alone"}
    ctx = kit.context({**ALICE, "inline_policy": inline, "direct_policies": direct})
    created.run(ctx)

    first = least_privilege.run(ctx)
    second = least_privilege.run(ctx)

    iam = kit.clients.iam
    groups = [
        g["GroupName"] for g in iam.list_groups_for_user(UserName="alice")["Groups"]
    ]
    attached = iam.list_attached_group_policies(GroupName="readers")["AttachedPolicies"]
    assert groups == ["readers"]
    assert [p["PolicyName"] for p in attached] == ["ReadOnlyAccess"]
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == [
        least_privilege.INLINE_POLICY_NAME
    ]
    assert (
        first["groups"][0]["joined"] is True and second["groups"][0]["joined"] is False
    )


# Admin grants the file shows are refused at load (tests/test_cis_permissions.py);
# these need the policy text from AWS, so the step refuses them.
ADMIN_GROUPS = {
    "admins": {"managed_policies": ["arn:aws:iam::aws:policy/PowerUserAccess"]},
}


@pytest.mark.parametrize(
    "user",
    [
        {
            "name": "eve",
            "managed_policies": ["arn:aws:iam::aws:policy/PowerUserAccess"],
            "direct_policies": {"reason": "testing a refused direct grant"},
        },
        {"name": "eve", "groups": ["admins"]},
    ],
    ids=["managed-notaction", "group-managed-notaction"],
)
def test_least_privilege_refuses_admin_without_allow_admin(
    kit: StepKit, user: dict[str, Any]
) -> None:
    ctx = kit.context(user, groups=ADMIN_GROUPS)
    created.run(ctx)

    with pytest.raises(PolicyRefused, match="allow_admin"):
        least_privilege.run(ctx)

    assert (
        kit.clients.iam.list_attached_user_policies(UserName="eve")["AttachedPolicies"]
        == []
    )
    assert kit.clients.iam.list_user_policies(UserName="eve")["PolicyNames"] == []


def test_least_privilege_grants_admin_with_a_recorded_reason(kit: StepKit) -> None:
    user = {
        "name": "root-ish",
        "managed_policies": ["arn:aws:iam::aws:policy/AdministratorAccess"],
        "allow_admin": {"reason": "break-glass administrator"},
        "direct_policies": {"reason": "break-glass administrator"},
    }
    ctx = kit.context(user)
    created.run(ctx)

    detail = least_privilege.run(ctx)

    assert detail["allow_admin_reason"] == "break-glass administrator"
    assert detail["attached"] == ["arn:aws:iam::aws:policy/AdministratorAccess"]


def test_mfa_enables_a_device_from_a_bytes_seed_kept_only_in_a_private_file(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    created.run(ctx)

    detail = mfa.run(ctx)

    devices = kit.clients.iam.list_mfa_devices(UserName="alice")["MFADevices"]
    seed_file = kit.secrets.seed_path("alice")
    seed = json.loads(seed_file.read_text())["seed"]
    assert [d["SerialNumber"] for d in devices] == [detail["device"]]
    assert detail["device"].endswith(":mfa/alice")
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    assert seed and seed not in json.dumps(detail)
    attached = kit.clients.iam.list_attached_user_policies(UserName="alice")[
        "AttachedPolicies"
    ]
    assert [p["PolicyName"] for p in attached] == [mfa.REQUIRE_MFA_POLICY]


def test_mfa_rerun_keeps_the_one_device(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    created.run(ctx)
    mfa.run(ctx)

    second = mfa.run(ctx)

    assert second["action"] == "adopted"
    assert len(kit.clients.iam.list_virtual_mfa_devices()["VirtualMFADevices"]) == 1


def test_mfa_reuses_a_device_an_interrupted_run_left_unassigned(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    created.run(ctx)
    serial, seed = mfa._create_device(ctx)  # the crash came before enable_mfa_device

    detail = mfa.run(ctx)

    assert detail["device"] == serial
    assert len(kit.clients.iam.list_virtual_mfa_devices()["VirtualMFADevices"]) == 1


def test_mfa_replaces_a_leftover_device_whose_seed_was_lost(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    created.run(ctx)
    orphan = kit.clients.iam.create_virtual_mfa_device(VirtualMFADeviceName="alice")[
        "VirtualMFADevice"
    ]

    detail = mfa.run(ctx)

    serials = [
        d["SerialNumber"]
        for d in kit.clients.iam.list_virtual_mfa_devices()["VirtualMFADevices"]
    ]
    assert serials == [detail["device"]]
    assert kit.secrets.read_mfa_seed("alice", detail["device"]) is not None
    assert orphan["SerialNumber"] == detail["device"]  # same name, a new device


def test_mfa_none_is_skipped(kit: StepKit) -> None:
    ctx = kit.context(BOT)
    created.run(ctx)

    assert mfa.run(ctx)["action"] == "skipped"
    assert kit.clients.iam.list_virtual_mfa_devices()["VirtualMFADevices"] == []


def test_role_makes_role_and_profile_holding_exactly_it(kit: StepKit) -> None:
    ctx = kit.context(APP)
    created.run(ctx)

    role.run(ctx)
    role.run(ctx)

    iam = kit.clients.iam
    found = iam.get_role(RoleName="app-service-role")["Role"]
    profile = iam.get_instance_profile(InstanceProfileName="app-service-role")[
        "InstanceProfile"
    ]
    trust = found["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert [r["RoleName"] for r in profile["Roles"]] == ["app-service-role"]
    assert len(iam.list_roles()["Roles"]) == 1
    assert len(iam.list_instance_profiles()["InstanceProfiles"]) == 1


def test_role_evicts_a_stranger_from_its_instance_profile(kit: StepKit) -> None:
    iam = kit.clients.iam
    iam.create_role(
        RoleName="stranger",
        AssumeRolePolicyDocument=json.dumps(role.trust_policy("ec2.amazonaws.com")),
    )
    iam.create_instance_profile(InstanceProfileName="app-service-role")
    iam.add_role_to_instance_profile(
        InstanceProfileName="app-service-role", RoleName="stranger"
    )
    ctx = kit.context(APP)
    created.run(ctx)

    role.run(ctx)

    profile = iam.get_instance_profile(InstanceProfileName="app-service-role")[
        "InstanceProfile"
    ]
    assert [r["RoleName"] for r in profile["Roles"]] == ["app-service-role"]


def test_role_repairs_a_wrong_trust_policy(kit: StepKit) -> None:
    kit.clients.iam.create_role(
        RoleName="app-service-role",
        AssumeRolePolicyDocument=json.dumps(role.trust_policy("lambda.amazonaws.com")),
    )
    ctx = kit.context(APP)
    created.run(ctx)

    detail = role.run(ctx)

    trust = kit.clients.iam.get_role(RoleName="app-service-role")["Role"][
        "AssumeRolePolicyDocument"
    ]
    assert detail["action"] == "trust policy repaired"
    assert trust["Statement"][0]["Principal"]["Service"] == "ec2.amazonaws.com"


def test_role_is_skipped_for_users_without_a_service_role(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    assert role.run(ctx)["action"] == "skipped"


def _stored_secret(kit: StepKit, user: str) -> dict[str, str]:
    value = kit.clients.secretsmanager.get_secret_value(
        SecretId=kit.secrets.secret_name(user)
    )
    stored: dict[str, str] = json.loads(value["SecretString"])
    return stored


def test_rotated_creates_one_stored_key_and_keeps_it_on_a_rerun(kit: StepKit) -> None:
    ctx = kit.context(BOT)
    created.run(ctx)

    first = rotated.run(ctx)
    second = rotated.run(ctx)

    keys = kit.clients.iam.list_access_keys(UserName="bot")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [first["key_id"]]
    assert _stored_secret(kit, "bot")["AccessKeyId"] == first["key_id"]
    assert second == {
        "action": "kept",
        "key_id": first["key_id"],
        "retired": [],
        "purged": [],
    }
    assert "SecretAccessKey" not in json.dumps(first)


def test_rotated_frees_the_quota_held_by_a_stale_inactive_key(kit: StepKit) -> None:
    """Case 2: one active and one inactive key, both past the maximum age."""
    ctx = kit.context(BOT)
    created.run(ctx)
    iam = kit.clients.iam
    old_inactive = iam.create_access_key(UserName="bot")["AccessKey"]["AccessKeyId"]
    iam.update_access_key(UserName="bot", AccessKeyId=old_inactive, Status="Inactive")
    old_active = iam.create_access_key(UserName="bot")["AccessKey"]
    kit.secrets.save_access_key(
        kit.clients.secretsmanager,
        "bot",
        old_active["AccessKeyId"],
        old_active["SecretAccessKey"],
    )
    ctx.now = lambda: datetime.now(UTC) + timedelta(days=120)

    detail = rotated.run(ctx)

    keys = {
        k["AccessKeyId"]: k["Status"]
        for k in iam.list_access_keys(UserName="bot")["AccessKeyMetadata"]
    }
    assert detail["deleted"] == [old_inactive]
    assert keys == {old_active["AccessKeyId"]: "Inactive", detail["key_id"]: "Active"}
    assert _stored_secret(kit, "bot")["AccessKeyId"] == detail["key_id"]


def test_rotated_replaces_a_key_whose_secret_was_never_stored(kit: StepKit) -> None:
    ctx = kit.context(BOT)
    created.run(ctx)
    lost = kit.clients.iam.create_access_key(UserName="bot")["AccessKey"]["AccessKeyId"]
    kit.clients.iam.create_access_key(UserName="bot")  # a crash after each create

    detail = rotated.run(ctx)

    keys = kit.clients.iam.list_access_keys(UserName="bot")["AccessKeyMetadata"]
    active = [k["AccessKeyId"] for k in keys if k["Status"] == "Active"]
    assert active == [detail["key_id"]] and lost in detail["deleted"]
    assert len(keys) <= 2


def test_rotated_makes_no_key_without_programmatic_access(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    created.run(ctx)

    assert rotated.run(ctx)["action"] == "skipped"
    assert kit.clients.iam.list_access_keys(UserName="alice")["AccessKeyMetadata"] == []


def test_monitored_writes_the_bucket_policy_before_the_trail(kit: StepKit) -> None:
    """Case 3: real AWS refuses create_trail on a bucket without this policy."""
    ctx = kit.context(ALICE)
    calls: list[str] = []
    kit.clients.s3.meta.events.register(
        "provide-client-params.s3.PutBucketPolicy",
        lambda params, **_: calls.append(f"policy {params['Bucket']}"),
    )
    kit.clients.cloudtrail.meta.events.register(
        "before-call.cloudtrail.CreateTrail", lambda **_: calls.append("trail")
    )

    detail = monitored.run(ctx)

    bucket = detail["bucket"]
    policy = json.loads(kit.clients.s3.get_bucket_policy(Bucket=bucket)["Policy"])
    account = kit.account.account_id
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert calls[-2:] == [f"policy {bucket}", "trail"]
    assert by_sid["AWSCloudTrailAclCheck"]["Action"] == "s3:GetBucketAcl"
    assert by_sid["AWSCloudTrailAclCheck"]["Resource"] == f"arn:aws:s3:::{bucket}"
    assert (
        by_sid["AWSCloudTrailWrite"]["Resource"]
        == f"arn:aws:s3:::{bucket}/AWSLogs/{account}/*"
    )
    assert by_sid["AWSCloudTrailWrite"]["Principal"] == {
        "Service": "cloudtrail.amazonaws.com"
    }


def test_monitored_starts_logging_and_leaves_a_sound_trail(kit: StepKit) -> None:
    """Case 4: create_trail does not start logging."""
    monitored.run(kit.context(ALICE))

    cloudtrail = kit.clients.cloudtrail
    trail = cloudtrail.describe_trails(trailNameList=["test-trail"])["trailList"][0]
    assert cloudtrail.get_trail_status(Name="test-trail")["IsLogging"] is True
    assert trail["IsMultiRegionTrail"] and trail["LogFileValidationEnabled"]


def test_monitored_repairs_an_existing_stopped_single_region_trail(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    monitored.run(ctx)
    cloudtrail = kit.clients.cloudtrail
    cloudtrail.update_trail(
        Name="test-trail", IsMultiRegionTrail=False, EnableLogFileValidation=False
    )
    cloudtrail.stop_logging(Name="test-trail")
    ctx.account.verified.clear()

    detail = monitored.run(ctx)

    trail = cloudtrail.describe_trails(trailNameList=["test-trail"])["trailList"]
    assert (
        len(trail) == 1
        and trail[0]["IsMultiRegionTrail"]
        and trail[0]["LogFileValidationEnabled"]
    )
    assert cloudtrail.get_trail_status(Name="test-trail")["IsLogging"] is True
    assert (
        "trail settings repaired: IsMultiRegionTrail, LogFileValidationEnabled"
        in detail["actions"]
        and "logging started" in detail["actions"]
    )


def test_monitored_keeps_other_statements_of_an_existing_bucket_policy(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    bucket = monitored.bucket_name(ctx)
    kit.clients.s3.create_bucket(Bucket=bucket)
    theirs = {
        "Sid": "Theirs",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:DeleteBucket",
        "Resource": f"arn:aws:s3:::{bucket}",
    }
    kit.clients.s3.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [theirs]}),
    )

    monitored.run(ctx)

    policy = json.loads(kit.clients.s3.get_bucket_policy(Bucket=bucket)["Policy"])
    assert [s["Sid"] for s in policy["Statement"]] == [
        "Theirs",
        "AWSCloudTrailAclCheck",
        "AWSCloudTrailWrite",
        "DenyInsecureTransport",
    ]


def _onboard(kit: StepKit, user: dict[str, Any]) -> Any:
    ctx = kit.context(user)
    for step in (created, least_privilege, mfa, role, rotated, monitored):
        step.run(ctx)
    return ctx


def test_reviewed_passes_a_fully_onboarded_user(kit: StepKit) -> None:
    ctx = _onboard(kit, ALICE)

    detail = reviewed.run(ctx)

    assert detail["high"] == 0


def test_reviewed_fails_on_a_planted_second_active_key(kit: StepKit) -> None:
    ctx = _onboard(kit, BOT)
    kit.clients.iam.create_access_key(UserName="bot")

    with pytest.raises(StepError) as caught:
        reviewed.run(ctx)

    ids = {f["id"] for f in caught.value.detail["findings"] if f["severity"] == "high"}
    assert caught.value.code == "ReviewFindings" and "IAM.KEY_MULTIPLE_ACTIVE" in ids


def test_reviewed_reports_a_planted_admin_grant_and_a_removed_mfa(kit: StepKit) -> None:
    ctx = _onboard(kit, ALICE)
    iam = kit.clients.iam
    iam.attach_user_policy(
        UserName="alice", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess"
    )
    serial = iam.list_mfa_devices(UserName="alice")["MFADevices"][0]["SerialNumber"]
    iam.deactivate_mfa_device(UserName="alice", SerialNumber=serial)

    with pytest.raises(StepError) as caught:
        reviewed.run(ctx)

    ids = {f["id"] for f in caught.value.detail["findings"] if f["severity"] == "high"}
    assert {"IAM.ADMIN_GRANT", "IAM.MFA_NOT_ACTIVE"} <= ids


def test_reviewed_flags_keys_on_a_user_that_must_have_none(kit: StepKit) -> None:
    ctx = _onboard(kit, ALICE)
    kit.clients.iam.create_access_key(UserName="alice")

    with pytest.raises(StepError, match="IAM.KEY_NOT_DECLARED"):
        reviewed.run(ctx)


class _NotReadyIam:
    """An IAM client whose credential report is not ready for the first few calls."""

    def __init__(self, inner: Any, not_ready: int) -> None:
        self._inner = inner
        self._not_ready = not_ready
        self.polls = 0

    def get_credential_report(self) -> Any:
        self.polls += 1
        if self.polls <= self._not_ready:
            error = {"Error": {"Code": "ReportInProgress", "Message": "in progress"}}
            raise ClientError(error, "GetCredentialReport")  # type: ignore[arg-type]
        return self._inner.get_credential_report()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_reviewed_polls_until_the_credential_report_is_ready(
    kit: StepKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 7: the report can be in progress right after it is generated."""
    ctx = _onboard(kit, ALICE)
    monkeypatch.setattr(reviewed, "REPORT_WAIT_SECONDS", 0.0)
    wrapped = _NotReadyIam(kit.clients.iam, not_ready=3)
    ctx.clients = type(ctx.clients)(**{**vars(ctx.clients), "iam": wrapped})

    detail = reviewed.run(ctx)

    assert wrapped.polls == 4 and detail["high"] == 0


def test_reviewed_gives_up_after_bounded_polls(
    kit: StepKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _onboard(kit, ALICE)
    monkeypatch.setattr(reviewed, "REPORT_WAIT_SECONDS", 0.0)
    ctx.clients = type(ctx.clients)(
        **{**vars(ctx.clients), "iam": _NotReadyIam(kit.clients.iam, 99)}
    )

    with pytest.raises(StepError) as caught:
        reviewed.run(ctx)

    assert caught.value.code == "CredentialReportNotReady"
