"""Role: a role (and for EC2 an instance profile) a service assumes instead of keys."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from engine.config import ServiceRoleConfig
from engine.errors import StepError
from engine.retry import EC2_PROFILE_NOT_VISIBLE
from steps.base import StepContext, as_document, dumps, iam_tags, is_code, paginate
from steps.grants import Principal, apply, check, declared

EC2_SERVICE = "ec2.amazonaws.com"
# Seconds between attempts while EC2 does not yet see a new instance profile.
PROFILE_RETRY_DELAYS = (2.0, 4.0, 8.0, 16.0, 30.0)
sleep: Callable[[float], None] = time.sleep


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
    """Create or repair the service role, its policies and its instance profile."""
    spec = ctx.user.service_role
    name = ctx.user.role_name()
    if spec is None or name is None:
        return {"action": "skipped", "why": "the user entry declares no service_role"}

    admin = check(ctx, declared(ctx, "the service_role's ", spec))
    detail = _ensure_role(ctx, name, spec)
    detail.update(apply(ctx, Principal("role", name), spec))
    if admin:
        detail["admin_grants"] = admin
    if spec.service == EC2_SERVICE:
        profile = _ensure_instance_profile(ctx, name)
        detail["instance_profile"] = profile
        detail["instances"] = [
            _associate(ctx, name, profile["arn"], instance)
            for instance in spec.instance_ids
        ]
    return detail


def _ensure_role(
    ctx: StepContext, name: str, spec: ServiceRoleConfig
) -> dict[str, Any]:
    role = _get(lambda: ctx.clients.iam.get_role(RoleName=name)["Role"])
    if role is None:
        role = _create_role(ctx, name, spec)
        if role is not None:
            return {"role_arn": role["Arn"], "action": "created"}
        role = ctx.clients.iam.get_role(RoleName=name)["Role"]

    repaired = _repair_trust(ctx, name, role, spec) + _repair_boundary(
        ctx, name, role, spec
    )
    action = f"{' and '.join(repaired)} repaired" if repaired else "adopted"
    return {"role_arn": role["Arn"], "action": action}


def _create_role(
    ctx: StepContext, name: str, spec: ServiceRoleConfig
) -> dict[str, Any] | None:
    """Create the role; None when another run created it first."""
    request: dict[str, Any] = {
        "RoleName": name,
        "AssumeRolePolicyDocument": dumps(trust_policy(spec.service)),
        "Description": f"Service role of {ctx.user.name} for {spec.service}",
        "Tags": iam_tags({"service-of": ctx.user.name}),
    }
    if spec.permissions_boundary:
        request["PermissionsBoundary"] = spec.permissions_boundary
    iam = ctx.clients.iam
    role = _get(lambda: iam.create_role(**request)["Role"], "EntityAlreadyExists")
    if role is not None:
        iam.get_waiter("role_exists").wait(RoleName=name)
    return role


def _repair_trust(
    ctx: StepContext, name: str, role: dict[str, Any], spec: ServiceRoleConfig
) -> list[str]:
    wanted = trust_policy(spec.service)
    if as_document(role["AssumeRolePolicyDocument"]) == wanted:
        return []
    ctx.clients.iam.update_assume_role_policy(
        RoleName=name, PolicyDocument=dumps(wanted)
    )
    return ["trust policy"]


def _repair_boundary(
    ctx: StepContext, name: str, role: dict[str, Any], spec: ServiceRoleConfig
) -> list[str]:
    current = role.get("PermissionsBoundary", {}).get("PermissionsBoundaryArn")
    if not spec.permissions_boundary or current == spec.permissions_boundary:
        return []
    ctx.clients.iam.put_role_permissions_boundary(
        RoleName=name, PermissionsBoundary=spec.permissions_boundary
    )
    return ["permissions boundary"]


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


def _ensure_instance_profile(ctx: StepContext, name: str) -> dict[str, Any]:
    iam = ctx.clients.iam
    profile = _get(
        lambda: iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    )
    action = "adopted"
    if profile is None:
        iam.create_instance_profile(InstanceProfileName=name)
        iam.get_waiter("instance_profile_exists").wait(InstanceProfileName=name)
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        action = "created"

    roles = [role["RoleName"] for role in profile.get("Roles", [])]
    removed = [role for role in roles if role != name]
    for other in removed:
        # A profile holds at most one role, so a stranger has to leave first.
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=other)
    if name not in roles:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return {"arn": profile["Arn"], "action": action, "removed_roles": removed}


def _associate(
    ctx: StepContext, name: str, profile_arn: str, instance: str
) -> dict[str, Any]:
    """Associate the profile with ``instance``, replacing a different one."""
    current = _current_association(ctx, instance)
    if current is not None and current["IamInstanceProfile"]["Arn"] == profile_arn:
        return {"instance": instance, "action": "adopted"}
    ec2 = ctx.clients.ec2
    profile = {"Name": name}
    if current is None:
        _retrying(
            ctx,
            name,
            instance,
            lambda: ec2.associate_iam_instance_profile(
                IamInstanceProfile=profile, InstanceId=instance
            ),
        )
        return {"instance": instance, "action": "associated"}
    association = current["AssociationId"]
    _retrying(
        ctx,
        name,
        instance,
        lambda: ec2.replace_iam_instance_profile_association(
            IamInstanceProfile=profile, AssociationId=association
        ),
    )
    replaced = current["IamInstanceProfile"]["Arn"]
    return {"instance": instance, "action": "replaced", "replaced": replaced}


def _current_association(ctx: StepContext, instance: str) -> dict[str, Any] | None:
    found = paginate(
        ctx.clients.ec2,
        "describe_iam_instance_profile_associations",
        "IamInstanceProfileAssociations",
        Filters=[{"Name": "instance-id", "Values": [instance]}],
    )
    live = [a for a in found if a.get("State") in ("associating", "associated")]
    return live[0] if live else None


def _retrying(
    ctx: StepContext, name: str, instance: str, call: Callable[[], Any]
) -> None:
    """Run ``call``, waiting while EC2 does not yet see the new instance profile."""
    # Known shortcoming: the waits (up to a minute) hold the worker running us.
    for attempt, delay in enumerate((*PROFILE_RETRY_DELAYS, None), start=1):
        try:
            call()
            return
        except ClientError as err:
            if not _not_visible_yet(err):
                raise
            if delay is None:
                raise _gave_up(name, instance, attempt, err) from err
            ctx.log.warning(
                "EC2 does not see instance profile %s yet (attempt %d for %s); "
                "trying again in %.0f s",
                name,
                attempt,
                instance,
                delay,
            )
            sleep(delay)


def _not_visible_yet(err: ClientError) -> bool:
    message = str(err.response.get("Error", {}).get("Message", ""))
    return is_code(err, "InvalidParameterValue") and EC2_PROFILE_NOT_VISIBLE in message


def _gave_up(name: str, instance: str, attempts: int, err: ClientError) -> StepError:
    message = err.response.get("Error", {}).get("Message", "")
    return StepError(
        f"EC2 still refuses instance profile {name} for {instance} after "
        f"{attempts} attempts: {message}; run again later, IAM changes can take "
        "minutes to reach EC2",
        code="InvalidParameterValue",
        detail={"instance": instance, "instance_profile": name, "attempts": attempts},
    )
