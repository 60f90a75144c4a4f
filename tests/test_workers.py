"""Workers sharing one database: claims, leases and each transition once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.store import DONE, Store
from steps.base import Clients
from tests.conftest import moto_server_running, write_workflows
from tests.test_durability import assert_each_state_entered_once
from tests.test_runner import make_runner

WORKER_COUNT = 4
USER_COUNT = 200


def _worker(path: Path, db: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "engine", "worker", str(path), "--db", db]
    return subprocess.Popen(
        [*command, "--quiet", "--format", "json"],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_claim_next_takes_each_unleased_onboarding_in_order(store: Store) -> None:
    for name in ("a", "b", "c"):
        store.ensure_onboarding(name, "standard", "h")
    first = store.claim_next("w1", timedelta(minutes=1), ["standard"])
    second = store.claim_next("w2", timedelta(minutes=1), ["standard"])
    assert first is not None and second is not None
    assert (first.user_name, second.user_name) == ("a", "b")

    store.release(first.id, "w1")
    again = store.claim_next("w3", timedelta(minutes=1), ["standard"])

    assert again is not None and again.user_name == "a"
    assert store.claim_next("w3", timedelta(minutes=1), ["other"]) is None


def test_claim_next_takes_over_an_expired_lease(store: Store) -> None:
    store.ensure_onboarding("a", "standard", "h")
    store.claim_next("dead", timedelta(seconds=-1), ["standard"])

    taken = store.claim_next("alive", timedelta(minutes=1), ["standard"])

    assert taken is not None and store.lease_owner(taken.id) == "alive"


def test_claim_next_passes_over_done_onboardings(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    runner = make_runner(tmp_path, store, aws, [{"name": "alice"}])
    assert runner.run()[0].status == DONE

    assert store.claim_next("w", timedelta(minutes=1), ["standard"]) is None


@pytest.mark.slow
def test_four_workers_on_two_hundred_users_make_each_transition_once(
    tmp_path: Path, store_url: str
) -> None:
    users = [{"name": f"user{i:03}", "groups": ["readers"]} for i in range(USER_COUNT)]
    with moto_server_running() as endpoint:
        path = write_workflows(
            tmp_path, users=users, aws={"sandbox": False, "endpoint_url": endpoint}
        )
        workers = [_worker(path, store_url) for _ in range(WORKER_COUNT)]
        results = [worker.communicate(timeout=900) for worker in workers]

    assert [w.returncode for w in workers] == [0] * WORKER_COUNT, results
    drove = [[item["user"] for item in json.loads(out)] for out, _ in results]
    everyone = sorted(name for names in drove for name in names)
    assert everyone == [u["name"] for u in users]
    assert sum(1 for names in drove if names) >= 2, "the work was not shared"
    rows = assert_each_state_entered_once(store_url, users)
    assert {r["outcome"] for r in rows} == {"ok"}
    _print_share(drove)


def _print_share(drove: list[list[Any]]) -> None:
    shares = ", ".join(str(len(names)) for names in drove)
    print(f"four workers drove {shares} onboardings")
