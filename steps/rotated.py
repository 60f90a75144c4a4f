"""Rotated: one active access key, younger than the maximum age, its secret stored.

AWS allows two keys per user and counts inactive ones, so room is made
before a key is created: stale inactive keys go first, then keys whose
secret nobody holds. The new secret goes to Secrets Manager before the old
key is deactivated, so there is never a moment with no usable key.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from steps.base import StepContext, paginate

KEY_QUOTA = 2


def run(ctx: StepContext) -> dict[str, Any]:
    """Keep one fresh, stored key for programmatic users; none is made for others."""
    if not ctx.user.programmatic_access:
        return {
            "action": "skipped",
            "why": "the user entry does not declare programmatic_access",
        }

    keys = _keys(ctx)
    stored = ctx.secrets.stored_key_id(ctx.clients.secretsmanager, ctx.user.name)
    current = next((key for key in keys if _is_current(ctx, key, stored)), None)
    if current is not None:
        retired = _retire_others(ctx, keys, current["AccessKeyId"])
        return {"action": "kept", "key_id": current["AccessKeyId"], "retired": retired}

    deleted = _make_room(ctx, keys, stored)
    key_id = _create_and_store(ctx)
    retired = _retire_others(ctx, _keys(ctx), key_id)
    return {
        "action": "rotated",
        "key_id": key_id,
        "deleted": deleted,
        "retired": retired,
    }


def _keys(ctx: StepContext) -> list[dict[str, Any]]:
    found = paginate(
        ctx.clients.iam, "list_access_keys", "AccessKeyMetadata", UserName=ctx.user.name
    )
    return sorted(found, key=lambda key: key["CreateDate"])


def _is_current(ctx: StepContext, key: dict[str, Any], stored: str | None) -> bool:
    fresh = ctx.now() - key["CreateDate"] < timedelta(
        days=ctx.workflow.key_max_age_days
    )
    active: bool = key["Status"] == "Active"
    return active and fresh and key["AccessKeyId"] == stored


def _make_room(
    ctx: StepContext, keys: list[dict[str, Any]], stored: str | None
) -> list[str]:
    inactive = [key for key in keys if key["Status"] != "Active"]
    unheld = [
        key
        for key in keys
        if key["Status"] == "Active" and key["AccessKeyId"] != stored
    ]
    held = [
        key
        for key in keys
        if key["Status"] == "Active" and key["AccessKeyId"] == stored
    ]
    deleted: list[str] = []
    for key in inactive + unheld + held:
        if len(keys) - len(deleted) < KEY_QUOTA:
            break
        _delete(ctx, key["AccessKeyId"])
        deleted.append(key["AccessKeyId"])
    return deleted


def _create_and_store(ctx: StepContext) -> str:
    # Known shortcoming: if AWS makes the key but its response is lost, botocore's
    # retry may hit LimitExceeded, which stops the onboarding until the next run
    # (whose _make_room deletes the key nobody holds).
    created = ctx.clients.iam.create_access_key(UserName=ctx.user.name)["AccessKey"]
    key_id = str(created["AccessKeyId"])
    ctx.secrets.save_access_key(
        ctx.clients.secretsmanager, ctx.user.name, key_id, created["SecretAccessKey"]
    )
    ctx.log.info("created access key %s and stored its secret", key_id)
    return key_id


# Known shortcoming: retired keys are deactivated, not deleted; the next rotation
# that needs room deletes them.
def _retire_others(
    ctx: StepContext, keys: list[dict[str, Any]], keep: str
) -> list[str]:
    retired: list[str] = []
    for key in keys:
        if key["AccessKeyId"] == keep or key["Status"] != "Active":
            continue
        ctx.clients.iam.update_access_key(
            UserName=ctx.user.name, AccessKeyId=key["AccessKeyId"], Status="Inactive"
        )
        retired.append(key["AccessKeyId"])
    return retired


def _delete(ctx: StepContext, key_id: str) -> None:
    ctx.clients.iam.delete_access_key(UserName=ctx.user.name, AccessKeyId=key_id)
    ctx.log.info("deleted access key %s to stay within the two-key quota", key_id)
