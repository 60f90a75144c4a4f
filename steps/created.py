"""Created: an IAM user with a unique name, its tags, path and boundary."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from engine.errors import StepError
from steps.base import MANAGED_BY_TAG, StepContext, iam_tags, is_code


def run(ctx: StepContext) -> dict[str, Any]:
    """Create the user, or adopt the one an earlier run of this engine created."""
    existing = _get_user(ctx)
    if existing is None:
        created = _create_user(ctx)
        if created is not None:
            return {"user_arn": created["Arn"], "action": "created"}
        existing = _get_user(ctx) or {}

    _check_ownership(ctx, existing)
    changed = _reconcile(ctx, existing)
    return {"user_arn": existing["Arn"], "action": "adopted", "changed": changed}


def _get_user(ctx: StepContext) -> dict[str, Any] | None:
    try:
        user: dict[str, Any] = ctx.clients.iam.get_user(UserName=ctx.user.name)["User"]
    except ClientError as err:
        if is_code(err, "NoSuchEntity"):
            return None
        raise
    return user


def _create_user(ctx: StepContext) -> dict[str, Any] | None:
    request: dict[str, Any] = {
        "UserName": ctx.user.name,
        "Path": ctx.user.path,
        "Tags": iam_tags(ctx.user.tags),
    }
    if ctx.user.permissions_boundary:
        request["PermissionsBoundary"] = ctx.user.permissions_boundary
    try:
        created: dict[str, Any] = ctx.clients.iam.create_user(**request)["User"]
    except ClientError as err:
        # A retried call whose first response was lost finds the user it made.
        if is_code(err, "EntityAlreadyExists"):
            return None
        raise
    return created


def _check_ownership(ctx: StepContext, existing: dict[str, Any]) -> None:
    tags = _tags_of(ctx)
    if tags.get(MANAGED_BY_TAG[0]) != MANAGED_BY_TAG[1]:
        raise StepError(
            f"IAM user {ctx.user.name} already exists and was not created by this "
            f"engine; rename the entry, or tag the user {MANAGED_BY_TAG[0]}="
            f"{MANAGED_BY_TAG[1]} to let the engine adopt it",
            code="UserNotOwned",
            detail={"user_arn": existing["Arn"]},
        )


def _tags_of(ctx: StepContext) -> dict[str, str]:
    iam = ctx.clients.iam
    pages = iam.get_paginator("list_user_tags").paginate(UserName=ctx.user.name)
    return {tag["Key"]: tag["Value"] for page in pages for tag in page["Tags"]}


def _reconcile(ctx: StepContext, existing: dict[str, Any]) -> list[str]:
    iam = ctx.clients.iam
    changed: list[str] = []
    wanted = {tag["Key"]: tag["Value"] for tag in iam_tags(ctx.user.tags)}
    current = _tags_of(ctx)
    missing = [{"Key": k, "Value": v} for k, v in wanted.items() if current.get(k) != v]
    if missing:
        iam.tag_user(UserName=ctx.user.name, Tags=missing)
        changed.append("tags")

    # Known shortcoming: moto neither stores a user's boundary nor implements
    # put_user_permissions_boundary, so on moto this call fails on every re-run.
    boundary = existing.get("PermissionsBoundary", {}).get("PermissionsBoundaryArn")
    if ctx.user.permissions_boundary and boundary != ctx.user.permissions_boundary:
        iam.put_user_permissions_boundary(
            UserName=ctx.user.name, PermissionsBoundary=ctx.user.permissions_boundary
        )
        changed.append("permissions_boundary")
    return changed
