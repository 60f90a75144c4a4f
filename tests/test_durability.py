"""Retries, persisted attempts, operator commands and two runners on one database."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from engine.__main__ import main
from engine.aws import build_clients
from engine.config import AwsConfig
from engine.store import CANCELLED, DONE, FAILED, PENDING, Store, open_store
from steps.base import Clients
from tests.conftest import moto_server_running, write_workflows
from tests.test_runner import STATES, make_runner

ERROR_XML = (
    "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
    "<Message>{message}</Message></Error><RequestId>r</RequestId></ErrorResponse>"
)


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Any:
        yield self._data


def inject_iam_errors(
    clients: Clients, code: str, rate: float, seed: int = 7, only: str | None = None
) -> list[str]:
    """Make IAM answer ``code`` (HTTP 400) to a share of calls; return the calls hit."""
    rng = random.Random(seed)
    hit: list[str] = []

    def answer(request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        if (only and operation != only) or rng.random() >= rate:
            return None
        hit.append(operation)
        request.url = "https://injected.invalid/"  # so that moto never acts on it
        body = ERROR_XML.format(code=code, message=f"injected {code}").encode()
        return AWSResponse(request.url, 400, {}, _Body(body))

    clients.iam.meta.events.register("before-send.iam", answer)
    return hit


@pytest.fixture
def few_retries(aws: Clients) -> Clients:
    """Clients on the same moto whose botocore retries give up after 2 attempts."""
    return build_clients(
        boto3.Session(region_name="us-east-1"),
        AwsConfig(max_attempts=2),
        endpoint=False,
    )


def _retry_block(max_attempts: int = 6) -> dict[str, Any]:
    return {
        "max_attempts": max_attempts,
        "base_delay_seconds": 0.0,
        "max_delay_seconds": 0.0,
    }


def _runner(
    tmp_path: Path,
    store: Store,
    clients: Clients,
    users: list[dict[str, Any]],
    retry: dict[str, Any],
) -> Any:
    runner = make_runner(tmp_path, store, clients, users)
    workflow = runner.loaded.config.workflows["standard"]
    patched = workflow.model_copy(
        update={"retry": workflow.retry.model_copy(update=retry)}
    )
    runner.loaded.config.workflows["standard"] = patched
    runner.sleep = lambda _seconds: None
    return runner


def test_a_fifth_of_calls_throttled_and_every_onboarding_still_finishes(
    tmp_path: Path, store: Store, few_retries: Clients
) -> None:
    hit = inject_iam_errors(few_retries, "Throttling", rate=0.2)
    users = [{"name": f"user{i}", "groups": ["readers"]} for i in range(4)] + [
        {"name": "bot", "mfa": "none", "programmatic_access": True}
    ]

    outcomes = _runner(tmp_path, store, few_retries, users, _retry_block(8)).run()

    assert len(hit) > 20
    assert [o.status for o in outcomes] == [DONE] * len(users)
    retried = [r for r in store.history() if r["outcome"] == "failed"]
    assert retried and all(
        r["error_code"] == "Throttling" and r["detail"]["transient"] for r in retried
    )


def test_a_permanent_error_stops_at_once_with_the_aws_code(
    tmp_path: Path, store: Store, few_retries: Clients
) -> None:
    inject_iam_errors(few_retries, "AccessDenied", rate=1.0, only="CreateUser")

    outcome = _runner(
        tmp_path, store, few_retries, [{"name": "alice"}], _retry_block()
    ).run()[0]

    onboarding = store.onboarding("alice")
    assert onboarding is not None and (onboarding.status, onboarding.attempts) == (
        FAILED,
        1,
    )
    assert outcome.error is not None and outcome.error.startswith(
        "AccessDenied: AWS CreateUser failed"
    )


def test_attempts_survive_a_restart_and_the_engine_gives_up(
    tmp_path: Path, store: Store, few_retries: Clients
) -> None:
    hit = inject_iam_errors(
        few_retries, "ServiceUnavailable", rate=1.0, only="CreateUser"
    )
    _runner(tmp_path, store, few_retries, [{"name": "alice"}], _retry_block(3)).run()
    calls = len(hit)

    outcome = _runner(
        tmp_path, store, few_retries, [{"name": "alice"}], _retry_block(3)
    ).run()[0]

    onboarding = store.onboarding("alice")
    assert onboarding is not None and onboarding.attempts == 3
    assert len(hit) == calls, "a run after giving up must not call AWS again"
    assert (
        outcome.error is not None
        and "gave up after 3 attempts" in outcome.error
        and "retry alice" in outcome.error
    )


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_operator_commands_are_recorded_with_actor_and_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    users = [
        {
            "name": "eve",
            "managed_policies": ["arn:aws:iam::aws:policy/PowerUserAccess"],
            "direct_policies": {"reason": "testing a refused direct grant"},
        }
    ]
    path = write_workflows(tmp_path, users=users)
    assert _cli(capsys, "run", str(path))[0] == 1

    assert (
        _cli(
            capsys,
            "cancel",
            "eve",
            "-f",
            str(path),
            "--reason",
            "offer withdrawn",
            "--actor",
            "hr",
        )[0]
        == 0
    )
    assert "Nothing to do" in _cli(capsys, "run", str(path))[1]
    code, out, _ = _cli(
        capsys, "retry", "eve", "-f", str(path), "--reason", "offer back on"
    )
    assert code == 0 and "now Created (pending)" in out
    code, out, _ = _cli(
        capsys, "reset", "eve", "--to", "New", "-f", str(path), "--reason", "start over"
    )
    assert code == 0

    code, out, _ = _cli(capsys, "history", "-f", str(path), "--format", "json")
    operator_rows = [
        (r["trigger"], r["actor"], r["detail"]["reason"], r["to_state"])
        for r in json.loads(out)
        if r["outcome"] == "operator"
    ]
    assert operator_rows[0] == ("cancel", "hr", "offer withdrawn", "Created")
    assert [row[0] for row in operator_rows] == ["cancel", "retry", "reset"]
    assert operator_rows[2][3] == "New"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["retry", "ghost", "--reason", "x"], "no onboarding for user ghost"),
        (["reset", "eve", "--to", "Monitored", "--reason", "x"], "only goes back"),
        (
            ["reset", "eve", "--to", "Reviewed", "--reason", "x"],
            "nothing would run after it; reset to Monitored",
        ),
        (
            ["reset", "eve", "--to", "Nowhere", "--reason", "x"],
            "not a state of workflow",
        ),
        (["retry", "eve"], "Missing option '--reason'"),
    ],
)
def test_operator_commands_refuse_what_does_not_apply(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    path = write_workflows(
        tmp_path,
        users=[
            {
                "name": "eve",
                "managed_policies": ["arn:aws:iam::aws:policy/PowerUserAccess"],
                "direct_policies": {"reason": "testing a refused direct grant"},
            }
        ],
    )
    _cli(capsys, "run", str(path))

    code, _, err = _cli(capsys, *args, "-f", str(path))

    assert code == 2 and message in err
    if not message.startswith("Missing"):
        assert err.count("\n") == 1


def test_cancel_and_retry_change_what_run_does(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    from engine import operator

    spec = make_runner(
        tmp_path, store, aws, [{"name": "alice"}]
    ).loaded.config.workflows["standard"]
    store.ensure_onboarding(
        "alice", "standard", spec.definition_hash(), spec.definition()
    )
    operator.cancel(store, "alice", "ops", "on hold")
    assert (
        make_runner(tmp_path, store, aws, [{"name": "alice"}]).run()[0].status
        == CANCELLED
    )

    after = operator.retry(store, "alice", "ops", "go")

    assert after.status == PENDING
    assert (
        make_runner(tmp_path, store, aws, [{"name": "alice"}]).run()[0].status == DONE
    )


def assert_each_state_entered_once(
    store_url: str, users: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Check every user entered each state exactly once, in order; return the rows."""
    store = open_store(store_url)
    rows = store.history()
    store.dispose()
    for user in users:
        entered = [
            r["to_state"]
            for r in rows
            if r["user_name"] == user["name"] and r["outcome"] == "ok"
        ]
        assert entered == STATES, (user["name"], entered)
    return rows


def _spawn(path: Path, db: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "run",
            str(path),
            "--db",
            db,
            "--quiet",
            "--format",
            "json",
        ],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_runners_on_one_database_make_each_transition_once(
    tmp_path: Path, store_url: str
) -> None:
    users = [{"name": f"user{i:02}", "mfa": "none"} for i in range(16)]
    with moto_server_running() as endpoint:
        path = write_workflows(
            tmp_path, users=users, aws={"sandbox": False, "endpoint_url": endpoint}
        )
        runners = [_spawn(path, store_url) for _ in range(2)]
        results = [runner.communicate(timeout=300) for runner in runners]
        final = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "run",
                str(path),
                "--db",
                store_url,
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    assert all(runner.returncode in (0, 1) for runner in runners), results
    assert final.returncode == 0, final.stderr
    rows = assert_each_state_entered_once(store_url, users)
    assert {r["outcome"] for r in rows} == {"ok"}


SHORT_STEPS = {
    "Created": "create_user",
    "LeastPrivilege": "least_privilege",
    "Reviewed": "cloudtrail",
}


def _parked(
    tmp_path: Path, store: Store, aws: Clients, states: list[str], at: str
) -> None:
    """Leave alice at ``at`` under a workflow of ``states``, as an earlier run would."""
    from sqlalchemy import text

    from engine.config import WorkflowConfig

    old = WorkflowConfig(
        states=states, steps={s: SHORT_STEPS.get(s, "mfa") for s in states}
    )
    found = store.ensure_onboarding(
        "alice", "standard", old.definition_hash(), old.definition()
    )
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE onboardings SET state = :s, status = 'running' WHERE id = :i"),
            {"s": at, "i": found.id},
        )


def _runner_with(
    tmp_path: Path, store: Store, aws: Clients, states: list[str], adopt: bool = False
) -> Any:
    runner = make_runner(tmp_path, store, aws, [{"name": "alice"}])
    steps = {s: SHORT_STEPS.get(s, "mfa") for s in states}
    runner.loaded.config.workflows["standard"] = runner.loaded.config.workflows[
        "standard"
    ].model_copy(update={"states": states, "steps": steps})
    from engine.machine import WorkflowMachine

    runner.machines["standard"] = WorkflowMachine(
        "standard", runner.loaded.config.workflows["standard"]
    )
    runner.adopt_definitions = adopt
    return runner


def test_a_definition_change_ahead_of_an_onboarding_is_not_guessed(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    _parked(
        tmp_path, store, aws, ["Created", "LeastPrivilege", "Reviewed"], at="Created"
    )
    aws.iam.create_user(
        UserName="alice",
        Tags=[{"Key": "onboarded-by", "Value": "iam-onboarding-engine"}],
    )

    outcome = _runner_with(
        tmp_path, store, aws, ["Created", "MFA", "LeastPrivilege", "Reviewed"]
    ).run()[0]

    assert (
        outcome.status == FAILED
        and "were LeastPrivilege -> Reviewed, now MFA -> LeastPrivilege -> Reviewed"
        in (outcome.error or "")
    )
    assert "--adopt-definition" in (outcome.error or "")
    assert store.history(user="alice") == []

    adopted = _runner_with(
        tmp_path,
        store,
        aws,
        ["Created", "MFA", "LeastPrivilege", "Reviewed"],
        adopt=True,
    ).run()[0]

    assert adopted.status == DONE and adopted.entered == [
        "MFA",
        "LeastPrivilege",
        "Reviewed",
    ]
    change = store.history(user="alice")[0]
    assert (change["trigger"], change["outcome"], change["detail"]["reason"]) == (
        "definition-changed",
        "operator",
        "adopted with --adopt-definition",
    )


def test_a_change_behind_an_onboarding_is_adopted_and_recorded(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    _parked(
        tmp_path,
        store,
        aws,
        ["Created", "LeastPrivilege", "Reviewed"],
        at="LeastPrivilege",
    )
    aws.iam.create_user(
        UserName="alice",
        Tags=[{"Key": "onboarded-by", "Value": "iam-onboarding-engine"}],
    )

    outcome = _runner_with(
        tmp_path, store, aws, ["MFA", "Created", "LeastPrivilege", "Reviewed"]
    ).run()[0]

    assert outcome.status == DONE and outcome.entered == ["Reviewed"]
    assert (
        store.history(user="alice")[0]["detail"]["reason"]
        == "remaining states unchanged"
    )


def test_a_removed_state_needs_a_reset(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    from engine import operator

    _parked(
        tmp_path,
        store,
        aws,
        ["Created", "LeastPrivilege", "Reviewed"],
        at="LeastPrivilege",
    )
    runner = _runner_with(tmp_path, store, aws, ["Created", "Reviewed"], adopt=True)

    outcome = runner.run()[0]
    assert outcome.status == FAILED and "no longer in workflow standard" in (
        outcome.error or ""
    )

    operator.reset(
        store,
        "alice",
        "New",
        runner.loaded.config.workflows["standard"],
        "ops",
        "new definition",
    )
    again = _runner_with(tmp_path, store, aws, ["Created", "Reviewed"]).run()[0]

    assert again.status == DONE and again.entered == ["Created", "Reviewed"]


def test_the_lease_is_renewed_while_a_long_step_runs(
    tmp_path: Path, store: Store, aws: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time
    from datetime import timedelta

    from engine import runner as runner_module
    from steps import REGISTRY, created

    monkeypatch.setattr(runner_module, "LEASE", timedelta(seconds=0.3))
    seen: list[bool] = []

    def slow_create(ctx: Any) -> dict[str, Any]:
        time.sleep(0.9)  # three lease lengths
        onboarding = store.onboarding("alice")
        assert onboarding is not None
        taken = store.claim(onboarding.id, "intruder", timedelta(seconds=5))
        seen.append(taken is not None)
        return created.run(ctx)

    monkeypatch.setitem(REGISTRY, "create_user", slow_create)

    outcome = make_runner(tmp_path, store, aws, [{"name": "alice"}]).run()[0]

    assert seen == [False] and outcome.status == DONE


@pytest.mark.slow
def test_workers_drive_users_in_parallel_each_transition_once(
    tmp_path: Path, store_url: str
) -> None:
    users = [{"name": f"user{i:02}", "groups": ["readers"]} for i in range(12)]
    users.append({"name": "bot", "mfa": "none", "programmatic_access": True})
    with moto_server_running() as endpoint:
        path = write_workflows(
            tmp_path, users=users, aws={"sandbox": False, "endpoint_url": endpoint}
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "run",
                str(path),
                "--db",
                store_url,
                "--workers",
                "4",
                "--quiet",
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        trails = boto3.client(
            "cloudtrail", endpoint_url=endpoint, region_name="us-east-1"
        ).describe_trails()["trailList"]

    assert done.returncode == 0, done.stderr
    assert [item["user"] for item in json.loads(done.stdout)] == [
        u["name"] for u in users
    ]
    assert len(trails) == 1
    assert_each_state_entered_once(store_url, users)
