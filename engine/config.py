"""Load workflows.yaml and validate it into typed objects before anything runs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from engine import yamlsafe
from engine.errors import ConfigError
from engine.policies import admin_grant

# IAM's own limits, checked here so that AWS is never asked with a bad name.
IamName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_+=,.@-]{1,64}$")]
RoleName = IamName
IamPath = Annotated[str, StringConstraints(pattern=r"^/([\x21-\x7e]{0,510}/)?$")]
PolicyArn = Annotated[
    str, StringConstraints(pattern=r"^arn:aws[\w-]*:iam::(aws|\d{12}):policy/.+$")
]
TagKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
TagValue = Annotated[str, StringConstraints(max_length=256)]
Region = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")]
MAX_TAGS = 50
# Well-known AWS managed policies that grant admin-style access.
ADMIN_POLICY_ARNS = frozenset(
    {
        "arn:aws:iam::aws:policy/AdministratorAccess",
        "arn:aws:iam::aws:policy/IAMFullAccess",
    }
)
# What the user should read when a value does not match its field's pattern.
PATTERN_HINTS = {
    "name": "not a valid IAM name (1-64 ASCII letters, digits and +=,.@_-)",
    "path": "an IAM path starts and ends with / (for example /people/)",
    "region": "not an AWS region name (for example us-east-1)",
    "service": "a service principal such as ec2.amazonaws.com",
    "trail_name": "3-128 letters, digits, periods, underscores or dashes",
    "bucket": "not a valid S3 bucket name (3-63 lowercase letters, digits, . and -)",
}
ARN_HINT = "not a policy ARN (for example arn:aws:iam::aws:policy/ReadOnlyAccess)"


class _Statement(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    Sid: str | None = None
    Effect: Literal["Allow", "Deny"]
    Action: str | list[str] | None = None
    NotAction: str | list[str] | None = None
    Resource: str | list[str] | None = None
    NotResource: str | list[str] | None = None
    Condition: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> _Statement:
        if (self.Action is None) == (self.NotAction is None):
            raise ValueError("a statement needs exactly one of Action or NotAction")
        if (self.Resource is None) == (self.NotResource is None):
            raise ValueError("a statement needs exactly one of Resource or NotResource")
        return self


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    Version: Literal["2012-10-17", "2008-10-17"] = "2012-10-17"
    Id: str | None = None
    Statement: list[_Statement] | _Statement


def _check_document(document: dict[str, Any]) -> dict[str, Any]:
    try:
        _Document.model_validate(document)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = _dotted(tuple(first["loc"])) or "document"
        raise ValueError(f"policy document {where}: {first['msg']}") from None
    return document


PolicyDocument = Annotated[dict[str, Any], AfterValidator(_check_document)]

DEFAULT_DB = "state/onboarding.db"
DEFAULT_STATES = [
    "Created",
    "LeastPrivilege",
    "MFA",
    "Role",
    "Rotated",
    "Monitored",
    "Reviewed",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StoreConfig(_Strict):
    """Where the state lives: a SQLAlchemy URL, or a SQLite file path."""

    url: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one_place(self) -> StoreConfig:
        if self.url is not None and self.path is not None:
            raise ValueError("give store.path or store.url, not both")
        return self


class AwsConfig(_Strict):
    """The AWS target: the in-process sandbox, an endpoint, or a real account."""

    sandbox: bool = False
    region: Region = "us-east-1"
    profile: str | None = None
    endpoint_url: str | None = None
    max_attempts: int = Field(default=8, ge=1, le=20)


class SecretsConfig(_Strict):
    """Where secrets go: MFA seeds to 0600 files, access keys to Secrets Manager."""

    mfa_seed_dir: str = "secrets"
    secret_prefix: str = "iam-onboarding/"


class MonitoringConfig(_Strict):
    """The account's trail and its bucket (named from the account when unset)."""

    trail_name: str = Field(
        default="iam-onboarding-trail", pattern=r"^[A-Za-z0-9][\w.-]{2,127}$"
    )
    bucket: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
    )


class GroupConfig(_Strict):
    """An IAM group the file manages, with its policies."""

    managed_policies: list[PolicyArn] = []
    inline_policy: PolicyDocument | None = None


class ServiceRoleConfig(_Strict):
    """A role that a service (EC2, Lambda, ...) assumes instead of using keys."""

    service: str = Field(pattern=r"^[a-z0-9.-]+\.amazonaws\.com$")
    name: RoleName | None = None
    managed_policies: list[PolicyArn] = []
    inline_policy: PolicyDocument | None = None


class AllowAdmin(_Strict):
    """An explicit, recorded exception to the no-admin rule."""

    reason: str = Field(min_length=10)


class UserConfig(_Strict):
    """One IAM user to onboard."""

    name: IamName
    workflow: str | None = None
    path: IamPath = "/"
    tags: dict[TagKey, TagValue] = Field(default={}, max_length=MAX_TAGS)
    permissions_boundary: PolicyArn | None = None
    groups: list[str] = []
    managed_policies: list[PolicyArn] = []
    inline_policy: PolicyDocument | None = None
    allow_admin: AllowAdmin | None = None
    mfa: Literal["virtual", "none"] = "virtual"
    programmatic_access: bool = False
    service_role: ServiceRoleConfig | None = None

    def role_name(self) -> str | None:
        """Return the name of the user's service role, if it declares one."""
        if self.service_role is None:
            return None
        return self.service_role.name or f"{self.name}-service-role"[:64]


class RetryConfig(_Strict):
    """How often a step that failed with a transient AWS error is tried again."""

    max_attempts: int = Field(default=5, ge=1, le=50)
    base_delay_seconds: float = Field(default=1.0, ge=0, le=60)
    max_delay_seconds: float = Field(default=30.0, ge=0, le=600)


class WorkflowConfig(_Strict):
    """An ordered list of states and the step that takes an onboarding into each."""

    states: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STATES), min_length=1
    )
    steps: dict[str, str]
    key_max_age_days: int = Field(default=90, ge=1, le=3650)
    retry: RetryConfig = RetryConfig()

    def definition(self) -> str:
        """Return the states and steps as canonical JSON, as onboardings keep it."""
        return json.dumps({"states": self.states, "steps": self.steps}, sort_keys=True)

    def definition_hash(self) -> str:
        """Return a short hash of the states and steps, to spot a changed definition."""
        return hashlib.sha256(self.definition().encode()).hexdigest()[:16]

    def remaining(self, state: str) -> list[tuple[str, str]]:
        """Return the (state, step) pairs still ahead of an onboarding in ``state``."""
        order = ["New", *self.states]
        ahead = order[order.index(state) + 1 :] if state in order else []
        return [(name, self.steps[name]) for name in ahead]


class Config(_Strict):
    """The whole validated file."""

    version: int

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only version 1 exists; write version: 1")
        return value

    store: StoreConfig = StoreConfig()
    aws: AwsConfig = AwsConfig()
    secrets: SecretsConfig = SecretsConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    groups: dict[IamName, GroupConfig] = {}
    workflows: dict[str, WorkflowConfig] = Field(min_length=1)
    users: list[UserConfig] = Field(min_length=1)

    def workflow_of(self, user: UserConfig) -> str:
        """Return the workflow a user runs: the named one, or the only one there is."""
        return user.workflow or next(iter(self.workflows))


class LoadedConfig:
    """A validated Config together with the file it came from."""

    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        self.config = config
        self.base_dir = path.resolve().parent

    def resolve(self, relative: str) -> Path:
        """Resolve a path from the file against the file's own folder."""
        candidate = Path(os.path.expanduser(relative))
        return candidate if candidate.is_absolute() else self.base_dir / candidate

    def database_url(self) -> str:
        """Return the store URL the file names (a SQLite path becomes a URL)."""
        store = self.config.store
        return store.url or f"sqlite:///{self.resolve(store.path or DEFAULT_DB)}"


def load(path: str | Path, known_steps: set[str]) -> LoadedConfig:
    """Read, parse and validate ``path``; raise ConfigError naming the line at fault."""
    name = str(path)
    document = yamlsafe.load(name)
    if not isinstance(document, dict):
        raise ConfigError(
            name, 1, "file", "must be a mapping with version, workflows and users"
        )
    try:
        config = Config.model_validate(document)
    except ValidationError as err:
        raise _first_error(name, document, err) from None
    _check_references(name, document, config, known_steps)
    return LoadedConfig(Path(path), config)


def _first_error(name: str, document: Any, err: ValidationError) -> ConfigError:
    first = err.errors(include_url=False)[0]
    location = tuple(first["loc"])
    field = _dotted(location) or "file"
    line = yamlsafe.line_of(document, location)
    return ConfigError(name, line, field, _explain(first))


def _explain(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key; check its spelling against the README"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        return _pattern_hint(error["loc"])
    if kind == "string_type":
        return f"expected text, got {error['input']!r}; put the value in quotes"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind in ("value_error", "assertion_error"):
        return message
    return f"{message}; see the workflows.yaml table in the README"


def _pattern_hint(location: tuple[int | str, ...]) -> str:
    fields = [part for part in location if isinstance(part, str)]
    if fields and fields[-1] in PATTERN_HINTS:
        return PATTERN_HINTS[fields[-1]]
    if any("polic" in part or "boundary" in part for part in fields):
        return ARN_HINT
    return "value has the wrong form; see the README"


def _dotted(location: tuple[int | str, ...]) -> str:
    text = ""
    # pydantic names union branches ("list[function-after[...]]"); no user wrote those.
    for part in (p for p in location if not (isinstance(p, str) and "[" in p)):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _check_references(
    name: str, doc: Any, config: Config, known_steps: set[str]
) -> None:
    for wf_name, workflow in config.workflows.items():
        _check_workflow(name, doc, wf_name, workflow, known_steps)
    seen: dict[str, int] = {}
    for index, user in enumerate(config.users):
        where = ("users", index)
        if user.name.lower() in seen:
            first = seen[user.name.lower()]
            _fail(
                name,
                doc,
                (*where, "name"),
                f"duplicate user name (IAM names ignore case; first as users[{first}])",
            )
        seen[user.name.lower()] = index
        _check_user(name, doc, config, user, where)


def _check_workflow(
    name: str, doc: Any, wf_name: str, wf: WorkflowConfig, known: set[str]
) -> None:
    where = ("workflows", wf_name)
    if len(set(wf.states)) != len(wf.states):
        _fail(name, doc, (*where, "states"), "a state is listed twice")
    for state, step in wf.steps.items():
        if state not in wf.states:
            _fail(
                name,
                doc,
                (*where, "steps", state),
                f"unknown state; the workflow's states are {', '.join(wf.states)}",
            )
        if step not in known:
            _fail(
                name,
                doc,
                (*where, "steps", state),
                f"unknown step '{step}'; known steps: {', '.join(sorted(known))}",
            )
    for state in wf.states:
        if state not in wf.steps:
            _fail(
                name,
                doc,
                (*where, "steps"),
                f"no step for state '{state}'; "
                f"map it to one of {', '.join(sorted(known))}",
            )


def _check_user(
    name: str, doc: Any, config: Config, user: UserConfig, where: tuple[Any, ...]
) -> None:
    if user.workflow is None and len(config.workflows) > 1:
        _fail(
            name,
            doc,
            (*where, "workflow"),
            "required when the file has several workflows",
        )
    if user.allow_admin is None:
        _check_admin(name, doc, user, where)
    if user.workflow is not None and user.workflow not in config.workflows:
        _fail(
            name,
            doc,
            (*where, "workflow"),
            f"unknown workflow; defined: {', '.join(config.workflows)}",
        )
    for index, group in enumerate(user.groups):
        if group not in config.groups:
            _fail(
                name,
                doc,
                (*where, "groups", index),
                f"unknown group '{group}'; define it under groups:",
            )


def _check_admin(name: str, doc: Any, user: UserConfig, where: tuple[Any, ...]) -> None:
    for index, arn in enumerate(user.managed_policies):
        if arn in ADMIN_POLICY_ARNS:
            _fail(name, doc, (*where, "managed_policies", index), _ADMIN_REFUSED)
    if user.inline_policy is not None and admin_grant(user.inline_policy):
        _fail(name, doc, (*where, "inline_policy"), _ADMIN_REFUSED)


_ADMIN_REFUSED = (
    "grants admin-style access; remove it, or add allow_admin with a reason"
)


def _fail(name: str, doc: Any, location: tuple[Any, ...], problem: str) -> None:
    raise ConfigError(name, yamlsafe.line_of(doc, location), _dotted(location), problem)
