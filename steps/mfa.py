"""MFA: a virtual MFA device, enabled for the user and enforced by policy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyotp
from botocore.exceptions import ClientError

from steps.base import ENGINE_POLICY_PATH, StepContext, dumps, is_code, paginate

REQUIRE_MFA_POLICY = "RequireMFA"

# Deny everything but managing one's own MFA until the session is MFA-signed.
REQUIRE_MFA_DOCUMENT: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "DenyAllExceptMfaSetupWithoutMfa",
            "Effect": "Deny",
            "NotAction": [
                "iam:ChangePassword",
                "iam:CreateVirtualMFADevice",
                "iam:EnableMFADevice",
                "iam:GetUser",
                "iam:ListMFADevices",
                "iam:ListVirtualMFADevices",
                "iam:ResyncMFADevice",
                "sts:GetSessionToken",
            ],
            "Resource": "*",
            "Condition": {"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}},
        }
    ],
}


def run(ctx: StepContext) -> dict[str, Any]:
    """Enable a virtual MFA device unless the user has one; attach the MFA policy."""
    if ctx.user.mfa == "none":
        return {"action": "skipped", "why": "the user entry says mfa: none"}

    policy_arn = _ensure_policy(ctx)
    enabled = _enabled_devices(ctx)
    if enabled:
        return {"action": "adopted", "device": enabled[0], "policy": policy_arn}

    serial, seed = _device_with_seed(ctx)
    _enable(ctx, serial, seed)
    return {
        "action": "enabled",
        "device": serial,
        "seed_file": str(ctx.secrets.seed_path(ctx.user.name)),
        "policy": policy_arn,
    }


def _enabled_devices(ctx: StepContext) -> list[str]:
    devices = paginate(
        ctx.clients.iam, "list_mfa_devices", "MFADevices", UserName=ctx.user.name
    )
    return [device["SerialNumber"] for device in devices]


def _device_with_seed(ctx: StepContext) -> tuple[str, str]:
    leftover = _unassigned_device(ctx)
    if leftover is not None:
        seed = ctx.secrets.read_mfa_seed(ctx.user.name, leftover)
        if seed is not None:
            ctx.log.info("reusing MFA device %s left by an interrupted run", leftover)
            return leftover, seed
        # Nobody holds this device's seed any more, so it can never be enabled.
        ctx.clients.iam.delete_virtual_mfa_device(SerialNumber=leftover)
    return _create_device(ctx)


def _unassigned_device(ctx: StepContext) -> str | None:
    suffix = f":mfa/{ctx.user.name}"
    devices = paginate(
        ctx.clients.iam,
        "list_virtual_mfa_devices",
        "VirtualMFADevices",
        AssignmentStatus="Unassigned",
    )
    for device in devices:
        if device["SerialNumber"].endswith(suffix):
            return str(device["SerialNumber"])
    return None


def _create_device(ctx: StepContext) -> tuple[str, str]:
    created = ctx.clients.iam.create_virtual_mfa_device(
        VirtualMFADeviceName=ctx.user.name
    )
    device = created["VirtualMFADevice"]
    serial = str(device["SerialNumber"])
    raw = device["Base32StringSeed"]
    seed = raw.decode("ascii") if isinstance(raw, bytes) else str(raw)
    ctx.secrets.save_mfa_seed(ctx.user.name, serial, seed)
    return serial, seed


def _enable(ctx: StepContext, serial: str, seed: str) -> None:
    totp = pyotp.TOTP(seed)
    now = ctx.now()
    try:
        ctx.clients.iam.enable_mfa_device(
            UserName=ctx.user.name,
            SerialNumber=serial,
            AuthenticationCode1=totp.at(now - timedelta(seconds=30)),
            AuthenticationCode2=totp.at(now),
        )
    except ClientError as err:
        # A retried call whose first response was lost finds the device enabled.
        if not is_code(err, "EntityAlreadyExists") or serial not in _enabled_devices(
            ctx
        ):
            raise


def _ensure_policy(ctx: StepContext) -> str:
    iam = ctx.clients.iam
    account = ctx.account.account_id
    arn = f"arn:aws:iam::{account}:policy{ENGINE_POLICY_PATH}{REQUIRE_MFA_POLICY}"
    with ctx.account.lock:
        if REQUIRE_MFA_POLICY not in ctx.account.verified:
            _create_policy(iam)
            ctx.account.verified[REQUIRE_MFA_POLICY] = {"arn": arn}
    attached = paginate(
        iam, "list_attached_user_policies", "AttachedPolicies", UserName=ctx.user.name
    )
    if arn not in {policy["PolicyArn"] for policy in attached}:
        iam.attach_user_policy(UserName=ctx.user.name, PolicyArn=arn)
    return arn


def _create_policy(iam: Any) -> None:
    try:
        iam.create_policy(
            PolicyName=REQUIRE_MFA_POLICY,
            Path=ENGINE_POLICY_PATH,
            PolicyDocument=dumps(REQUIRE_MFA_DOCUMENT),
            Description="Denies all but MFA self-service until signed in with MFA",
        )
    except ClientError as err:
        if not is_code(err, "EntityAlreadyExists"):
            raise
