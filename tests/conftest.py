"""Shared fixtures: fake AWS credentials, moto, stores on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws
from moto.server import ThreadedMotoServer
from sqlalchemy import create_engine, text

from engine import config as config_module
from engine.aws import build_clients
from engine.config import AwsConfig
from engine.secrets import Redactor, SecretSink
from engine.store import Store, open_store
from steps import REGISTRY
from steps.base import AccountFacts, Clients, StepContext

PG_URL = os.environ.get(
    "IAM_ENGINE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MANAGED_POLICIES_ENV = "MOTO_IAM_LOAD_MANAGED_POLICIES"
MOTO_CONFIG = {"iam": {"load_aws_managed_policies": True}}


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure no test can reach a real account."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "IAM_ENGINE_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(autouse=True)
def quiet_root_logger() -> Iterator[None]:
    """Keep handlers the CLI installs from leaking into the next test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def postgres_reachable() -> bool:
    """Tell whether the test PostgreSQL server answers."""
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
    except Exception:  # noqa: BLE001 - any failure means "not reachable" for a skip
        return False
    return True


PG_AVAILABLE = postgres_reachable()
REQUIRE_PG = os.environ.get("IAM_ENGINE_REQUIRE_PG") == "1"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL on a fresh schema of its own, dropped afterwards."""
    if not PG_AVAILABLE:
        if REQUIRE_PG:
            pytest.fail(
                f"PostgreSQL is required (IAM_ENGINE_REQUIRE_PG=1) but {PG_URL} is unreachable"
            )
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL, once per store kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An opened, migrated store on each kind of database."""
    opened = open_store(store_url)
    yield opened
    opened.dispose()


@contextmanager
def moto_server_running() -> Iterator[str]:
    """Run a moto server on 127.0.0.1 with AWS managed policies; yield its URL."""
    previous = os.environ.get(MANAGED_POLICIES_ENV)
    os.environ[MANAGED_POLICIES_ENV] = "true"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        if previous is None:
            os.environ.pop(MANAGED_POLICIES_ENV, None)
        else:
            os.environ[MANAGED_POLICIES_ENV] = previous


@pytest.fixture
def aws() -> Iterator[Clients]:
    """In-process moto with AWS managed policies, and clients on it."""
    with mock_aws(config=MOTO_CONFIG):
        session = boto3.Session(region_name="us-east-1")
        yield build_clients(session, AwsConfig(), endpoint=False)


BASE_DOC: dict[str, Any] = {
    "version": 1,
    "aws": {"sandbox": True, "region": "us-east-1"},
    "monitoring": {"trail_name": "test-trail"},
    "groups": {
        "readers": {"managed_policies": ["arn:aws:iam::aws:policy/ReadOnlyAccess"]}
    },
    "workflows": {
        "standard": {
            "steps": {
                "Created": "create_user",
                "LeastPrivilege": "least_privilege",
                "MFA": "mfa",
                "Role": "service_role",
                "Rotated": "access_keys",
                "Monitored": "cloudtrail",
                "Reviewed": "review",
            }
        }
    },
    "users": [{"name": "alice", "groups": ["readers"]}],
}


def write_workflows(folder: Path, **overrides: Any) -> Path:
    """Write a valid workflows.yaml into ``folder`` with top-level keys replaced."""
    document = {**BASE_DOC, **overrides}
    path = folder / "workflows.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def load_file(path: Path) -> config_module.LoadedConfig:
    """Load a workflows file the way the CLI does."""
    return config_module.load(path, set(REGISTRY))


class StepKit:
    """Builds step contexts for one test: one file, one moto, one secret sink."""

    def __init__(self, folder: Path, clients: Clients) -> None:
        self.folder = folder
        self.clients = clients
        self.redactor = Redactor()
        self.secrets = SecretSink(folder / "secrets", "test/", self.redactor)
        account = clients.sts.get_caller_identity()["Account"]
        self.account = AccountFacts(account_id=account, region="us-east-1")

    def context(self, user: dict[str, Any], **overrides: Any) -> StepContext:
        """Return the context of ``user`` (a users[] entry) in a fresh file."""
        path = write_workflows(self.folder, users=[user], **overrides)
        loaded = load_file(path)
        return StepContext(
            user=loaded.config.users[0],
            workflow=loaded.config.workflows["standard"],
            loaded=loaded,
            clients=self.clients,
            secrets=self.secrets,
            account=self.account,
            log=logging.LoggerAdapter(
                logging.getLogger("steps"), {"onboarding": user["name"]}
            ),
        )


@pytest.fixture
def kit(tmp_path: Path, aws: Clients) -> StepKit:
    """A StepKit on in-process moto."""
    return StepKit(tmp_path, aws)
