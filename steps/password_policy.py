"""The account's password policy (CIS v5 1.7 and 1.8), checked once per account.

A weaker policy is raised to the baseline; every setting that is already
stronger (a longer minimum, complexity, expiry) is kept as it is, because
``update_account_password_policy`` replaces the whole policy.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from steps.base import StepContext, is_code

VERIFIED_KEY = "password_policy"
MIN_LENGTH = 14
REUSE_PREVENTION = 24
# The fields get_account_password_policy returns that update accepts back.
SETTABLE = (
    "MinimumPasswordLength",
    "RequireSymbols",
    "RequireNumbers",
    "RequireUppercaseCharacters",
    "RequireLowercaseCharacters",
    "AllowUsersToChangePassword",
    "MaxPasswordAge",
    "PasswordReusePrevention",
    "HardExpiry",
)


def ensure(ctx: StepContext) -> dict[str, Any]:
    """Make sure the account's password policy meets the baseline, once per run."""
    known, _ = ctx.account.once(VERIFIED_KEY, lambda: _ensure(ctx.clients.iam))
    return dict(known)


def _ensure(iam: Any) -> dict[str, Any]:
    current = _current(iam)
    wanted = strengthened(current)
    summary = {
        "MinimumPasswordLength": wanted["MinimumPasswordLength"],
        "PasswordReusePrevention": wanted["PasswordReusePrevention"],
    }
    if current and all(current.get(key) == value for key, value in summary.items()):
        return {"action": "kept", **summary}
    iam.update_account_password_policy(**wanted)
    return {"action": "repaired" if current else "created", **summary}


def _current(iam: Any) -> dict[str, Any]:
    try:
        policy: dict[str, Any] = iam.get_account_password_policy()["PasswordPolicy"]
    except ClientError as err:
        if is_code(err, "NoSuchEntity"):
            return {}
        raise
    return policy


def strengthened(current: dict[str, Any]) -> dict[str, Any]:
    """Return the settings to write: the current ones, raised to the baseline."""
    settings = {key: current[key] for key in SETTABLE if key in current}
    if not settings.get("MaxPasswordAge"):
        # 0 (or absent) means passwords never expire; the API accepts only 1-1095.
        settings.pop("MaxPasswordAge", None)
    if not current:
        settings["AllowUsersToChangePassword"] = True
    length = int(settings.get("MinimumPasswordLength", 0))
    reuse = int(settings.get("PasswordReusePrevention", 0))
    settings["MinimumPasswordLength"] = max(length, MIN_LENGTH)
    settings["PasswordReusePrevention"] = max(reuse, REUSE_PREVENTION)
    return settings
