"""LeastPrivilege: the groups and policies the file declares, nothing admin-style."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from engine.config import GroupConfig, PolicyDocument
from engine.errors import PolicyRefused
from steps.base import (
    StepContext,
    admin_grant,
    dumps,
    is_code,
    managed_policy_document,
    paginate,
)

INLINE_POLICY_NAME = "onboarding-inline"


def run(ctx: StepContext) -> dict[str, Any]:
    """Check every declared policy first, then attach what is missing."""
    _refuse_admin(ctx)

    groups = [_ensure_group(ctx, name) for name in ctx.user.groups]
    attached = _attach_user_policies(ctx)
    inline = _put_inline(ctx)
    detail: dict[str, Any] = {"groups": groups, "attached": attached, "inline": inline}
    if ctx.user.allow_admin:
        detail["allow_admin_reason"] = ctx.user.allow_admin.reason
    return detail


def _refuse_admin(ctx: StepContext) -> None:
    if ctx.user.allow_admin is not None:
        return
    for source, document in _declared_documents(ctx):
        reason = admin_grant(document)
        if reason:
            raise PolicyRefused(ctx.user.name, source, reason)


def _declared_documents(ctx: StepContext) -> list[tuple[str, PolicyDocument]]:
    documents: list[tuple[str, PolicyDocument]] = []
    groups = ctx.loaded.config.groups
    for name in ctx.user.groups:
        documents += _documents_of(ctx, f"group {name}", groups[name])
    arns = ctx.user.managed_policies
    documents += [(arn, managed_policy_document(ctx, arn)) for arn in arns]
    if ctx.user.inline_policy is not None:
        documents.append(("the user's inline_policy", ctx.user.inline_policy))
    return documents


def _documents_of(
    ctx: StepContext, label: str, group: GroupConfig
) -> list[tuple[str, PolicyDocument]]:
    found = [
        (f"{label}: {arn}", managed_policy_document(ctx, arn))
        for arn in group.managed_policies
    ]
    if group.inline_policy is not None:
        found.append((f"{label}: inline_policy", group.inline_policy))
    return found


def _ensure_group(ctx: StepContext, name: str) -> dict[str, Any]:
    iam = ctx.clients.iam
    group = ctx.loaded.config.groups[name]
    created = _create_group_if_missing(ctx, name)
    current = {
        p["PolicyArn"]
        for p in paginate(
            iam, "list_attached_group_policies", "AttachedPolicies", GroupName=name
        )
    }
    for arn in group.managed_policies:
        if arn not in current:
            iam.attach_group_policy(GroupName=name, PolicyArn=arn)
    if group.inline_policy is not None:
        iam.put_group_policy(
            GroupName=name,
            PolicyName=INLINE_POLICY_NAME,
            PolicyDocument=dumps(group.inline_policy),
        )
    member = name in {
        g["GroupName"]
        for g in paginate(iam, "list_groups_for_user", "Groups", UserName=ctx.user.name)
    }
    if not member:
        iam.add_user_to_group(GroupName=name, UserName=ctx.user.name)
    return {"group": name, "created": created, "joined": not member}


def _create_group_if_missing(ctx: StepContext, name: str) -> bool:
    try:
        ctx.clients.iam.create_group(GroupName=name)
    except ClientError as err:
        if is_code(err, "EntityAlreadyExists"):
            return False
        raise
    return True


def _attach_user_policies(ctx: StepContext) -> list[str]:
    iam = ctx.clients.iam
    current = {
        p["PolicyArn"]
        for p in paginate(
            iam,
            "list_attached_user_policies",
            "AttachedPolicies",
            UserName=ctx.user.name,
        )
    }
    added = [arn for arn in ctx.user.managed_policies if arn not in current]
    for arn in added:
        iam.attach_user_policy(UserName=ctx.user.name, PolicyArn=arn)
    return added


def _put_inline(ctx: StepContext) -> str | None:
    if ctx.user.inline_policy is None:
        return None
    ctx.clients.iam.put_user_policy(
        UserName=ctx.user.name,
        PolicyName=INLINE_POLICY_NAME,
        PolicyDocument=dumps(ctx.user.inline_policy),
    )
    return INLINE_POLICY_NAME
