"""What the benchmark scripts share: a fake-credential moto, a runner, peak memory."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import yaml
from moto import mock_aws

from engine import config
from engine.aws import AwsTarget, build_clients
from engine.config import AwsConfig
from engine.runner import Runner
from engine.secrets import Redactor, SecretSink
from engine.store import Store, open_store
from steps import REGISTRY
from steps.base import AccountFacts, Clients

STEPS = {
    "Created": "create_user",
    "LeastPrivilege": "least_privilege",
    "MFA": "mfa",
    "Role": "service_role",
    "Rotated": "access_keys",
    "Monitored": "cloudtrail",
    "Reviewed": "review",
}


def fake_credentials() -> None:
    """Point boto3 at fake credentials so nothing real can be reached."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )


def users(count: int) -> list[dict[str, Any]]:
    """Return ``count`` users: mostly readers, every tenth a bot with keys."""
    made: list[dict[str, Any]] = []
    for index in range(count):
        if index % 10 == 9:
            made.append(
                {"name": f"bot{index:05}", "mfa": "none", "programmatic_access": True}
            )
        else:
            made.append({"name": f"user{index:05}", "groups": ["readers"]})
    return made


def write_file(folder: Path, count: int) -> config.LoadedConfig:
    """Write and load a workflows file of ``count`` users."""
    document = {
        "version": 1,
        "aws": {"sandbox": False},
        "groups": {
            "readers": {"managed_policies": ["arn:aws:iam::aws:policy/ReadOnlyAccess"]}
        },
        "workflows": {"standard": {"steps": STEPS}},
        "users": users(count),
    }
    path = folder / "workflows.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return config.load(path, set(REGISTRY))


@contextmanager
def moto_clients(
    max_attempts: int = 3,
) -> Iterator[tuple[Clients, Callable[[], Clients]]]:
    """Yield clients on a fresh in-process moto with AWS managed policies."""
    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        session = boto3.Session(region_name="us-east-1")
        settings = AwsConfig(max_attempts=max_attempts)

        def more() -> Clients:
            return build_clients(session, settings, endpoint=False)

        yield more(), more


@contextmanager
def moto_server_clients(
    max_attempts: int = 3,
) -> Iterator[tuple[Clients, Callable[[], Clients]]]:
    """Yield clients on a moto server in its own process, and a maker of more.

    moto then does its work on the other core instead of sharing this
    process's interpreter lock with the engine, as a far-away AWS would.
    """
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        settings = AwsConfig(max_attempts=max_attempts, endpoint_url=_wait_for(port))
        session = boto3.Session(region_name="us-east-1")

        def more() -> Clients:
            return build_clients(session, settings)

        yield more(), more
    finally:
        server.terminate()
        server.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _wait_for(port: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port)),
        ):
            return f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    raise RuntimeError(f"the moto server on port {port} did not start")


def runner_for(
    loaded: config.LoadedConfig,
    store: Store,
    clients: Clients,
    more: Callable[[], Clients],
) -> Runner:
    """Return a runner whose worker threads get clients from ``more``."""
    account = AccountFacts(clients.sts.get_caller_identity()["Account"], "us-east-1")
    target = AwsTarget(clients, account, "bench", new_clients=more)
    secrets = SecretSink(loaded.base_dir / "secrets", "bench/", Redactor())
    return Runner(loaded, store, target, secrets)


def runner_without_aws(loaded: config.LoadedConfig, store: Store) -> Runner:
    """Return a runner with no AWS behind it, for steps replaced by stand-ins."""
    clients = Clients(*[None] * len(Clients.__dataclass_fields__))
    account = AccountFacts("123456789012", "us-east-1")
    target = AwsTarget(clients, account, "none", new_clients=lambda: clients)
    secrets = SecretSink(loaded.base_dir / "secrets", "bench/", Redactor())
    return Runner(loaded, store, target, secrets)


@contextmanager
def scratch() -> Iterator[Path]:
    """Yield a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="iam-bench-") as folder:
        yield Path(folder)


def sqlite_store(folder: Path) -> Store:
    """Open a fresh SQLite store in ``folder``."""
    return open_store(f"sqlite:///{folder / 'bench.db'}")


def peak_rss_mb() -> float:
    """Return the process's peak resident memory in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
