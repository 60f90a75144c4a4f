"""boto3 sessions and clients for the three targets: sandbox, endpoint, real account."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ProfileNotFound,
)

from engine.config import AwsConfig
from engine.errors import AwsSetupError
from steps.base import AccountFacts, Clients

log = logging.getLogger(__name__)

SERVICES = (
    "iam",
    "sts",
    "s3",
    "cloudtrail",
    "secretsmanager",
    "ec2",
    "kms",
    "logs",
    "cloudwatch",
    "sns",
)


@dataclass
class AwsTarget:
    """The clients of one AWS target and what is known of its account."""

    clients: Clients
    account: AccountFacts
    description: str
    checkpoint: Callable[[], None] = field(default=lambda: None)
    close: Callable[[], None] = field(default=lambda: None)
    # Stops the target without keeping anything: for a run that never started.
    abandon: Callable[[], None] = field(default=lambda: None)
    new_clients: Callable[[], Clients] | None = None
    # The sandbox pickles moto's state between steps, so it serves one at a time.
    max_workers: int = 64


def open_target(settings: AwsConfig, sandbox_file: Path) -> AwsTarget:
    """Open the target the file asks for; the sandbox is started and restored here."""
    if settings.sandbox:
        return _open_sandbox(settings, sandbox_file)
    session = _session(settings)
    clients = build_clients(session, settings)
    account = _account_facts(clients, settings)
    where = f"endpoint {settings.endpoint_url}" if settings.endpoint_url else "AWS"
    description = f"{where}, account {account.account_id}, region {settings.region}"
    lock = threading.Lock()

    def more_clients() -> Clients:
        # boto3 sessions are not safe to build clients from in parallel.
        with lock:
            return build_clients(session, settings)

    return AwsTarget(clients, account, description, new_clients=more_clients)


def _open_sandbox(settings: AwsConfig, sandbox_file: Path) -> AwsTarget:
    # moto takes a second to import; only sandbox runs should pay for it.
    from engine.sandbox import Sandbox

    sandbox = Sandbox(sandbox_file, settings.region)
    sandbox.start()
    session = boto3.Session(
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
        region_name=settings.region,
    )
    clients = build_clients(session, settings, endpoint=False)
    account = _account_facts(clients, settings)
    description = (
        f"SANDBOX (in-process moto, state in {sandbox_file}); nothing real is touched"
    )
    return AwsTarget(
        clients,
        account,
        description,
        sandbox.save,
        sandbox.stop,
        lambda: sandbox.stop(keep=False),
        max_workers=1,
    )


def _session(settings: AwsConfig) -> boto3.Session:
    try:
        return boto3.Session(profile_name=settings.profile, region_name=settings.region)
    except ProfileNotFound:
        raise AwsSetupError(
            f"AWS profile '{settings.profile}' is not configured; "
            f"run `aws configure --profile "
            f"{settings.profile}` or change aws.profile in the file"
        ) from None


def boto_config(settings: AwsConfig) -> BotoConfig:
    """Return the botocore settings every client uses: standard retries, our agent."""
    return BotoConfig(
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        user_agent_extra="iam-onboarding-engine",
    )


def build_clients(
    session: boto3.Session, settings: AwsConfig, endpoint: bool = True
) -> Clients:
    """Build one client per service the steps use."""
    url = settings.endpoint_url if endpoint else None
    config = boto_config(settings)
    made: dict[str, Any] = {
        name: session.client(name, endpoint_url=url, config=config) for name in SERVICES
    }
    return Clients(**made)


def _account_facts(clients: Clients, settings: AwsConfig) -> AccountFacts:
    try:
        identity = clients.sts.get_caller_identity()
    except NoCredentialsError:
        raise AwsSetupError(
            "no AWS credentials found; configure them (aws configure, a profile, or "
            "environment variables) or set aws.sandbox: true in the file"
        ) from None
    except EndpointConnectionError as err:
        raise AwsSetupError(
            f"cannot reach {err.kwargs.get('endpoint_url')}; is the endpoint running?"
        ) from None
    except ClientError as err:
        raise AwsSetupError(f"AWS refused the credentials: {err}") from None
    except BotoCoreError as err:
        raise AwsSetupError(f"cannot talk to AWS: {err}") from None
    log.debug("acting as %s", identity.get("Arn"))
    return AccountFacts(account_id=str(identity["Account"]), region=settings.region)
