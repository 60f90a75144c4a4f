"""What a group, a user or a role holds: checked first, then attached.

Shared by the LeastPrivilege and Role steps. Every document is linted with
parliament and checked for admin-style grants before anything is attached.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import ClientError

from engine.config import ADMIN_POLICY_ARNS, CustomerPolicy, PolicyHolder
from engine.errors import PolicyRefused, StepError
from engine.policies import admin_reasons, lint
from steps.base import (
    ENGINE_POLICY_PATH,
    StepContext,
    as_document,
    dumps,
    is_code,
    managed_policy_document,
    paginate,
)

INLINE_POLICY_NAME = "onboarding-inline"
ACCESS_POLICY_NAME = "onboarding-access"
# AWS keeps at most five versions of a managed policy.
MAX_POLICY_VERSIONS = 5


@dataclass(frozen=True)
class Principal:
    """A group, user or role whose policies a step manages."""

    kind: Literal["group", "user", "role"]
    name: str

    def key(self) -> dict[str, str]:
        """Return the name parameter IAM's calls for this kind take."""
        return {f"{self.kind.capitalize()}Name": self.name}

    def call(self, iam: Any, verb: str, **params: Any) -> Any:
        """Call IAM's ``verb`` for this kind, e.g. attach -> attach_role_policy."""
        operation = getattr(iam, f"{verb}_{self.kind}_policy")
        return operation(**self.key(), **params)


@dataclass(frozen=True)
class Declared:
    """One policy document a holder declares, and where it came from."""

    source: str
    document: dict[str, Any]
    arn: str | None = None

    @property
    def from_file(self) -> bool:
        """Tell whether the file gave the text (else AWS keeps it, under an ARN)."""
        return self.arn is None


def declared(ctx: StepContext, label: str, holder: PolicyHolder) -> list[Declared]:
    """Return every document ``holder`` declares, AWS managed ones fetched."""
    found = [
        Declared(f"{label}{arn}", managed_policy_document(ctx, arn), arn)
        for arn in holder.managed_policies
    ]
    for field, document in holder.file_documents():
        path = ".".join(str(part) for part in field)
        found.append(Declared(f"{label}{path}", document))
    return found


def check(ctx: StepContext, documents: list[Declared]) -> list[dict[str, str]]:
    """Refuse a defective or admin-style document; return the allowed admin ones."""
    allowed: list[dict[str, str]] = []
    for item in documents:
        # Known shortcoming: AWS managed policies are not linted, only checked
        # for admin-style grants, as parliament's older database flags them.
        if item.from_file:
            _refuse_defects(ctx, item)
        for reason in _admin(item):
            if ctx.user.allow_admin is None:
                raise PolicyRefused(ctx.user.name, item.source, reason)
            allowed.append({"policy": item.source, "reason": reason})
    return allowed


def _refuse_defects(ctx: StepContext, item: Declared) -> None:
    problems = lint(item.document)
    if problems:
        raise StepError(
            f"refused {item.source} for user {ctx.user.name}: parliament finds "
            f"{problems[0]}; fix the policy in the file",
            code="PolicyLint",
            detail={"policy": item.source, "findings": problems},
        )


def _admin(item: Declared) -> list[str]:
    if item.arn in ADMIN_POLICY_ARNS:
        return [f"{item.arn} is admin-style"]
    return admin_reasons(item.document)


def apply(
    ctx: StepContext, who: Principal, holder: PolicyHolder, prune: bool = False
) -> dict[str, Any]:
    """Attach and put what ``holder`` declares; with ``prune``, remove the rest."""
    arns = list(holder.managed_policies)
    customer = [ensure_customer_policy(ctx, p) for p in holder.customer_policies]
    arns += [item["arn"] for item in customer]
    detail: dict[str, Any] = {"attached": _attach(ctx, who, arns)}
    inline = _inline_documents(holder)
    detail["inline"] = [n for n, d in inline.items() if _put_inline(ctx, who, n, d)]
    if customer:
        detail["customer_policies"] = customer
    # Known shortcoming: only users are pruned; groups and roles keep extras.
    if prune:
        detail["removed"] = _prune(ctx, who, set(arns), set(inline))
    return detail


def declared_inline(holder: PolicyHolder) -> set[str]:
    """Return the names of the inline policies the engine puts for ``holder``."""
    return set(_inline_documents(holder))


def _inline_documents(holder: PolicyHolder) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    if holder.inline_policy is not None:
        found[INLINE_POLICY_NAME] = holder.inline_policy
    if holder.access is not None:
        found[ACCESS_POLICY_NAME] = holder.access.document()
    return found


def _attach(ctx: StepContext, who: Principal, arns: list[str]) -> list[str]:
    current = {p["PolicyArn"] for p in _attached(ctx, who)}
    added = [arn for arn in arns if arn not in current]
    for arn in added:
        who.call(ctx.clients.iam, "attach", PolicyArn=arn)
    return added


def _attached(ctx: StepContext, who: Principal) -> list[dict[str, Any]]:
    operation = f"list_attached_{who.kind}_policies"
    return list(paginate(ctx.clients.iam, operation, "AttachedPolicies", **who.key()))


def _put_inline(
    ctx: StepContext, who: Principal, name: str, document: dict[str, Any]
) -> bool:
    try:
        raw = who.call(ctx.clients.iam, "get", PolicyName=name)["PolicyDocument"]
        if as_document(raw) == document:
            return False
    except ClientError as err:
        if not is_code(err, "NoSuchEntity"):
            raise
    who.call(ctx.clients.iam, "put", PolicyName=name, PolicyDocument=dumps(document))
    return True


def _prune(
    ctx: StepContext, who: Principal, arns: set[str], inline: set[str]
) -> list[str]:
    """Remove policies attached straight to ``who`` that the file does not declare."""
    iam = ctx.clients.iam
    removed: list[str] = []
    for policy in _attached(ctx, who):
        # Other steps attach the engine's own policies (RequireMFA); they stay.
        # Known shortcoming: so does a customer policy dropped from the file.
        engine_owned = ENGINE_POLICY_PATH in policy["PolicyArn"]
        if policy["PolicyArn"] not in arns and not engine_owned:
            who.call(iam, "detach", PolicyArn=policy["PolicyArn"])
            removed.append(policy["PolicyArn"])
    names = paginate(iam, f"list_{who.kind}_policies", "PolicyNames", **who.key())
    for name in [n for n in names if n not in inline]:
        who.call(iam, "delete", PolicyName=name)
        removed.append(f"inline {name}")
    return removed


def _engine_arn(ctx: StepContext, name: str) -> str:
    # Known shortcoming: the ARN assumes the aws partition (not China, GovCloud).
    return f"arn:aws:iam::{ctx.account.account_id}:policy{ENGINE_POLICY_PATH}{name}"


def ensure_customer_policy(ctx: StepContext, policy: CustomerPolicy) -> dict[str, Any]:
    """Create the policy, or make the file's document its default version."""
    return ensure_engine_policy(ctx, policy.name, policy.policy_document())


def ensure_engine_policy(
    ctx: StepContext,
    name: str,
    wanted: dict[str, Any],
    description: str = "Declared in workflows.yaml; kept by iam-onboarding-engine",
) -> dict[str, Any]:
    """Hold the customer managed policy ``/iam-onboarding/<name>`` to ``wanted``.

    It is checked once per run and account; a changed document becomes a new
    default version, within AWS's limit of five versions.
    """
    arn = _engine_arn(ctx, name)
    digest = hashlib.sha256(dumps(wanted).encode()).hexdigest()
    detail, fresh = ctx.account.once(
        f"customer-policy/{name}/{digest[:16]}",
        lambda: _converge_policy(ctx, arn, name, wanted, description),
    )
    if fresh:
        return dict(detail)
    return {"arn": arn, "action": "verified earlier in this run"}


def _converge_policy(
    ctx: StepContext, arn: str, name: str, wanted: dict[str, Any], description: str
) -> dict[str, Any]:
    iam = ctx.clients.iam
    current = _default_document(iam, arn)
    if current is None:
        if _create_policy(iam, name, wanted, description):
            return {"arn": arn, "action": "created"}
        current = _default_document(iam, arn)
    if current == wanted:
        return {"arn": arn, "action": "adopted"}
    deleted = _make_room(iam, arn)
    version = iam.create_policy_version(
        PolicyArn=arn, PolicyDocument=dumps(wanted), SetAsDefault=True
    )["PolicyVersion"]["VersionId"]
    detail = {"arn": arn, "action": "new default version", "version": version}
    if deleted:
        detail["deleted_version"] = deleted
    return detail


def _default_document(iam: Any, arn: str) -> dict[str, Any] | None:
    try:
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    except ClientError as err:
        if is_code(err, "NoSuchEntity"):
            return None
        raise
    raw = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]
    return as_document(raw["Document"])


def _create_policy(
    iam: Any, name: str, document: dict[str, Any], description: str
) -> bool:
    """Create the policy; False when another run created it first."""
    try:
        iam.create_policy(
            PolicyName=name,
            Path=ENGINE_POLICY_PATH,
            PolicyDocument=dumps(document),
            Description=description,
        )
    except ClientError as err:
        if is_code(err, "EntityAlreadyExists"):
            return False
        raise
    return True


def _make_room(iam: Any, arn: str) -> str | None:
    """Delete the oldest non-default version when the policy has five."""
    versions = list(paginate(iam, "list_policy_versions", "Versions", PolicyArn=arn))
    if len(versions) < MAX_POLICY_VERSIONS:
        return None
    spare = [v for v in versions if not v["IsDefaultVersion"]]
    oldest = min(spare, key=lambda v: v["CreateDate"])["VersionId"]
    iam.delete_policy_version(PolicyArn=arn, VersionId=oldest)
    return str(oldest)
