"""What every step receives and the small AWS helpers the steps share."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from engine.config import LoadedConfig, UserConfig, WorkflowConfig
from engine.errors import StepError
from engine.policies import admin_grant as admin_grant
from engine.secrets import SecretSink

MANAGED_BY_TAG = ("onboarded-by", "iam-onboarding-engine")
ENGINE_POLICY_PATH = "/iam-onboarding/"


@dataclass
class Clients:
    """The boto3 clients a step may use, built by engine.aws and handed in."""

    iam: Any
    sts: Any
    s3: Any
    cloudtrail: Any
    secretsmanager: Any
    ec2: Any
    kms: Any
    logs: Any
    cloudwatch: Any
    sns: Any


Guard = Callable[[str], AbstractContextManager[None]]


def _unguarded(_name: str) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass
class AccountFacts:
    """What one run learns about the account once and shares between onboardings.

    ``guard`` keeps other processes out of account-wide set-up; the runner
    gives it the store's account locks, and a step alone needs none.
    """

    account_id: str
    region: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    verified: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy_documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    guard: Guard = field(default=_unguarded)

    def once(
        self, part: str, make: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """Return what ``make`` gave for the account-wide ``part``, made once per run.

        The second value tells whether this call made it. ``make`` runs with
        other threads and, through ``guard``, other processes kept out.
        """
        known = self.verified.get(part)
        if known is not None:
            return known, False
        with self.lock, self.guard(f"{self.account_id}/{self.region}/{part}"):
            known = self.verified.get(part)
            if known is not None:
                return known, False
            made = self.verified[part] = make()
        return made, True


@dataclass
class StepContext:
    """Everything one step needs to act for one onboarding."""

    user: UserConfig
    workflow: WorkflowConfig
    loaded: LoadedConfig
    clients: Clients
    secrets: SecretSink
    account: AccountFacts
    log: logging.LoggerAdapter[logging.Logger]
    in_doubt: bool = False
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


Step = Callable[[StepContext], dict[str, Any]]


def error_code(err: ClientError) -> str:
    """Return the AWS error code of a ClientError."""
    return str(err.response.get("Error", {}).get("Code", "Unknown"))


def is_code(err: ClientError, *codes: str) -> bool:
    """Tell whether ``err`` carries one of ``codes``."""
    return error_code(err) in codes


def paginate(client: Any, operation: str, key: str, **kwargs: Any) -> Iterator[Any]:
    """Yield every item under ``key`` across all pages of a list call."""
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def as_document(document: Any) -> dict[str, Any]:
    """Return a policy document as a dict, whether AWS gave a dict or a JSON string."""
    if isinstance(document, str):
        loaded: dict[str, Any] = json.loads(document)
        return loaded
    return dict(document)


def dumps(document: dict[str, Any]) -> str:
    """Serialise a policy document the same way every time."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def managed_policy_document(ctx: StepContext, arn: str) -> dict[str, Any]:
    """Return the default version of a managed policy, fetched once per run."""
    cached = ctx.account.policy_documents.get(arn)
    if cached is not None:
        return cached
    iam = ctx.clients.iam
    try:
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    except ClientError as err:
        if is_code(err, "NoSuchEntity"):
            raise _missing_policy(arn) from err
        raise
    raw = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]
    document = as_document(raw["Document"])
    ctx.account.policy_documents[arn] = document
    return document


def _missing_policy(arn: str) -> StepError:
    hint = "check the ARN in the file"
    if ":iam::aws:policy/" in arn:
        hint += "; on a moto server, start it with MOTO_IAM_LOAD_MANAGED_POLICIES=true"
    return StepError(f"policy {arn} does not exist; {hint}", code="NoSuchEntity")


def iam_tags(tags: dict[str, str]) -> list[dict[str, str]]:
    """Return tags in the shape IAM calls take, with the engine's own tag added."""
    merged = {**tags, MANAGED_BY_TAG[0]: MANAGED_BY_TAG[1]}
    return [{"Key": key, "Value": value} for key, value in sorted(merged.items())]
