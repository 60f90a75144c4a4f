"""The state store: tables, the one-transaction transition write, leases, queries.

Every change of an onboarding's state is written together with its history
row in a single transaction, so the two can never disagree. The history is
append-only: nothing here updates or deletes a history row.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    IntegrityError,
    NoSuchModuleError,
    SQLAlchemyError,
)

from engine.errors import StoreError, StoreUrlError

log = logging.getLogger(__name__)

DB_ENV = "IAM_ENGINE_DB"

metadata = MetaData()

onboardings = Table(
    "onboardings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_name", String(64), nullable=False, unique=True),
    Column("workflow", String(128), nullable=False),
    Column("definition_hash", String(16), nullable=False),
    Column("definition", Text),
    Column("state", String(64), nullable=False),
    Column("pending_state", String(64)),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error_code", String(128)),
    Column("last_error", Text),
    Column("version", Integer, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", DateTime),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

history = Table(
    "state_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("onboarding_id", Integer, ForeignKey("onboardings.id"), nullable=False),
    Column("user_name", String(64), nullable=False),
    Column("workflow", String(128), nullable=False),
    Column("from_state", String(64), nullable=False),
    Column("to_state", String(64), nullable=False),
    Column("trigger", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("error_code", String(128)),
    Column("error_message", Text),
    Column("detail", Text, nullable=False),
)

account_locks = Table(
    "account_locks",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("expires_at", DateTime, nullable=False),
)

START_STATE = "New"
# Any constant will do, as long as every engine process uses the same one.
MIGRATION_LOCK_KEY = 7_340_021
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
CANCELLED = "cancelled"
OPERATOR = "operator"
# A step waits for its user (self-service MFA): no failure, no attempt counted.
AWAITING_MFA, WAITING = "awaiting_mfa", "waiting"


def utcnow() -> datetime:
    """Return the current UTC time without tzinfo, as the tables store it."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Onboarding:
    """One row of the onboardings table."""

    id: int
    user_name: str
    workflow: str
    definition_hash: str
    definition: str | None
    state: str
    pending_state: str | None
    status: str
    attempts: int
    last_error_code: str | None
    last_error: str | None
    version: int
    updated_at: datetime


@dataclass(frozen=True)
class NewOnboarding:
    """What an onboarding starts with: its user and the workflow definition."""

    user: str
    workflow: str
    definition_hash: str
    definition: str | None = None


@dataclass(frozen=True)
class Transition:
    """What one attempt to enter a state produced, ready to be written."""

    onboarding: Onboarding
    to_state: str
    trigger: str
    actor: str
    started_at: datetime
    outcome: str
    detail: dict[str, Any]
    error_code: str | None = None
    error_message: str | None = None


class Store:
    """The engine's database: one SQLAlchemy engine, short transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def url(self) -> str:
        """Return the database URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def ensure_onboarding(
        self,
        user: str,
        workflow: str,
        definition_hash: str,
        definition: str | None = None,
    ) -> Onboarding:
        """Return the user's onboarding, creating it in the start state when missing."""
        wanted = NewOnboarding(user, workflow, definition_hash, definition)
        with self._begin() as conn:
            found = self._find(conn, user)
            if found is not None:
                return found
            _insert_new(conn, wanted, utcnow())
            found = self._find(conn, user)
        assert found is not None
        return found

    def ensure_onboardings(self, wanted: list[NewOnboarding]) -> dict[str, Onboarding]:
        """Return every onboarding by user name, creating the missing in one commit."""
        now = utcnow()
        with self._begin() as conn:
            names = select(onboardings.c.user_name)
            known = set(conn.execute(names).scalars())
            for item in wanted:
                if item.user not in known:
                    _insert_new(conn, item, now)
            rows = conn.execute(select(onboardings).order_by(onboardings.c.id))
            return {row.user_name: _onboarding(row._mapping) for row in rows}

    def claim(
        self,
        onboarding_id: int,
        owner: str,
        ttl: timedelta,
        replacing: str | None = None,
    ) -> Onboarding | None:
        """Take the lease unless another owner (other than ``replacing``) holds it.

        Returns the row as it is under the new lease, or None when not taken.
        """
        now = utcnow()
        claimable = or_(
            onboardings.c.lease_owner.is_(None),
            onboardings.c.lease_owner == owner,
            onboardings.c.lease_owner == replacing,
            onboardings.c.lease_expires_at < now,
        )
        statement = (
            update(onboardings)
            .where(onboardings.c.id == onboarding_id, claimable)
            .values(lease_owner=owner, lease_expires_at=now + ttl)
            .returning(*onboardings.c)
        )
        with self._begin() as conn:
            row = conn.execute(statement).first()
        return _onboarding(row._mapping) if row is not None else None

    def claim_next(
        self, owner: str, ttl: timedelta, workflows: list[str], after: int = 0
    ) -> Onboarding | None:
        """Lease the first unsettled, unleased onboarding with an id above ``after``.

        On PostgreSQL the candidate row is locked with FOR UPDATE SKIP LOCKED, so
        workers on several machines each take a different one without waiting.
        """
        while True:
            with self._begin() as conn:
                row = conn.execute(_next_claimable(workflows, after)).first()
                if row is None:
                    return None
                taken = conn.execute(_take_lease(row.id, owner, ttl)).first()
            if taken is not None:
                return _onboarding(taken._mapping)
            # Another worker took it between our read and our write (SQLite only).
            after = row.id

    def release(self, onboarding_id: int, owner: str) -> None:
        """Give the lease back."""
        statement = (
            update(onboardings)
            .where(
                onboardings.c.id == onboarding_id, onboardings.c.lease_owner == owner
            )
            .values(lease_owner=None, lease_expires_at=None)
        )
        with self._begin() as conn:
            conn.execute(statement)

    def lease_owner(self, onboarding_id: int) -> str | None:
        """Return who holds the lease on an onboarding, if anyone."""
        query = select(onboardings.c.lease_owner).where(
            onboardings.c.id == onboarding_id
        )
        with self.engine.connect() as conn:
            owner: str | None = conn.execute(query).scalar()
        return owner

    def live_lease(self, onboarding_id: int) -> str | None:
        """Return the owner of an unexpired lease on an onboarding, if any."""
        query = select(onboardings.c.lease_owner).where(
            onboardings.c.id == onboarding_id,
            onboardings.c.lease_owner.is_not(None),
            onboardings.c.lease_expires_at >= utcnow(),
        )
        with self.engine.connect() as conn:
            owner: str | None = conn.execute(query).scalar()
        return owner

    def mark_started(
        self, current: Onboarding, to_state: str, lease: timedelta
    ) -> Onboarding:
        """Persist that a step toward ``to_state`` is to call AWS; renew the lease."""
        now = utcnow()
        values = {
            "pending_state": to_state,
            "status": RUNNING,
            "updated_at": now,
            "lease_expires_at": now + lease,
        }
        with self._begin() as conn:
            return self._bump(conn, current, values)

    def record(
        self, transition: Transition, status: str, also: dict[str, Any] | None = None
    ) -> Onboarding:
        """Write a history row and the onboarding's new state in one transaction.

        ``also`` sets further onboarding columns in the same transaction.
        """
        finished = utcnow()
        change = {**_onboarding_change(transition, finished, status), **(also or {})}
        with self._begin() as conn:
            conn.execute(insert(history), _history_row(transition, finished))
            return self._bump(conn, transition.onboarding, change)

    def onboarding(self, user: str) -> Onboarding | None:
        """Return one user's onboarding (the name's case does not matter), or None."""
        with self.engine.connect() as conn:
            return self._find(conn, self._exact_name(conn, user))

    def all_onboardings(self) -> list[Onboarding]:
        """Return every onboarding, oldest first (the file's order on a first run)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(onboardings).order_by(onboardings.c.id))
            return [_onboarding(row._mapping) for row in rows]

    def history(
        self,
        user: str | None = None,
        state: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Return history rows, oldest first, filtered by user, state entered, time."""
        query = select(history).order_by(history.c.id)
        if state is not None:
            query = query.where(history.c.to_state == state)
        if since is not None:
            query = query.where(history.c.started_at >= since)
        if until is not None:
            query = query.where(history.c.started_at < until)
        with self.engine.connect() as conn:
            if user is not None:
                query = query.where(history.c.user_name == self._exact_name(conn, user))
            return [_history_dict(row._mapping) for row in conn.execute(query)]

    def _exact_name(self, conn: Connection, user: str) -> str:
        # IAM names ignore case; find the spelling stored, then use the index.
        names = select(onboardings.c.user_name)
        if conn.execute(names.where(onboardings.c.user_name == user)).first():
            return user
        lowered = func.lower(onboardings.c.user_name) == user.lower()
        found = conn.execute(names.where(lowered)).scalar()
        return str(found) if found is not None else user

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def _begin(self) -> Any:
        return _translated(self.engine.begin())

    def _find(self, conn: Connection, user: str) -> Onboarding | None:
        row = conn.execute(
            select(onboardings).where(onboardings.c.user_name == user)
        ).first()
        return _onboarding(row._mapping) if row is not None else None

    def _bump(
        self, conn: Connection, current: Onboarding, values: dict[str, Any]
    ) -> Onboarding:
        params = {**values, "version": current.version + 1}
        params.update(_id=current.id, _version=current.version)
        row = conn.execute(_versioned_update(tuple(sorted(values))), params).first()
        if row is None:
            raise StoreError(
                f"onboarding of {current.user_name} was changed by another process "
                "while this one worked on it; run again to continue from its state"
            )
        return _onboarding(row._mapping)

    def renew_leases(self, owner: str, ttl: timedelta) -> int:
        """Extend every lease and account lock ``owner`` holds; return the leases."""
        expiry = utcnow() + ttl
        statement = (
            update(onboardings)
            .where(onboardings.c.lease_owner == owner)
            .values(lease_expires_at=expiry)
        )
        locks = (
            update(account_locks)
            .where(account_locks.c.owner == owner)
            .values(expires_at=expiry)
        )
        with self._begin() as conn:
            renewed: int = conn.execute(statement).rowcount
            conn.execute(locks)
        return renewed

    def take_account_lock(
        self, name: str, owner: str, ttl: timedelta, replacing: str | None = None
    ) -> str | None:
        """Take the account-wide lock ``name``; return None, or who holds it instead."""
        now = utcnow()
        try:
            with self._begin() as conn:
                conn.execute(
                    insert(account_locks),
                    {"name": name, "owner": owner, "expires_at": now + ttl},
                )
            return None
        except IntegrityError:
            pass
        takeable = or_(
            account_locks.c.owner.in_([owner, replacing or owner]),
            account_locks.c.expires_at < now,
        )
        statement = (
            update(account_locks)
            .where(account_locks.c.name == name, takeable)
            .values(owner=owner, expires_at=now + ttl)
        )
        holder = select(account_locks.c.owner).where(account_locks.c.name == name)
        with self._begin() as conn:
            if conn.execute(statement).rowcount == 1:
                return None
            other: str | None = conn.execute(holder).scalar()
        return other or ""

    def release_account_lock(self, name: str, owner: str) -> None:
        """Give an account-wide lock back, if ``owner`` still holds it."""
        statement = delete(account_locks).where(
            account_locks.c.name == name, account_locks.c.owner == owner
        )
        with self._begin() as conn:
            conn.execute(statement)


def _insert_new(conn: Connection, wanted: NewOnboarding, now: datetime) -> None:
    """Insert an onboarding in the start state; another worker may have won."""
    row = {
        "user_name": wanted.user,
        "workflow": wanted.workflow,
        "definition_hash": wanted.definition_hash,
        "definition": wanted.definition,
        "state": START_STATE,
        "status": PENDING,
        "attempts": 0,
        "version": 0,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with conn.begin_nested():
            conn.execute(insert(onboardings).values(**row))
    except IntegrityError:
        log.debug("onboarding of %s was created by another worker", wanted.user)


@functools.cache
def _versioned_update(columns: tuple[str, ...]) -> Any:
    """Return the compare-and-set update of ``columns``, built once per column set."""
    assignments: dict[str, Any] = {n: bindparam(n) for n in (*columns, "version")}
    return (
        update(onboardings)
        .where(
            onboardings.c.id == bindparam("_id"),
            onboardings.c.version == bindparam("_version"),
        )
        .values(assignments)
        .returning(*onboardings.c)
    )


def _unleased(now: datetime) -> Any:
    return or_(
        onboardings.c.lease_owner.is_(None), onboardings.c.lease_expires_at < now
    )


def _next_claimable(workflows: list[str], after: int) -> Any:
    """Select the next onboarding a worker may take, skipping rows others lock."""
    return (
        select(onboardings.c.id)
        .where(
            onboardings.c.id > after,
            onboardings.c.workflow.in_(workflows),
            onboardings.c.status.not_in((DONE, CANCELLED)),
            _unleased(utcnow()),
        )
        .order_by(onboardings.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def _take_lease(onboarding_id: int, owner: str, ttl: timedelta) -> Any:
    now = utcnow()
    return (
        update(onboardings)
        .where(onboardings.c.id == onboarding_id, _unleased(now))
        .values(lease_owner=owner, lease_expires_at=now + ttl)
        .returning(*onboardings.c)
    )


class _translated:
    """Wrap a transaction so database failures surface as StoreError."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def __enter__(self) -> Connection:
        try:
            conn: Connection = self._context.__enter__()
        except DatabaseError as err:
            raise StoreError(f"cannot reach the database: {_short(err)}") from err
        return conn

    def __exit__(self, *exc: Any) -> bool:
        try:
            return bool(self._context.__exit__(*exc))
        except DatabaseError as err:
            raise StoreError(f"the database refused a write: {_short(err)}") from err


def _short(err: SQLAlchemyError) -> str:
    return str(getattr(err, "orig", err)).splitlines()[0]


def _history_row(transition: Transition, finished: datetime) -> dict[str, Any]:
    current = transition.onboarding
    return {
        "onboarding_id": current.id,
        "user_name": current.user_name,
        "workflow": current.workflow,
        "from_state": current.state,
        "to_state": transition.to_state,
        "trigger": transition.trigger,
        "actor": transition.actor,
        "started_at": transition.started_at,
        "finished_at": finished,
        "outcome": transition.outcome,
        "error_code": transition.error_code,
        "error_message": transition.error_message,
        "detail": json.dumps(transition.detail, sort_keys=True, default=str),
    }


def _onboarding_change(
    transition: Transition, finished: datetime, status: str
) -> dict[str, Any]:
    change: dict[str, Any] = {
        "pending_state": None,
        "updated_at": finished,
        "status": status,
    }
    if transition.outcome == WAITING:
        change.update(
            last_error_code=transition.error_code, last_error=transition.error_message
        )
        return change
    if transition.outcome == "failed":
        change.update(attempts=transition.onboarding.attempts + 1)
        change.update(
            last_error_code=transition.error_code, last_error=transition.error_message
        )
        return change
    change.update(state=transition.to_state, attempts=0)
    if transition.outcome != OPERATOR or status != CANCELLED:
        change.update(last_error_code=None, last_error=None)
    return change


def _onboarding(row: Any) -> Onboarding:
    fields = Onboarding.__dataclass_fields__
    return Onboarding(**{name: row[name] for name in fields})


def _history_dict(row: Any) -> dict[str, Any]:
    item = dict(row)
    item["detail"] = json.loads(item["detail"])
    for key in ("started_at", "finished_at"):
        item[key] = item[key].replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return item


def resolve_url(cli_value: str | None, file_url: str | None) -> str:
    """Pick the store URL: --db, then the environment variable, then the file."""
    if cli_value is not None and not cli_value.strip():
        raise StoreUrlError("--db is empty; give a SQLite path or a database URL")
    chosen = cli_value or os.environ.get(DB_ENV) or file_url
    if not chosen:
        raise StoreError(
            f"no database given; pass --db, set {DB_ENV}, or pass the workflows file"
        )
    return chosen if "://" in chosen else f"sqlite:///{Path(chosen).resolve()}"


def open_store(
    url: str,
    migrate: bool = True,
    must_exist: bool = False,
    make_folder: bool = True,
) -> Store:
    """Open (and by default migrate to head) the database at ``url``.

    A new SQLite file's folder is made when missing, unless ``make_folder`` is
    False (a path the user typed, where a missing folder is more likely a typo).
    """
    if must_exist:
        _check_exists(url)
    engine = _create_engine(url, make_folder)
    store = Store(engine)
    if migrate:
        upgrade(store)
    return store


def _check_exists(url: str) -> None:
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database:
        return
    # SQLite takes an empty file for an empty database; a query must not.
    if not Path(database).exists() or Path(database).stat().st_size == 0:
        raise StoreError(
            f"no database at {database}; run `python -m engine run FILE` first, "
            "or pass the right --db"
        )


def _create_engine(url: str, make_folder: bool = True) -> Engine:
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ModuleNotFoundError) as err:
        raise StoreUrlError(
            f"'{url}' is not a database URL this engine can open ({err}); use a "
            "SQLite path or a URL such as postgresql+psycopg://user@host/db"
        ) from None
    if parsed.database and parsed.database != ":memory:":
        _ensure_folder(Path(parsed.database).parent, make_folder)
    engine = create_engine(parsed, connect_args={"timeout": 30})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _ensure_folder(folder: Path, make: bool) -> None:
    if make:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise StoreError(
            f"the folder {folder} for the database does not exist; create it, or "
            "fix the path given by --db or IAM_ENGINE_DB"
        )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def alembic_config() -> AlembicConfig:
    """Return an Alembic configuration that points at the shipped migrations."""
    config = AlembicConfig()
    location = resources.files("migrations")
    config.set_main_option("script_location", str(location))
    return config


def upgrade(store: Store, revision: str = "head") -> None:
    """Bring the schema to ``revision``."""
    _run_alembic(store, command.upgrade, revision)


def downgrade(store: Store, revision: str = "base") -> None:
    """Take the schema back to ``revision``."""
    _run_alembic(store, command.downgrade, revision)


@contextmanager
def _migration_lock(store: Store) -> Iterator[None]:
    """Keep two processes from migrating one SQLite file at the same time.

    The lock is a flock on the database's folder: no side file is left behind,
    and the database file itself is never opened outside SQLite, whose POSIX
    locks a second descriptor's close would drop.
    """
    database = store.engine.url.database
    if store.engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    folder = os.open(Path(database).resolve().parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)


def _run_alembic(store: Store, action: Any, revision: str) -> None:
    config = alembic_config()
    try:
        with _migration_lock(store), store.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": MIGRATION_LOCK_KEY},
                )
            config.attributes["connection"] = conn
            action(config, revision)
    except DatabaseError as err:
        raise StoreError(
            f"cannot open the database {store.url}: {_short(err)}"
        ) from err
