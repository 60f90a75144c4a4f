"""Rotated: one active access key, younger than the maximum age, its secret stored.

AWS allows two keys per user and counts inactive ones, so room is made
before a key is created: keys whose secret the engine does not hold go
first, then inactive ones. The new secret becomes a new version of the
user's one secret before the old key is deactivated, so there is never a
moment with no usable key. A retired (or unheld) key is deactivated at
once and deleted by the first run after the workflow's ``key_grace_days``,
counted from the creation of the key that replaced it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from steps.base import StepContext, is_code, paginate

KEY_QUOTA = 2

Key = dict[str, Any]


# Known shortcoming: `run` does not revisit finished onboardings, so a key past the
# maximum age or the grace period waits until this step runs again (after a reset).
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
    detail: dict[str, Any] = {"action": "kept"}
    if current is None:
        deleted = _make_room(ctx, keys, stored)
        detail = {"action": "rotated", "deleted": deleted}
        known = {key["AccessKeyId"] for key in keys} - set(deleted)
        created = _create_and_store(ctx, known)
        keys = _keys(ctx)
        current = next(key for key in keys if key["AccessKeyId"] == created)
    detail["key_id"] = current["AccessKeyId"]
    detail["retired"] = _retire_others(ctx, keys, current)
    detail["purged"] = _purge_expired(ctx, keys, current)
    return detail


def _keys(ctx: StepContext) -> list[Key]:
    found = paginate(
        ctx.clients.iam, "list_access_keys", "AccessKeyMetadata", UserName=ctx.user.name
    )
    return sorted(found, key=lambda key: key["CreateDate"])


def _is_current(ctx: StepContext, key: Key, stored: str | None) -> bool:
    fresh = ctx.now() - key["CreateDate"] < timedelta(
        days=ctx.workflow.key_max_age_days
    )
    active: bool = key["Status"] == "Active"
    return active and fresh and key["AccessKeyId"] == stored


def _make_room(ctx: StepContext, keys: list[Key], stored: str | None) -> list[str]:
    """Delete keys until one slot is free: unheld first, inactive next, oldest first."""

    def rank(key: Key) -> tuple[bool, bool]:
        return key["AccessKeyId"] == stored, key["Status"] == "Active"

    deleted: list[str] = []
    for key in sorted(keys, key=rank):
        if len(keys) - len(deleted) < KEY_QUOTA:
            break
        _delete(ctx, key["AccessKeyId"], "to stay within the two-key quota")
        deleted.append(key["AccessKeyId"])
    return deleted


def _create_and_store(ctx: StepContext, known: set[str]) -> str:
    iam = ctx.clients.iam
    try:
        created = iam.create_access_key(UserName=ctx.user.name)["AccessKey"]
    except ClientError as err:
        # botocore retried a call whose first response was lost: AWS made a key
        # nobody holds, and that key now fills the quota. Delete it and ask again.
        strays = [k for k in _keys(ctx) if k["AccessKeyId"] not in known]
        if not is_code(err, "LimitExceeded") or not strays:
            raise
        for key in strays:
            _delete(ctx, key["AccessKeyId"], "whose CreateAccessKey response was lost")
        created = iam.create_access_key(UserName=ctx.user.name)["AccessKey"]
    key_id = str(created["AccessKeyId"])
    ctx.secrets.save_access_key(
        ctx.clients.secretsmanager, ctx.user.name, key_id, created["SecretAccessKey"]
    )
    ctx.log.info("created access key %s and stored its secret", key_id)
    return key_id


# Known shortcoming: a key made by a run killed before its secret was stored is
# only deactivated here, and deleted after key_grace_days like a replaced key.
def _retire_others(ctx: StepContext, keys: list[Key], current: Key) -> list[str]:
    retired: list[str] = []
    for key in keys:
        if key["AccessKeyId"] == current["AccessKeyId"] or key["Status"] != "Active":
            continue
        ctx.clients.iam.update_access_key(
            UserName=ctx.user.name, AccessKeyId=key["AccessKeyId"], Status="Inactive"
        )
        ctx.log.info("deactivated access key %s", key["AccessKeyId"])
        retired.append(key["AccessKeyId"])
    return retired


def _purge_expired(ctx: StepContext, keys: list[Key], current: Key) -> list[str]:
    """Delete every other key whose grace period has passed."""
    purged: list[str] = []
    for key in keys:
        if key["AccessKeyId"] == current["AccessKeyId"] or key["Status"] == "Active":
            continue
        if ctx.now() >= grace_ends(ctx, key, current):
            _delete(ctx, key["AccessKeyId"], "after its grace period")
            purged.append(key["AccessKeyId"])
    return purged


def grace_ends(ctx: StepContext, key: Key, current: Key) -> datetime:
    """Return when a retired key may be deleted: grace days after its replacement."""
    # Known shortcoming: IAM keeps no deactivation time, so the grace period counts
    # from the replacement key's creation, which the rotation also stored then.
    since: datetime = max(key["CreateDate"], current["CreateDate"])
    return since + timedelta(days=ctx.workflow.key_grace_days)


def _delete(ctx: StepContext, key_id: str, why: str) -> None:
    ctx.clients.iam.delete_access_key(UserName=ctx.user.name, AccessKeyId=key_id)
    ctx.log.info("deleted access key %s %s", key_id, why)
