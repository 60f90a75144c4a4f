"""The kill matrix: SIGKILL the real CLI at every fault point, re-run, check the account.

AWS is a moto server on 127.0.0.1, so its state outlives the killed process.
A recording run lists the points a full run reaches; then, for each distinct
point, the matrix kills a fresh run there, runs again until done, and checks
that every onboarding finished with no duplicate AWS resource, no gap in the
history and no secret in the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from sqlalchemy import create_engine, text

from tests.conftest import moto_server_running, write_workflows
from tests.test_runner import STATES, USERS

pytestmark = pytest.mark.slow

MAX_RERUNS = 3


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server_running() as url:
        yield url


def _fresh(endpoint: str, folder: Path) -> Path:
    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    folder.mkdir(parents=True, exist_ok=True)
    aws = {"sandbox": False, "endpoint_url": endpoint, "region": "us-east-1"}
    return write_workflows(folder, users=USERS, aws=aws, store={"path": "engine.db"})


def _run(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "run",
            str(path),
            "--quiet",
            "--format",
            "json",
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _points(endpoint: str, folder: Path) -> list[str]:
    path = _fresh(endpoint, folder)
    log = folder / "points.log"
    done = _run(path, IAM_ENGINE_FAULT_LOG=str(log))
    assert done.returncode == 0, done.stderr
    return list(dict.fromkeys(log.read_text().split()))


def _client(endpoint: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")


def _check_account(endpoint: str) -> None:
    iam = _client(endpoint, "iam")
    users = sorted(u["UserName"] for u in iam.list_users()["Users"])
    assert users == sorted(u["name"] for u in USERS)
    assert len(iam.list_virtual_mfa_devices()["VirtualMFADevices"]) == 1
    keys = iam.list_access_keys(UserName="bot")["AccessKeyMetadata"]
    assert len(keys) <= 2 and [k["Status"] for k in keys].count("Active") == 1
    roles = [r["Path"] for r in iam.list_roles()["Roles"]]
    assert sorted(roles) == ["/", "/iam-onboarding/"], (
        "the app's role and the logs role"
    )
    assert len(iam.list_instance_profiles()["InstanceProfiles"]) == 1
    assert len(_client(endpoint, "cloudtrail").describe_trails()["trailList"]) == 1
    _check_monitoring(endpoint)


def _check_monitoring(endpoint: str) -> None:
    kms = _client(endpoint, "kms")
    assert len(kms.list_keys()["Keys"]) == 1
    aliases = [a["AliasName"] for a in kms.list_aliases()["Aliases"]]
    assert aliases.count("alias/iam-onboarding-trail") == 1
    logs = _client(endpoint, "logs")
    assert len(logs.describe_log_groups()["logGroups"]) == 1
    assert len(logs.describe_metric_filters()["metricFilters"]) == 1
    assert len(_client(endpoint, "sns").list_topics()["Topics"]) == 1
    assert len(_client(endpoint, "cloudwatch").describe_alarms()["MetricAlarms"]) == 1
    assert len(_client(endpoint, "s3").list_buckets()["Buckets"]) == 2


def _check_history(folder: Path, endpoint: str) -> None:
    engine = create_engine(f"sqlite:///{folder / 'engine.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT user_name, to_state, outcome, detail, error_message FROM state_history ORDER BY id"
            )
        ).all()
        states = dict(
            conn.execute(text("SELECT user_name, state FROM onboardings")).all()
        )
    engine.dispose()
    assert states == {u["name"]: "Reviewed" for u in USERS}
    for user in USERS:
        entered = [
            r.to_state
            for r in rows
            if r.user_name == user["name"] and r.outcome == "ok"
        ]
        assert entered == STATES, f"{user['name']}: {entered}"
    dump = json.dumps([list(r) for r in rows])
    for secret in _secrets(folder, endpoint):
        assert secret not in dump


def _secrets(folder: Path, endpoint: str) -> list[str]:
    found = [
        json.loads(p.read_text())["seed"] for p in (folder / "secrets").glob("*.mfa")
    ]
    value = _client(endpoint, "secretsmanager").get_secret_value(
        SecretId="iam-onboarding/bot/access-key"
    )
    found.append(json.loads(value["SecretString"])["SecretAccessKey"])
    return found


def test_every_fault_point_recovers(
    endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    points = _points(endpoint, tmp_path / "record")
    assert any(p.startswith("before-commit:") for p in points)
    killed = 0
    for index, point in enumerate(points):
        folder = tmp_path / f"p{index}"
        path = _fresh(endpoint, folder)
        first = _run(path, IAM_ENGINE_FAULT=point)
        killed += first.returncode == -9
        for _ in range(MAX_RERUNS):
            again = _run(path)
            if again.returncode == 0:
                break
        assert again.returncode == 0, f"{point}: {again.stdout} {again.stderr}"
        _check_account(endpoint)
        _check_history(folder, endpoint)
    with capsys.disabled():
        print(f"\nkill matrix: {len(points)} fault points covered, {killed} kills")
    assert killed == len(points)
