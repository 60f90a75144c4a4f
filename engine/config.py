"""Load workflows.yaml and validate it into typed objects before anything runs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

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
from engine.policies import admin_reasons, generate, lint

# IAM's own limits, checked here so that AWS is never asked with a bad name.
IamName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_+=,.@-]{1,64}$")]
RoleName = IamName
IamPath = Annotated[str, StringConstraints(pattern=r"^/([\x21-\x7e]{0,510}/)?$")]
PolicyArn = Annotated[
    str, StringConstraints(pattern=r"^arn:aws[\w-]*:iam::(aws|\d{12}):policy/.+$")
]


def _tag_text(text: str) -> str:
    # IAM allows letters, digits and spaces of any script, and _.:/=+-@.
    for char in text:
        if not (char.isalnum() or char.isspace() or char in "_.:/=+-@"):
            raise ValueError(
                f"{char!r} is not allowed in an IAM tag: use letters, digits, "
                "spaces and _.:/=+-@"
            )
    return text


def _tag_key(key: str) -> str:
    if key.lower().startswith("aws:"):
        raise ValueError("tag keys starting with aws: are reserved for AWS")
    return _tag_text(key)


TagKey = Annotated[
    str, StringConstraints(min_length=1, max_length=128), AfterValidator(_tag_key)
]
TagValue = Annotated[str, StringConstraints(max_length=256), AfterValidator(_tag_text)]
Region = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")]
MAX_TAGS = 50
MIN_REASON = 10
# IAM's size limits, in characters other than whitespace: all inline policies of
# one user, group or role together, and one customer managed policy.
INLINE_LIMITS = {"user": 2048, "group": 5120, "role": 10240}
MANAGED_LIMIT = 6144
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
    "path": "an IAM path is 1-512 printable ASCII characters and starts and ends "
    "with / (for example /people/)",
    "secret_prefix": "a Secrets Manager name prefix: ASCII letters, digits and "
    "/_+=.@- (for example iam-onboarding/)",
    "region": "not an AWS region name (for example us-east-1)",
    "service": "a service principal such as ec2.amazonaws.com",
    "mfa_device_name": "1-226 ASCII letters, digits and +=,.@_-",
    "trail_name": "3-128 letters, digits, periods, underscores or dashes",
    "bucket": "not a valid S3 bucket name (3-63 lowercase letters, digits, . and -)",
    "access_log_bucket": "not a valid S3 bucket name (3-63 lowercase letters, "
    "digits, . and -)",
    "kms_key_alias": "a KMS alias such as alias/trail-logs (letters, digits, /_-)",
    "log_group": "1-512 letters, digits and _./#-",
    "logs_role": "not a valid IAM name (1-64 ASCII letters, digits and +=,.@_-)",
    "alarm_topic": "an SNS topic name: 1-256 letters, digits, _ and -",
    "alarm_name": "1-255 letters, digits, _, . and -",
    "alarm_email": "an email address such as security@example.com",
}
RESOURCE_HINT = "not a resource ARN (for example arn:aws:s3:::northwind-curated/*)"
PATTERN_HINTS.update(
    {level: RESOURCE_HINT for level in ("read", "write", "list", "tagging")},
    **{"permissions-management": RESOURCE_HINT},
    instance_ids="an EC2 instance id such as i-0123456789abcdef0",
)
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
        for name in ("Action", "NotAction", "Resource", "NotResource"):
            if getattr(self, name) == []:
                raise ValueError(
                    f"a statement's {name} list is empty; name at least one"
                )
        return self


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    Version: Literal["2012-10-17", "2008-10-17"] = "2012-10-17"
    Id: str | None = None
    Statement: Annotated[list[_Statement], Field(min_length=1)] | _Statement


def _check_document(document: dict[str, Any]) -> dict[str, Any]:
    try:
        _Document.model_validate(document)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = _dotted(tuple(first["loc"])) or "document"
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "too_short":
            message = "is empty; give at least one"
        raise ValueError(f"policy document {where}: {message}") from None
    problems = lint(document)
    if problems:
        raise ValueError(f"parliament finds {problems[0]}")
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
    secret_prefix: str = Field(
        default="iam-onboarding/", pattern=r"^[A-Za-z0-9/_+=.@-]{0,400}$"
    )


class MonitoringConfig(_Strict):
    """The account's trail and its bucket (named from the account when unset)."""

    trail_name: str = Field(
        default="iam-onboarding-trail", pattern=r"^[A-Za-z0-9][\w.-]{2,127}$"
    )
    bucket: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
    )
    access_log_bucket: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
    )
    kms_key_alias: str = Field(
        default="alias/iam-onboarding-trail", pattern=r"^alias/[A-Za-z0-9/_-]{1,250}$"
    )
    log_group: str = Field(
        default="iam-onboarding-trail", pattern=r"^[A-Za-z0-9_./#-]{1,512}$"
    )
    logs_role: IamName = "iam-onboarding-trail-to-logs"
    alarm_topic: str = Field(
        default="iam-onboarding-alarms", pattern=r"^[A-Za-z0-9_-]{1,256}$"
    )
    alarm_name: str = Field(
        default="iam-onboarding-iam-policy-changes", pattern=r"^[A-Za-z0-9_.-]{1,255}$"
    )
    alarm_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

    @field_validator("kms_key_alias")
    @classmethod
    def _not_aws_alias(cls, value: str) -> str:
        if value.startswith("alias/aws/"):
            raise ValueError("alias/aws/ names AWS managed keys; choose another alias")
        return value


ResourceArn = Annotated[
    str,
    StringConstraints(
        pattern=r"^arn:aws[\w-]*:[a-z0-9-]+:[a-z0-9-]*:(\d{12}|\*)?:\S+$"
    ),
]
InstanceId = Annotated[str, StringConstraints(pattern=r"^i-[0-9a-f]{8,17}$")]


class AccessLevels(_Strict):
    """Access levels over resource ARNs, written into a policy by policy_sentry."""

    read: list[ResourceArn] = []
    write: list[ResourceArn] = []
    listing: list[ResourceArn] = Field(default=[], alias="list")
    tagging: list[ResourceArn] = []
    permissions_management: list[ResourceArn] = Field(
        default=[], alias="permissions-management"
    )

    @model_validator(mode="after")
    def _writable(self) -> AccessLevels:
        if not self.levels():
            raise ValueError(
                "name a level: read, write, list, tagging or permissions-management"
            )
        self.document()
        return self

    def levels(self) -> dict[str, list[str]]:
        """Return the levels that name resources, keyed as policy_sentry wants."""
        dumped = self.model_dump(by_alias=True)
        return {level: arns for level, arns in dumped.items() if arns}

    def document(self) -> dict[str, Any]:
        """Return the least-privilege policy for these levels."""
        return generate(self.levels())


def policy_size(*documents: dict[str, Any]) -> int:
    """Return the size IAM counts for documents: characters other than whitespace."""
    return sum(sum(not char.isspace() for char in json.dumps(doc)) for doc in documents)


class CustomerPolicy(_Strict):
    """A customer managed policy the engine creates and keeps at the file's text."""

    name: IamName
    document: PolicyDocument | None = None
    access: AccessLevels | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CustomerPolicy:
        if (self.document is None) == (self.access is None):
            raise ValueError("give a customer policy one of document or access")
        size = policy_size(self.policy_document())
        if size > MANAGED_LIMIT:
            raise ValueError(
                f"the policy is {size} characters (whitespace aside), over IAM's "
                f"{MANAGED_LIMIT} for a managed policy; split it in two"
            )
        return self

    def policy_document(self) -> dict[str, Any]:
        """Return the document, written out when the file gives access levels."""
        return self.access.document() if self.access else dict(self.document or {})


class PolicyHolder(_Strict):
    """The policies a group, a user or a service role holds."""

    KIND: ClassVar[str] = "user"

    managed_policies: list[PolicyArn] = []
    inline_policy: PolicyDocument | None = None
    access: AccessLevels | None = None
    customer_policies: list[CustomerPolicy] = []

    @model_validator(mode="after")
    def _inline_fits(self) -> PolicyHolder:
        inline = [d for f, d in self.file_documents() if f[0] != "customer_policies"]
        size, limit = policy_size(*inline), INLINE_LIMITS[self.KIND]
        if size > limit:
            raise ValueError(
                f"its inline policies come to {size} characters (whitespace aside), "
                f"over IAM's {limit} for a {self.KIND}; move some into "
                "customer_policies"
            )
        return self

    def file_documents(self) -> list[tuple[tuple[str | int, ...], dict[str, Any]]]:
        """Return each document the file itself gives, with the field it is under."""
        found: list[tuple[tuple[str | int, ...], dict[str, Any]]] = []
        if self.inline_policy is not None:
            found.append((("inline_policy",), self.inline_policy))
        if self.access is not None:
            found.append((("access",), self.access.document()))
        for index, policy in enumerate(self.customer_policies):
            found.append((("customer_policies", index), policy.policy_document()))
        return found


class GroupConfig(PolicyHolder):
    """An IAM group the file manages, with its policies."""

    KIND: ClassVar[str] = "group"


class ServiceRoleConfig(PolicyHolder):
    """A role that a service (EC2, Lambda, ...) assumes instead of using keys."""

    KIND: ClassVar[str] = "role"
    service: str = Field(pattern=r"^[a-z0-9.-]+\.amazonaws\.com$")
    name: RoleName | None = None
    permissions_boundary: PolicyArn | None = None
    instance_ids: list[InstanceId] = []

    @model_validator(mode="after")
    def _instances_need_ec2(self) -> ServiceRoleConfig:
        if self.instance_ids and self.service != "ec2.amazonaws.com":
            raise ValueError("instance_ids need service: ec2.amazonaws.com")
        return self


def _meaningful(reason: str) -> str:
    visible = [c for c in reason if c.isprintable() and not c.isspace()]
    if len(visible) < MIN_REASON:
        raise ValueError(
            f"write a reason of at least {MIN_REASON} characters besides spaces; "
            "it is kept in the history"
        )
    return reason.strip()


Reason = Annotated[str, AfterValidator(_meaningful)]


class DirectPolicies(_Strict):
    """An explicit, recorded exception to "permissions only through groups"."""

    reason: Reason


class AllowAdmin(_Strict):
    """An explicit, recorded exception to the no-admin rule."""

    reason: Reason


class UserConfig(PolicyHolder):
    """One IAM user to onboard."""

    name: IamName
    workflow: str | None = None
    path: IamPath = "/"
    tags: dict[TagKey, TagValue] = Field(default={}, max_length=MAX_TAGS)
    permissions_boundary: PolicyArn | None = None
    groups: list[str] = []
    direct_policies: DirectPolicies | None = None
    allow_admin: AllowAdmin | None = None
    mfa: Literal["virtual", "self-service", "none"] = "virtual"
    mfa_device_name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_+=,.@-]{1,226}$"
    )
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
    key_grace_days: int = Field(default=7, ge=0, le=365)
    unused_credentials_days: int = Field(default=45, ge=1, le=3650)
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

    def __init__(
        self, path: Path, config: Config, seed_dir_line: int | None = None
    ) -> None:
        self.path = path
        self.config = config
        self.base_dir = path.resolve().parent
        self.seed_dir_line = seed_dir_line

    def make_seed_dir(self) -> Path:
        """Create the MFA seed folder (0700) before a run; ConfigError if impossible."""
        folder = self.resolve(self.config.secrets.mfa_seed_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise ConfigError(
                str(self.path),
                self.seed_dir_line,
                "secrets.mfa_seed_dir",
                f"cannot create {folder} ({err.strerror}); name a folder you can "
                "write to",
            ) from None
        return folder

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
    seed_dir_line = yamlsafe.line_of(document, ("secrets", "mfa_seed_dir"))
    loaded = LoadedConfig(Path(path), config, seed_dir_line)
    _check_seed_dir(name, document, loaded)
    return loaded


def _check_seed_dir(name: str, doc: Any, loaded: LoadedConfig) -> None:
    """Refuse a seed folder that cannot be made or written, before anything runs."""
    folder = loaded.resolve(loaded.config.secrets.mfa_seed_dir)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a folder" if not existing.is_dir() else "is not writable"
        _fail(
            name,
            doc,
            ("secrets", "mfa_seed_dir"),
            f"{existing} {why}, so MFA seeds cannot be written to {folder}; "
            "name a folder you can write to",
        )


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
    if location[-1:] == ("[key]",) and location[-3:-2] == ("groups",):
        return "not a valid IAM group name (1-64 ASCII letters, digits and +=,.@_-)"
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
    _check_monitoring(name, doc, config.monitoring)
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
    _check_customer_policies(name, doc, config)


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


def _check_monitoring(name: str, doc: Any, monitoring: MonitoringConfig) -> None:
    if monitoring.bucket and monitoring.bucket == monitoring.access_log_bucket:
        _fail(
            name,
            doc,
            ("monitoring", "access_log_bucket"),
            "must differ from monitoring.bucket (a bucket cannot log to itself)",
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
        _check_admin(name, doc, config, user, where)
    if user.direct_policies is None:
        _check_direct(name, doc, user, where)
    if user.mfa_device_name is not None and user.mfa != "virtual":
        _fail(name, doc, (*where, "mfa_device_name"), "only used with mfa: virtual")
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


def _check_admin(
    name: str, doc: Any, config: Config, user: UserConfig, where: tuple[Any, ...]
) -> None:
    found = _admin_in(user)
    if found:
        _fail(name, doc, (*where, *found[0]), _refused(found[1]))
    for index, group in enumerate(user.groups):
        found = _admin_in(config.groups[group]) if group in config.groups else None
        if found:
            why = f"group {group} {_dotted(found[0])}: {found[1]}"
            _fail(name, doc, (*where, "groups", index), _refused(why))
    found = _admin_in(user.service_role) if user.service_role else None
    if found:
        _fail(name, doc, (*where, "service_role", *found[0]), _refused(found[1]))


def _admin_in(holder: PolicyHolder) -> tuple[tuple[Any, ...], str] | None:
    """Return the field and reason of a holder's first admin-style grant."""
    for index, arn in enumerate(holder.managed_policies):
        if arn in ADMIN_POLICY_ARNS:
            return ("managed_policies", index), f"{arn} is admin-style"
    for field, document in holder.file_documents():
        reasons = admin_reasons(document)
        if reasons:
            return field, reasons[0]
    return None


def _refused(reason: str) -> str:
    return (
        f"grants admin-style access ({reason}); remove it, or add allow_admin "
        "with a reason"
    )


def _check_customer_policies(name: str, doc: Any, config: Config) -> None:
    """Refuse one customer managed policy name declared with two documents."""
    seen: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    for where, holder in _policy_holders(config):
        for index, policy in enumerate(holder.customer_policies):
            location = (*where, "customer_policies", index)
            document = policy.policy_document()
            first = seen.setdefault(policy.name.lower(), (location, document))
            if first[1] != document:
                why = f"{policy.name} is also {_dotted(first[0])} with another text"
                _fail(name, doc, (*location, "name"), why)


def _policy_holders(config: Config) -> list[tuple[tuple[Any, ...], PolicyHolder]]:
    found: list[tuple[tuple[Any, ...], PolicyHolder]] = [
        (("groups", group), holder) for group, holder in config.groups.items()
    ]
    for index, user in enumerate(config.users):
        found.append((("users", index), user))
        if user.service_role is not None:
            found.append((("users", index, "service_role"), user.service_role))
    return found


def _check_direct(
    name: str, doc: Any, user: UserConfig, where: tuple[Any, ...]
) -> None:
    for field in ("managed_policies", "inline_policy", "access", "customer_policies"):
        if getattr(user, field):
            _fail(name, doc, (*where, field), _DIRECT_REFUSED)


_DIRECT_REFUSED = (
    "users get permissions only through groups (CIS 1.15); move it to a group, "
    "or add direct_policies with a reason"
)


def _fail(name: str, doc: Any, location: tuple[Any, ...], problem: str) -> None:
    raise ConfigError(name, yamlsafe.line_of(doc, location), _dotted(location), problem)
