"""The runner on every store: full runs, failures, resume and the secret guarantee."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from sqlalchemy import text

from engine.aws import AwsTarget
from engine.config import DEFAULT_STATES
from engine.runner import Runner
from engine.secrets import Redactor, SecretSink
from engine.store import DONE, FAILED, START_STATE, Store
from steps.base import AccountFacts, Clients
from tests.conftest import load_file, write_workflows

STATES = DEFAULT_STATES
USERS: list[dict[str, Any]] = [
    {"name": "alice", "groups": ["readers"]},
    {"name": "bot", "mfa": "none", "programmatic_access": True},
    {
        "name": "app",
        "mfa": "none",
        "service_role": {"service": "ec2.amazonaws.com"},
    },
]


class CrashAfter:
    """An AWS client that raises once, right after ``operation`` has taken effect."""

    def __init__(
        self, inner: Any, operation: str, code: str = "ServiceUnavailable"
    ) -> None:
        self._inner = inner
        self._operation = operation
        self._code = code
        self.crashed = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._inner, name)
        if name != self._operation or self.crashed:
            return real

        def crash_after(**kwargs: Any) -> Any:
            real(**kwargs)
            self.crashed = True
            error = {"Error": {"Code": self._code, "Message": "connection lost"}}
            raise ClientError(error, self._operation)  # type: ignore[arg-type]

        return crash_after


def make_runner(
    folder: Path, store: Store, clients: Clients, users: list[dict[str, Any]] = USERS
) -> Runner:
    loaded = load_file(write_workflows(folder, users=users))
    account = AccountFacts(clients.sts.get_caller_identity()["Account"], "us-east-1")
    target = AwsTarget(clients, account, "in-process moto")
    secrets = SecretSink(folder / "secrets", "test/", Redactor())
    runner = Runner(loaded, store, target, secrets)
    runner.sleep = lambda _seconds: None
    return runner


def test_a_full_run_takes_every_user_to_reviewed(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    outcomes = make_runner(tmp_path, store, aws).run()

    assert [(o.user, o.state, o.status) for o in outcomes] == [
        (u["name"], "Reviewed", DONE) for u in USERS
    ]
    for user in USERS:
        rows = store.history(user=user["name"])
        chain = [(r["from_state"], r["to_state"]) for r in rows]
        assert chain == list(zip([START_STATE, *STATES], STATES, strict=False))
        assert all(
            r["outcome"] == "ok" and r["finished_at"] >= r["started_at"] for r in rows
        )


def test_a_second_run_changes_nothing(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    make_runner(tmp_path, store, aws).run()
    before = len(store.history())

    outcomes = make_runner(tmp_path, store, aws).run()

    assert all(o.entered == [] and o.status == DONE for o in outcomes)
    assert len(store.history()) == before


def test_one_user_failing_does_not_stop_the_others(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    users = [
        {
            "name": "eve",
            "managed_policies": ["arn:aws:iam::aws:policy/PowerUserAccess"],
            "direct_policies": {"reason": "testing a refused direct grant"},
        },
        *USERS,
    ]

    outcomes = {o.user: o for o in make_runner(tmp_path, store, aws, users).run()}

    eve = store.onboarding("eve")
    failed = store.history(user="eve")[-1]
    assert eve is not None and (eve.state, eve.status, eve.attempts) == (
        "Created",
        FAILED,
        1,
    )
    assert (failed["to_state"], failed["outcome"], failed["error_code"]) == (
        "LeastPrivilege",
        "failed",
        "PolicyRefused",
    )
    assert "allow_admin" in (outcomes["eve"].error or "")
    assert all(outcomes[u["name"]].status == DONE for u in USERS)


def _assert_one_stored_active_key(aws: Clients) -> None:
    keys = aws.iam.list_access_keys(UserName="bot")["AccessKeyMetadata"]
    stored = json.loads(
        aws.secretsmanager.get_secret_value(SecretId="test/bot/access-key")[
            "SecretString"
        ]
    )
    assert [k["AccessKeyId"] for k in keys if k["Status"] == "Active"] == [
        stored["AccessKeyId"]
    ]
    assert len(keys) <= 2


def test_a_transient_failure_inside_a_step_is_retried_in_the_same_run(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    crashing = CrashAfter(aws.iam, "create_access_key")

    outcomes = {
        o.user: o
        for o in make_runner(tmp_path, store, replace(aws, iam=crashing)).run()
    }

    assert crashing.crashed and outcomes["bot"].status == DONE
    _assert_one_stored_active_key(aws)
    assert [r["outcome"] for r in store.history(user="bot", state="Rotated")] == [
        "failed",
        "ok",
    ]


def test_a_failure_inside_a_step_resumes_on_the_next_run_without_duplicates(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    crashing = CrashAfter(aws.iam, "create_access_key", code="AccessDenied")
    first = make_runner(tmp_path, store, replace(aws, iam=crashing)).run()
    bot = next(o for o in first if o.user == "bot")
    assert crashing.crashed and (bot.state, bot.status) == ("Role", FAILED)

    second = {o.user: o for o in make_runner(tmp_path, store, aws).run()}

    assert second["bot"].status == DONE and second["bot"].entered[0] == "Rotated"
    _assert_one_stored_active_key(aws)
    assert [r["outcome"] for r in store.history(user="bot", state="Rotated")] == [
        "failed",
        "ok",
    ]


def test_an_mfa_step_cut_after_creating_the_device_resumes_with_one_device(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    crashing = CrashAfter(aws.iam, "create_virtual_mfa_device", code="AccessDenied")
    make_runner(tmp_path, store, replace(aws, iam=crashing), USERS[:1]).run()

    outcomes = make_runner(tmp_path, store, aws, USERS[:1]).run()

    assert outcomes[0].status == DONE
    assert len(aws.iam.list_virtual_mfa_devices()["VirtualMFADevices"]) == 1
    assert len(aws.iam.list_mfa_devices(UserName="alice")["MFADevices"]) == 1


def test_a_step_left_in_doubt_is_reconciled_and_says_so(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    runner = make_runner(tmp_path, store, aws, USERS[:1])
    spec = runner.loaded.config.workflows["standard"]
    onboarding = store.ensure_onboarding(
        "alice", "standard", spec.definition_hash(), spec.definition()
    )
    aws.iam.create_user(
        UserName="alice",
        Tags=[{"Key": "onboarded-by", "Value": "iam-onboarding-engine"}],
    )
    store.mark_started(
        onboarding, "Created", timedelta(seconds=-1)
    )  # the process died after this, mid-step

    runner.run()

    created = store.history(user="alice", state="Created")
    assert len(created) == 1
    assert created[0]["detail"]["action"] == "adopted"
    assert created[0]["detail"]["reconciled_interrupted_attempt"] is True


def test_a_state_removed_from_the_definition_is_not_guessed(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    onboarding = store.ensure_onboarding("alice", "standard", "old")
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE onboardings SET state = 'Vetted' WHERE id = :i"),
            {"i": onboarding.id},
        )

    outcome = make_runner(tmp_path, store, aws, USERS[:1]).run()[0]

    assert outcome.status == FAILED and "no longer in workflow standard" in (
        outcome.error or ""
    )


def test_no_secret_reaches_the_database(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    runner = make_runner(tmp_path, store, aws)
    runner.run()

    secrets = [
        json.loads(p.read_text())["seed"] for p in (tmp_path / "secrets").glob("*.mfa")
    ]
    stored = aws.secretsmanager.get_secret_value(SecretId="test/bot/access-key")[
        "SecretString"
    ]
    secrets.append(json.loads(stored)["SecretAccessKey"])
    with store.engine.connect() as conn:
        dump = " ".join(
            str(row)
            for table in ("onboardings", "state_history")
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        )
    assert len(secrets) == 2 and all(secret not in dump for secret in secrets)


def test_a_detail_carrying_a_secret_is_withheld(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    runner = make_runner(tmp_path, store, aws, USERS[:1])
    runner.secrets.redactor.remember("s3cr3t-value")

    withheld = runner._safe_detail({"leak": "s3cr3t-value"})

    assert withheld == {"withheld": "the step's detail carried a secret value"}
