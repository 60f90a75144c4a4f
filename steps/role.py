"""Role: a role (and for EC2 an instance profile) a service assumes instead of keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from engine.config import ServiceRoleConfig
from engine.errors import PolicyRefused
from steps.base import (
    StepContext,
    admin_grant,
    as_document,
    dumps,
    iam_tags,
    is_code,
    managed_policy_document,
    paginate,
)
from steps.least_privilege import INLINE_POLICY_NAME

EC2_SERVICE = "ec2.amazonaws.com"


def trust_policy(service: str) -> dict[str, Any]:
    """Return the trust policy that lets ``service`` assume a role."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": service},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def run(ctx: StepContext) -> dict[str, Any]:
    """Create or repair the service role and its instance profile."""
    spec = ctx.user.service_role
    name = ctx.user.role_name()
    if spec is None or name is None:
        return {"action": "skipped", "why": "the user entry declares no service_role"}

    _refuse_admin(ctx, spec)
    detail = _ensure_role(ctx, name, spec)
    detail["attached"] = _attach_policies(ctx, name, spec)
    if spec.service == EC2_SERVICE:
        detail["instance_profile"] = _ensure_instance_profile(ctx, name)
    return detail


def _refuse_admin(ctx: StepContext, spec: ServiceRoleConfig) -> None:
    if ctx.user.allow_admin is not None:
        return
    documents = [
        (arn, managed_policy_document(ctx, arn)) for arn in spec.managed_policies
    ]
    if spec.inline_policy is not None:
        documents.append(("the service_role's inline_policy", spec.inline_policy))
    for source, document in documents:
        reason = admin_grant(document)
        if reason:
            raise PolicyRefused(ctx.user.name, source, reason)


def _ensure_role(
    ctx: StepContext, name: str, spec: ServiceRoleConfig
) -> dict[str, Any]:
    iam = ctx.clients.iam
    wanted = trust_policy(spec.service)
    role = _get(lambda: iam.get_role(RoleName=name)["Role"])
    if role is None:
        role = _get(
            lambda: iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=dumps(wanted),
                Description=f"Service role of {ctx.user.name} for {spec.service}",
                Tags=iam_tags({"service-of": ctx.user.name}),
            )["Role"],
            absent="EntityAlreadyExists",
        )
        if role is not None:
            iam.get_waiter("role_exists").wait(RoleName=name)
            return {"role_arn": role["Arn"], "action": "created"}
        role = iam.get_role(RoleName=name)["Role"]

    if as_document(role["AssumeRolePolicyDocument"]) != wanted:
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=dumps(wanted))
        return {"role_arn": role["Arn"], "action": "trust policy repaired"}
    return {"role_arn": role["Arn"], "action": "adopted"}


def _get(
    call: Callable[[], dict[str, Any]], absent: str = "NoSuchEntity"
) -> dict[str, Any] | None:
    """Return what ``call`` returns, or None when it fails with ``absent``."""
    try:
        return call()
    except ClientError as err:
        if is_code(err, absent):
            return None
        raise


def _attach_policies(ctx: StepContext, name: str, spec: ServiceRoleConfig) -> list[str]:
    iam = ctx.clients.iam
    current = {
        p["PolicyArn"]
        for p in paginate(
            iam, "list_attached_role_policies", "AttachedPolicies", RoleName=name
        )
    }
    added = [arn for arn in spec.managed_policies if arn not in current]
    for arn in added:
        iam.attach_role_policy(RoleName=name, PolicyArn=arn)
    if spec.inline_policy is not None:
        iam.put_role_policy(
            RoleName=name,
            PolicyName=INLINE_POLICY_NAME,
            PolicyDocument=dumps(spec.inline_policy),
        )
    return added


def _ensure_instance_profile(ctx: StepContext, name: str) -> dict[str, Any]:
    iam = ctx.clients.iam
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        action = "adopted"
    except ClientError as err:
        if not is_code(err, "NoSuchEntity"):
            raise
        profile = iam.create_instance_profile(InstanceProfileName=name)[
            "InstanceProfile"
        ]
        iam.get_waiter("instance_profile_exists").wait(InstanceProfileName=name)
        action = "created"

    roles = [role["RoleName"] for role in profile.get("Roles", [])]
    for other in (role for role in roles if role != name):
        # A profile holds at most one role, so a stranger has to leave first.
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=other)
    if name not in roles:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return {"arn": profile["Arn"], "action": action}
