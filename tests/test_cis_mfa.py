"""MFA modes and the account password policy, each rule held and repaired on moto.

CIS AWS Foundations Benchmark v5: 1.7 (password length >= 14), 1.8 (reuse
prevention 24), 1.9 (MFA for every user with a console password); AWS Config
iam-password-policy, iam-user-mfa-enabled, mfa-enabled-for-iam-console-access.
"""

from __future__ import annotations

import json
import stat
import string
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest

from engine.__main__ import main
from engine.aws import AwsTarget
from engine.errors import AwaitingUser, ConfigError
from engine.runner import Runner
from engine.secrets import PASSWORD_SYMBOLS, Redactor, SecretSink
from engine.store import AWAITING_MFA, DONE, Store
from steps import created, mfa, password_policy
from steps.base import AccountFacts, Clients
from tests.conftest import StepKit, load_file, write_workflows

ALICE: dict[str, Any] = {"name": "alice", "groups": ["readers"]}
BOB: dict[str, Any] = {"name": "bob", "groups": ["readers"], "mfa": "self-service"}
NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
MFA_ONLY = {
    "standard": {
        "states": ["Created", "MFA"],
        "steps": {"Created": "create_user", "MFA": "mfa"},
    }
}


class Recording:
    """An AWS client that records the arguments and results of chosen calls."""

    def __init__(self, inner: Any, *operations: str) -> None:
        self._inner = inner
        self._operations = operations
        self.calls: list[tuple[str, dict[str, Any], Any]] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._inner, name)
        if name not in self._operations:
            return real

        def record(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs, None))
            result = real(**kwargs)
            self.calls[-1] = (name, kwargs, result)
            return result

        return record

    def named(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        return [(args, result) for op, args, result in self.calls if op == name]


def _ctx(kit: StepKit, user: dict[str, Any], *ops: str) -> tuple[Any, Recording]:
    recording = Recording(kit.clients.iam, *ops)
    ctx = kit.context(user)
    ctx.clients = replace(kit.clients, iam=recording)
    ctx.now = lambda: NOW
    created.run(ctx)
    return ctx, recording


def _enable_by_hand(iam: Any, user: str, name: str, path: str = "/") -> str:
    device = iam.create_virtual_mfa_device(VirtualMFADeviceName=name, Path=path)
    serial = str(device["VirtualMFADevice"]["SerialNumber"])
    iam.enable_mfa_device(
        UserName=user,
        SerialNumber=serial,
        AuthenticationCode1="123456",
        AuthenticationCode2="654321",
    )
    return serial


def _devices(iam: Any, user: str) -> list[str]:
    return [
        d["SerialNumber"] for d in iam.list_mfa_devices(UserName=user)["MFADevices"]
    ]


def _policy_document(iam: Any, arn: str) -> dict[str, Any]:
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=arn, VersionId=version)
    raw = document["PolicyVersion"]["Document"]
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


# --- virtual MFA (CIS 1.10, Config iam-user-mfa-enabled) ---------------------


def test_virtual_enables_the_device_with_two_codes_from_the_bytes_seed(
    kit: StepKit,
) -> None:
    ctx, iam = _ctx(kit, ALICE, "create_virtual_mfa_device", "enable_mfa_device")

    detail = mfa.run(ctx)

    _, made = iam.named("create_virtual_mfa_device")[0]
    raw = made["VirtualMFADevice"]["Base32StringSeed"]
    assert isinstance(raw, bytes)  # case 1: boto3 hands the seed over as bytes
    totp = pyotp.TOTP(raw.decode("ascii"))
    sent, _ = iam.named("enable_mfa_device")[0]
    assert (sent["AuthenticationCode1"], sent["AuthenticationCode2"]) == (
        totp.at(NOW - timedelta(seconds=30)),
        totp.at(NOW),
    )
    assert _devices(kit.clients.iam, "alice") == [detail["device"]]
    assert detail["action"] == "enabled" and detail["mode"] == "virtual"


def test_virtual_repairs_a_user_whose_device_was_removed_by_hand(
    kit: StepKit,
) -> None:
    ctx, _ = _ctx(kit, ALICE)
    first = mfa.run(ctx)
    iam = kit.clients.iam
    iam.deactivate_mfa_device(UserName="alice", SerialNumber=first["device"])
    iam.delete_virtual_mfa_device(SerialNumber=first["device"])
    assert _devices(iam, "alice") == []

    again = mfa.run(ctx)

    assert again["action"] == "enabled"
    assert _devices(iam, "alice") == [again["device"]]


def test_virtual_uses_the_configured_device_name(kit: StepKit) -> None:
    ctx, _ = _ctx(kit, {**ALICE, "mfa_device_name": "alice-laptop"})

    detail = mfa.run(ctx)

    assert detail["device"].endswith(":mfa/alice-laptop")
    assert _devices(kit.clients.iam, "alice") == [detail["device"]]


def test_virtual_adopts_an_enabled_device_with_another_name_and_path(
    kit: StepKit,
) -> None:
    ctx, iam = _ctx(kit, ALICE, "create_virtual_mfa_device")
    serial = _enable_by_hand(kit.clients.iam, "alice", "alices-yubikey", "/people/")

    detail = mfa.run(ctx)

    assert detail["action"] == "adopted" and detail["device"] == serial
    assert iam.named("create_virtual_mfa_device") == []
    assert _devices(kit.clients.iam, "alice") == [serial]


def test_virtual_adopts_a_leftover_device_that_was_created_but_not_enabled(
    kit: StepKit,
) -> None:
    ctx, iam = _ctx(
        kit, {**ALICE, "mfa_device_name": "alice-phone"}, "create_virtual_mfa_device"
    )
    leftover, _ = mfa._create_device(ctx)  # a crash came before enable_mfa_device

    detail = mfa.run(ctx)

    all_devices = kit.clients.iam.list_virtual_mfa_devices()["VirtualMFADevices"]
    assert detail["device"] == leftover
    assert [d["SerialNumber"] for d in all_devices] == [leftover]
    assert len(iam.named("create_virtual_mfa_device")) == 1


def test_virtual_replaces_a_leftover_whose_seed_nobody_holds(kit: StepKit) -> None:
    ctx, iam = _ctx(
        kit, {**ALICE, "mfa_device_name": "alice-phone"}, "create_virtual_mfa_device"
    )
    kit.clients.iam.create_virtual_mfa_device(VirtualMFADeviceName="alice-phone")

    detail = mfa.run(ctx)

    all_devices = kit.clients.iam.list_virtual_mfa_devices()["VirtualMFADevices"]
    assert [d["SerialNumber"] for d in all_devices] == [detail["device"]]
    assert kit.secrets.read_mfa_seed("alice", detail["device"]) is not None
    assert len(iam.named("create_virtual_mfa_device")) == 1


def test_virtual_hands_over_the_seed_as_uri_and_qr_in_private_files(
    kit: StepKit,
) -> None:
    ctx, _ = _ctx(kit, ALICE)

    detail = mfa.run(ctx)

    seed_file, qr_file = Path(detail["seed_file"]), Path(detail["qr_file"])
    saved = json.loads(seed_file.read_text())
    assert saved["otpauth_uri"].startswith("otpauth://totp/")
    assert f"secret={saved['seed']}" in saved["otpauth_uri"]
    assert qr_file.read_text().lstrip().startswith("<svg")
    for path in (seed_file, qr_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert saved["seed"] not in json.dumps(detail)


def test_a_device_name_for_a_user_without_virtual_mfa_is_refused(
    tmp_path: Path,
) -> None:
    path = write_workflows(tmp_path, users=[{**BOB, "mfa_device_name": "bob-phone"}])

    with pytest.raises(ConfigError) as caught:
        load_file(path)

    assert "users[0].mfa_device_name" in str(caught.value)
    assert "only used with mfa: virtual" in str(caught.value)
    assert caught.value.line is not None


# --- self-service MFA (CIS 1.10, Config mfa-enabled-for-iam-console-access) --


def test_self_service_gives_a_password_to_reset_and_waits_for_the_user(
    kit: StepKit,
) -> None:
    ctx, iam = _ctx(kit, BOB, "create_login_profile", "create_virtual_mfa_device")

    with pytest.raises(AwaitingUser) as caught:
        mfa.run(ctx)

    sent, _ = iam.named("create_login_profile")[0]
    password = sent["Password"]
    assert sent["UserName"] == "bob" and sent["PasswordResetRequired"] is True
    assert len(password) >= 24
    for kind in (string.ascii_uppercase, string.ascii_lowercase, string.digits):
        assert any(c in kind for c in password)
    assert any(c in PASSWORD_SYMBOLS for c in password)
    stored = kit.clients.secretsmanager.get_secret_value(
        SecretId="test/bob/console-password"
    )["SecretString"]
    assert json.loads(stored)["Password"] == password
    assert password not in json.dumps(caught.value.detail) + str(caught.value)
    assert caught.value.detail["action"] == "awaiting_mfa"
    assert iam.named("create_virtual_mfa_device") == []  # the user enrols their own


def test_self_service_moves_on_once_the_user_has_enrolled(kit: StepKit) -> None:
    ctx, iam = _ctx(kit, BOB, "create_login_profile")
    with pytest.raises(AwaitingUser):
        mfa.run(ctx)
    serial = _enable_by_hand(kit.clients.iam, "bob", "bobs-phone")

    detail = mfa.run(ctx)

    assert (detail["action"], detail["device"]) == ("enrolled", serial)
    assert detail["login_profile"] == "adopted"
    assert len(iam.named("create_login_profile")) == 1  # the password is not reset


def test_self_service_attaches_the_deny_unless_mfa_policy(kit: StepKit) -> None:
    ctx, _ = _ctx(kit, BOB)

    with pytest.raises(AwaitingUser) as caught:
        mfa.run(ctx)

    arn = caught.value.detail["policy"]
    document = _policy_document(kit.clients.iam, arn)
    deny = [s for s in document["Statement"] if s["Effect"] == "Deny"]
    assert deny == [
        {
            "Sid": "DenyAllExceptMfaSetupWithoutMfa",
            "Effect": "Deny",
            "NotAction": mfa.MFA_SETUP_ACTIONS,
            "Resource": "*",
            "Condition": {"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}},
        }
    ]
    assert {"iam:EnableMFADevice", "sts:GetSessionToken"} <= set(deny[0]["NotAction"])
    assert ":policy/iam-onboarding/RequireMFA" in arn
    attached = kit.clients.iam.list_attached_user_policies(UserName="bob")
    assert [p["PolicyArn"] for p in attached["AttachedPolicies"]] == [arn]


def test_a_weakened_mfa_policy_is_given_the_engines_document_again(
    kit: StepKit,
) -> None:
    iam = kit.clients.iam
    weak = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "NotAction": ["iam:*"],
                "Resource": "*",
                "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "false"}},
            }
        ],
    }
    planted = iam.create_policy(
        PolicyName="RequireMFA",
        Path="/iam-onboarding/",
        PolicyDocument=json.dumps(weak),
    )["Policy"]["Arn"]
    for _ in range(4):  # the policy already has the five versions IAM allows
        iam.create_policy_version(PolicyArn=planted, PolicyDocument=json.dumps(weak))
    ctx, _ = _ctx(kit, BOB)

    with pytest.raises(AwaitingUser):
        mfa.run(ctx)

    assert _policy_document(iam, planted) == mfa.REQUIRE_MFA_DOCUMENT
    versions = iam.list_policy_versions(PolicyArn=planted)["Versions"]
    assert len(versions) == 5


def _runner(folder: Path, store: Store, aws: Clients, users: list[Any]) -> Runner:
    loaded = load_file(write_workflows(folder, users=users, workflows=MFA_ONLY))
    account = AccountFacts(aws.sts.get_caller_identity()["Account"], "us-east-1")
    target = AwsTarget(aws, account, "in-process moto")
    runner = Runner(loaded, store, target, SecretSink(folder, "test/", Redactor()))
    runner.sleep = lambda _seconds: None
    return runner


def test_self_service_is_awaiting_mfa_then_done_after_enrolment(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    first = _runner(tmp_path, store, aws, [BOB]).run()

    waiting = store.onboarding("bob")
    row = store.history(user="bob")[-1]
    assert (first[0].status, first[0].state) == (AWAITING_MFA, "Created")
    assert waiting is not None and (waiting.status, waiting.attempts) == (
        AWAITING_MFA,
        0,
    )
    assert (row["to_state"], row["outcome"], row["error_code"]) == (
        "MFA",
        "waiting",
        "AwaitingMFA",
    )
    assert "bob" in (first[0].error or "")

    _runner(tmp_path, store, aws, [BOB]).run()  # still waiting: nothing counted
    assert store.onboarding("bob").attempts == 0  # type: ignore[union-attr]
    _enable_by_hand(aws.iam, "bob", "bobs-phone")
    last = _runner(tmp_path, store, aws, [BOB]).run()

    assert (last[0].status, last[0].state, last[0].entered) == (DONE, "MFA", ["MFA"])
    outcomes = [r["outcome"] for r in store.history(user="bob")]
    assert outcomes == ["ok", "waiting", "waiting", "ok"]
    secret = aws.secretsmanager.get_secret_value(SecretId="test/bob/console-password")
    password = json.loads(secret["SecretString"])["Password"]
    assert password not in json.dumps(store.history(), default=str)


def test_run_wait_polls_until_the_user_enrols(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    runner = _runner(tmp_path, store, aws, [BOB])
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:  # the user enrols between the second and third check
            _enable_by_hand(aws.iam, "bob", "bobs-phone")

    runner.sleep = nap
    outcomes = runner.wait_for_users(runner.run(), timeout=60, interval=5)

    assert [(o.status, o.entered) for o in outcomes] == [(DONE, ["Created", "MFA"])]
    assert naps == [5, 5]


def test_run_wait_gives_up_after_its_timeout(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    runner = _runner(tmp_path, store, aws, [BOB])
    runner.sleep = lambda _seconds: None

    outcomes = runner.wait_for_users(runner.run(), timeout=0.2, interval=0.01)

    assert [o.status for o in outcomes] == [AWAITING_MFA]


def test_cli_waits_with_exit_5_and_keeps_secrets_out_of_db_and_output(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = write_workflows(
        tmp_path, users=[ALICE, BOB], store={"path": "s/e.db"}, workflows=MFA_ONLY
    )

    code = main(["-v", "run", str(path)])

    out, err = capfd.readouterr()
    seed = json.loads((tmp_path / "secrets" / "alice.mfa").read_text())["seed"]
    database = (tmp_path / "s" / "e.db").read_bytes()
    assert code == 5, err
    assert "Waiting for MFA enrolment: bob" in out
    assert seed.encode() not in database and seed not in out + err
    assert "console-password" in err  # where the password is, never what it is
    assert b'Password"' not in database
    for name in ("alice.mfa", "alice.mfa.svg"):
        mode = (tmp_path / "secrets" / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600


# --- the account password policy (CIS v5 1.7, 1.8; Config iam-password-policy) -


def test_an_account_without_a_password_policy_gets_the_baseline(
    kit: StepKit,
) -> None:
    ctx, _ = _ctx(kit, ALICE)

    detail = mfa.run(ctx)["password_policy"]

    policy = kit.clients.iam.get_account_password_policy()["PasswordPolicy"]
    assert detail["action"] == "created"
    assert policy["MinimumPasswordLength"] == 14
    assert policy["PasswordReusePrevention"] == 24


def test_a_weak_password_policy_is_raised_and_its_other_settings_kept(
    kit: StepKit,
) -> None:
    kit.clients.iam.update_account_password_policy(
        MinimumPasswordLength=8,
        PasswordReusePrevention=3,
        RequireSymbols=True,
        MaxPasswordAge=90,
    )
    ctx, _ = _ctx(kit, ALICE)

    detail = mfa.run(ctx)["password_policy"]

    policy = kit.clients.iam.get_account_password_policy()["PasswordPolicy"]
    assert detail["action"] == "repaired"
    assert (policy["MinimumPasswordLength"], policy["PasswordReusePrevention"]) == (
        14,
        24,
    )
    assert policy["RequireSymbols"] is True and policy["MaxPasswordAge"] == 90


def test_a_stronger_password_policy_is_kept_as_it_is(kit: StepKit) -> None:
    kit.clients.iam.update_account_password_policy(
        MinimumPasswordLength=20, PasswordReusePrevention=24, RequireNumbers=True
    )
    ctx, iam = _ctx(kit, ALICE, "update_account_password_policy")

    detail = mfa.run(ctx)["password_policy"]

    policy = kit.clients.iam.get_account_password_policy()["PasswordPolicy"]
    assert detail["action"] == "kept" and detail["MinimumPasswordLength"] == 20
    assert iam.named("update_account_password_policy") == []
    assert policy["MinimumPasswordLength"] == 20 and policy["RequireNumbers"] is True


def test_the_password_policy_is_checked_once_per_account_and_run(
    kit: StepKit,
) -> None:
    ctx, iam = _ctx(kit, ALICE, "get_account_password_policy")
    other, _ = _ctx(kit, {"name": "carol", "mfa": "none"})
    other.clients = ctx.clients

    mfa.run(ctx)
    mfa.run(other)

    assert len(iam.named("get_account_password_policy")) == 1
    assert password_policy.VERIFIED_KEY in kit.account.verified
