"""LeastPrivilege: permissions through groups, every document linted, no admin.

Users get their permissions through the groups the file declares (CIS 1.15).
Policies attached straight to the user are allowed only when the user entry
says so (``direct_policies``); any other policy found attached to the user is
detached, and any other inline user policy deleted.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from steps.base import StepContext, is_code, paginate
from steps.grants import (
    ACCESS_POLICY_NAME,
    INLINE_POLICY_NAME,
    Declared,
    Principal,
    apply,
    check,
    declared,
)

__all__ = ["ACCESS_POLICY_NAME", "INLINE_POLICY_NAME", "run"]


def run(ctx: StepContext) -> dict[str, Any]:
    """Check every declared policy first, then attach what is missing."""
    admin = check(ctx, _declared_documents(ctx))

    groups = [_ensure_group(ctx, name) for name in ctx.user.groups]
    user = Principal("user", ctx.user.name)
    detail: dict[str, Any] = {"groups": groups, **apply(ctx, user, ctx.user, True)}
    if ctx.user.direct_policies is not None:
        detail["direct_policies_reason"] = ctx.user.direct_policies.reason
    if ctx.user.allow_admin is not None:
        detail["allow_admin_reason"] = ctx.user.allow_admin.reason
        detail["admin_grants"] = admin
    return detail


def _declared_documents(ctx: StepContext) -> list[Declared]:
    groups = ctx.loaded.config.groups
    found: list[Declared] = []
    for name in ctx.user.groups:
        found += declared(ctx, f"group {name}: ", groups[name])
    return found + declared(ctx, "the user's ", ctx.user)


def _ensure_group(ctx: StepContext, name: str) -> dict[str, Any]:
    created = _create_group_if_missing(ctx, name)
    group = ctx.loaded.config.groups[name]
    applied = apply(ctx, Principal("group", name), group)
    member = name in {
        g["GroupName"]
        for g in paginate(
            ctx.clients.iam, "list_groups_for_user", "Groups", UserName=ctx.user.name
        )
    }
    if not member:
        ctx.clients.iam.add_user_to_group(GroupName=name, UserName=ctx.user.name)
    return {"group": name, "created": created, "joined": not member, **applied}


def _create_group_if_missing(ctx: StepContext, name: str) -> bool:
    try:
        ctx.clients.iam.create_group(GroupName=name)
    except ClientError as err:
        if is_code(err, "EntityAlreadyExists"):
            return False
        raise
    return True
