"""The store on every database: migrations, the atomic transition write, leases."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, text

from engine.errors import StepError, StoreError
from engine.leases import AccountLocks
from engine.store import (
    DONE,
    FAILED,
    RUNNING,
    START_STATE,
    Store,
    Transition,
    downgrade,
    open_store,
    upgrade,
)


def _transition(
    store: Store, user: str, to: str, outcome: str = "ok", **kw: object
) -> Transition:
    current = store.onboarding(user)
    assert current is not None
    now = datetime.now(UTC).replace(tzinfo=None)
    return Transition(current, to, "advance", "tester", now, outcome, {"k": 1}, **kw)  # type: ignore[arg-type]


def test_migrations_go_to_head_back_to_base_and_up_again(store_url: str) -> None:
    store = open_store(store_url)
    tables = set(inspect(store.engine).get_table_names())
    assert {
        "onboardings",
        "state_history",
        "account_locks",
        "alembic_version",
    } <= tables

    downgrade(store, "base")
    assert not {"onboardings", "state_history", "account_locks"} & set(
        inspect(store.engine).get_table_names()
    )

    upgrade(store)
    assert {"onboardings", "state_history"} <= set(
        inspect(store.engine).get_table_names()
    )
    store.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path: object) -> None:
    store = open_store(f"sqlite:///{tmp_path}/wal.db")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    store.dispose()


def test_ensure_onboarding_creates_once(store: Store) -> None:
    first = store.ensure_onboarding("alice", "standard", "h1")
    second = store.ensure_onboarding("alice", "standard", "h1")

    assert first.id == second.id and first.state == START_STATE
    assert len(store.all_onboardings()) == 1


def test_a_transition_writes_state_and_history_together(store: Store) -> None:
    store.ensure_onboarding("alice", "standard", "h1")

    after = store.record(_transition(store, "alice", "Created"), RUNNING)

    rows = store.history(user="alice")
    assert after.state == "Created" and after.status == RUNNING
    assert [(r["from_state"], r["to_state"], r["outcome"]) for r in rows] == [
        (START_STATE, "Created", "ok")
    ]
    assert rows[0]["detail"] == {"k": 1} and rows[0]["started_at"].endswith("Z")


def test_a_failed_history_insert_leaves_the_state_unchanged(store: Store) -> None:
    store.ensure_onboarding("alice", "standard", "h1")
    broken = _transition(store, "alice", "Created")
    broken = Transition(
        broken.onboarding, "Created", None, "t", broken.started_at, "ok", {}
    )  # type: ignore[arg-type]

    with pytest.raises(Exception):  # noqa: B017 - the database's own error, by kind
        store.record(broken, RUNNING)

    current = store.onboarding("alice")
    assert current is not None and current.state == START_STATE and current.version == 0
    assert store.history(user="alice") == []


def test_a_stale_version_writes_neither_row(store: Store) -> None:
    store.ensure_onboarding("alice", "standard", "h1")
    stale = _transition(store, "alice", "Created")
    store.record(_transition(store, "alice", "Created"), RUNNING)

    with pytest.raises(StoreError, match="changed by another process"):
        store.record(stale, RUNNING)

    assert len(store.history(user="alice")) == 1


def test_a_failure_records_the_error_and_counts_the_attempt(store: Store) -> None:
    store.ensure_onboarding("alice", "standard", "h1")

    after = store.record(
        _transition(
            store,
            "alice",
            "Created",
            "failed",
            error_code="AccessDenied",
            error_message="no",
        ),
        FAILED,
    )

    row = store.history(user="alice")[0]
    assert (after.state, after.status, after.attempts) == (START_STATE, FAILED, 1)
    assert (after.last_error_code, row["error_code"], row["error_message"]) == (
        "AccessDenied",
        "AccessDenied",
        "no",
    )


def test_history_filters_by_user_and_state(store: Store) -> None:
    for user in ("alice", "bob"):
        store.ensure_onboarding(user, "standard", "h1")
        store.record(_transition(store, user, "Created"), RUNNING)
        store.record(_transition(store, user, "MFA"), DONE)

    assert [r["user_name"] for r in store.history(state="MFA")] == ["alice", "bob"]
    assert [r["to_state"] for r in store.history(user="bob")] == ["Created", "MFA"]


def test_a_live_lease_keeps_other_owners_out_until_it_expires(store: Store) -> None:
    onboarding = store.ensure_onboarding("alice", "standard", "h1")

    assert store.claim(onboarding.id, "one", timedelta(minutes=5))
    assert not store.claim(onboarding.id, "two", timedelta(minutes=5))
    assert store.claim(onboarding.id, "one", timedelta(minutes=5))
    store.claim(onboarding.id, "one", timedelta(seconds=-1))
    assert store.claim(onboarding.id, "two", timedelta(minutes=5))


def test_an_account_lock_keeps_other_owners_out_until_released_or_expired(
    store: Store,
) -> None:
    minutes = timedelta(minutes=5)

    assert store.take_account_lock("acct/trail", "one", minutes) is None
    assert store.take_account_lock("acct/trail", "two", minutes) == "one"
    assert store.take_account_lock("acct/other", "two", minutes) is None
    store.release_account_lock("acct/trail", "two")
    assert store.take_account_lock("acct/trail", "two", minutes) == "one"
    store.release_account_lock("acct/trail", "one")
    assert store.take_account_lock("acct/trail", "two", timedelta(seconds=-1)) is None
    assert store.take_account_lock("acct/trail", "one", minutes) is None


def test_an_account_lock_waits_for_its_holder_then_gives_up(store: Store) -> None:
    minutes = timedelta(minutes=5)
    store.take_account_lock("acct/trail", "other-host:1:x", minutes)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            store.release_account_lock("acct/trail", "other-host:1:x")

    with AccountLocks(store, "me", minutes, sleep=sleep).hold("acct/trail"):
        assert store.take_account_lock("acct/trail", "third", minutes) == "me"
    assert len(waits) == 3
    assert store.take_account_lock("acct/trail", "third", minutes) is None

    stuck = AccountLocks(store, "me", timedelta(seconds=0.01), sleep=time.sleep)
    with pytest.raises(StepError, match="still held by third"):
        with stuck.hold("acct/trail"):
            pass


def test_an_account_lock_left_by_a_dead_local_process_is_taken_at_once(
    store: Store,
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = f"{socket.gethostname()}:{child.stdout.strip()}:gone"
    store.take_account_lock("acct/trail", dead, timedelta(minutes=5))
    waits: list[float] = []

    with AccountLocks(store, "me", timedelta(minutes=5), sleep=waits.append).hold(
        "acct/trail"
    ):
        assert store.take_account_lock("acct/trail", "third", timedelta(1)) == "me"
    assert waits == []


def test_an_unreachable_database_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot"):
        open_store("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")


def test_a_malformed_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        open_store("nonsense://")
