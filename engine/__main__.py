"""The command line: parse arguments, set up logging, map errors to exit codes.

Exit codes: 0 success; 1 some onboarding did not finish; 2 bad input (the
file or the command line); 3 the database or AWS cannot be used; 4 an
internal error (a bug: run again with --debug and report the traceback);
5 every onboarding finished or waits for its user to enrol MFA; 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from sqlalchemy.engine import make_url

from engine import cli_output, config, operator, store
from engine.aws import open_target
from engine.errors import EngineError
from engine.faults import FaultPoints
from engine.review import Reviewer, UserReview
from engine.runner import Outcome, Runner, default_actor
from engine.secrets import Redactor, SecretSink
from engine.worker import Worker
from steps import REGISTRY

EXIT_UNFINISHED, EXIT_INPUT, EXIT_ENVIRONMENT, EXIT_INTERNAL, EXIT_INTERRUPTED = (
    1,
    2,
    3,
    4,
    130,
)
EXIT_WAITING = 5

log = logging.getLogger("engine")
REDACTOR = Redactor()
FORMATS = click.Choice(["table", "json"])


class _UtcTime(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 time, as history prints it (a trailing Z, fractions allowed)."""

    name = "TIME"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(
                f"{value!r} is not a time like 2026-12-03 or 2026-12-03T20:17:21Z"
            )
        return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


UTC_TIME = _UtcTime()


def _reason(_ctx: Any, _param: Any, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("give a reason; it is kept in the history")
    return value.strip()


FILE_OPTION = click.option(
    "-f",
    "--file",
    "path",
    default="workflows.yaml",
    show_default=True,
    help="Workflows file that names the store.",
)
DB_OPTION = click.option(
    "--db", help="Database URL or SQLite path; overrides the file (env IAM_ENGINE_DB)."
)


class _OnboardingDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "onboarding"):
            record.onboarding = "-"
        return True


class _QuietParliament(logging.Filter):
    """Drop parliament's INFO chatter: it logs through the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_parliament = f"{os.sep}parliament{os.sep}" in record.pathname
        return not (from_parliament and record.levelno < logging.WARNING)


def _setup_logging(verbose: bool, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_OnboardingDefault())
    handler.addFilter(_QuietParliament())
    handler.addFilter(REDACTOR)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s [%(onboarding)s] %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(
        logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    )
    for noisy in ("botocore", "boto3", "urllib3", "alembic", "moto", "transitions"):
        logging.getLogger(noisy).setLevel(
            logging.WARNING if not debug else logging.INFO
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iam-onboarding-engine")
@click.option("--debug", is_flag=True, help="Show debug logs and full tracebacks.")
@click.option(
    "-v", "--verbose", is_flag=True, help="Log each step's start and end to stderr."
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Take new AWS IAM users through the IAM best practices, one state at a time.

    \b
    Example:
      python -m engine run workflows.yaml
      python -m engine history --user alice --format json

    Exit codes: 0 success, 1 an onboarding did not finish, 2 bad input,
    3 database or AWS unavailable, 4 internal error, 5 waiting for users to
    enrol MFA, 130 interrupted.
    """
    ctx.obj = {"debug": debug}
    _setup_logging(verbose, debug)


def _load(path: str) -> config.LoadedConfig:
    return config.load(path, set(REGISTRY))


def _open_store(db: str | None, loaded: config.LoadedConfig) -> store.Store:
    """Open the store a command writes to, making the file's own folder if needed."""
    url = store.resolve_url(db, loaded.database_url())
    typed = bool(db or os.environ.get(store.DB_ENV))
    return store.open_store(url, make_folder=not typed)


def _store_for_queries(
    db: str | None, path: str, must_exist: bool = True
) -> store.Store:
    needs_file = not db and not os.environ.get(store.DB_ENV)
    loaded = _load(path) if needs_file else None
    url = store.resolve_url(db, loaded.database_url() if loaded else None)
    return store.open_store(url, must_exist=must_exist)


def _stdout() -> Console:
    console = Console()
    # Piped output has no width of its own; keep table rows on one line.
    return console if console.is_terminal else Console(width=max(console.width, 200))


def _sandbox_file(loaded: config.LoadedConfig, url: str) -> Path:
    # Known shortcoming: MFA seeds go to the file's seed folder whatever the
    # database, so two sandboxes sharing one file overwrite each other's seeds.
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return Path(parsed.database).parent / "sandbox-aws.pickle"
    return loaded.resolve("state/sandbox-aws.pickle")


@cli.command()
@click.argument("workflows")
@click.option(
    "--db",
    help="Database URL or SQLite path (default: the file's store; env IAM_ENGINE_DB).",
)
@click.option(
    "--format",
    "fmt",
    type=FORMATS,
    default="table",
    show_default=True,
    help="Summary format on stdout.",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="No progress bar, banner or summary table; only errors.",
)
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Onboardings driven at once (threads); the sandbox always uses 1.",
)
@click.option(
    "--adopt-definition",
    is_flag=True,
    help="Continue onboardings whose workflow changed under them, from their state.",
)
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(0, 7 * 24 * 3600),
    default=0,
    metavar="TIMEOUT",
    help="Seconds to keep checking users who must enrol MFA (mfa: self-service).",
)
@click.option(
    "--wait-interval",
    type=click.FloatRange(0.01, 3600),
    default=15.0,
    show_default=True,
    help="Seconds between checks with --wait.",
)
def run(
    workflows: str,
    db: str | None,
    fmt: str,
    quiet: bool,
    workers: int,
    adopt_definition: bool,
    wait_seconds: float,
    wait_interval: float,
) -> None:
    """Run every onboarding in WORKFLOWS, resuming unfinished ones where they stopped.

    \b
    Example:
      python -m engine run workflows.yaml
      python -m engine run workflows.yaml --format json --quiet
      python -m engine run team.yaml --workers 8
      python -m engine run workflows.yaml --db postgresql+psycopg://user@dbhost/iam
      python -m engine run people.yaml --wait 3600 --wait-interval 30

    Exit code 5: every onboarding finished, or waits for its user to enrol an
    MFA device (mfa: self-service); run again later, or use --wait.
    """
    with _runner(workflows, db, quiet, adopt_definition) as runner:
        outcomes = _run_with_progress(runner, runner.workers_for(workers), quiet)
        if wait_seconds > 0 and any(item.waiting for item in outcomes):
            if not quiet:
                click.echo(f"waiting up to {wait_seconds:g} s for MFA", err=True)
            outcomes = runner.wait_for_users(outcomes, wait_seconds, wait_interval)
    _print_outcomes(outcomes, fmt, quiet)
    if not all(item.settled or item.waiting for item in outcomes):
        raise SystemExit(EXIT_UNFINISHED)
    if not all(item.settled for item in outcomes):
        raise SystemExit(EXIT_WAITING)


@contextmanager
def _runner(
    workflows: str, db: str | None, quiet: bool, adopt_definition: bool
) -> Iterator[Runner]:
    """Open the file's store and AWS target, yield a runner on them, close both."""
    loaded = _load(workflows)
    url = store.resolve_url(db, loaded.database_url())
    # AWS first: a target that cannot be used must not leave a new database.
    target = open_target(loaded.config.aws, _sandbox_file(loaded, url))
    try:
        seeds = loaded.make_seed_dir()
        engine_store = _open_store(db, loaded)
    except BaseException:
        target.abandon()
        raise
    secrets = SecretSink(seeds, loaded.config.secrets.secret_prefix, REDACTOR)
    faults = FaultPoints.from_env()
    for client in vars(target.clients).values():
        faults.watch(client)
    if not quiet:
        err = Console(stderr=True, soft_wrap=True)
        err.print(f"[bold]Target:[/bold] {target.description}")
        err.print(f"[bold]Store:[/bold] {engine_store.url}")
    try:
        yield Runner(loaded, engine_store, target, secrets, faults, adopt_definition)
    finally:
        target.close()
        engine_store.dispose()


def _run_with_progress(runner: Runner, workers: int, quiet: bool) -> list[Outcome]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, console=Console(stderr=True), disable=quiet, transient=True
    ) as progress:
        task = progress.add_task("onboarding", total=len(runner.loaded.config.users))

        def show(user: str, state: str) -> None:
            progress.update(task, description=f"{user} -> {state}")

        def done(_outcome: Outcome) -> None:
            progress.advance(task)

        return runner.run(show, workers, done)


def _print_outcomes(outcomes: list[Outcome], fmt: str, quiet: bool) -> None:
    if fmt == "json":
        click.echo(json.dumps(cli_output.outcomes_json(outcomes), indent=2))
        return
    if quiet:
        return
    _stdout().print(cli_output.outcomes_table(outcomes))
    click.echo(cli_output.summary_line(outcomes))


@cli.command()
@click.argument("workflows")
@click.option(
    "--db",
    help="Database URL or SQLite path (default: the file's store; env IAM_ENGINE_DB).",
)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress, banner or table.")
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Threads in this process, each driving one onboarding at a time.",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep claiming work until interrupted, instead of stopping when idle.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=10.0,
    show_default=True,
    help="Seconds between passes with --follow.",
)
def worker(
    workflows: str,
    db: str | None,
    fmt: str,
    quiet: bool,
    workers: int,
    follow: bool,
    interval: float,
) -> None:
    """Claim and drive WORKFLOWS' onboardings alongside other workers on one database.

    Start as many workers as you like, on any machines, against the same
    PostgreSQL database: each onboarding is leased to one worker at a time
    (FOR UPDATE SKIP LOCKED), so each transition happens once. Without
    --follow a worker stops when nothing is left that it can claim; it exits 1
    if an onboarding it drove did not finish.

    \b
    Example:
      python -m engine worker team.yaml --db postgresql+psycopg://iam@dbhost/iam
      python -m engine worker team.yaml --workers 8 --follow --interval 30
    """
    with _runner(workflows, db, quiet, adopt_definition=False) as runner:
        serving = Worker(runner)
        serving.enlist()
        threads = runner.workers_for(workers)
        outcomes = _serve(serving, threads, quiet)
        while follow:
            time.sleep(interval)
            outcomes += _serve(serving, threads, quiet)
    if not outcomes and fmt == "table" and not quiet:
        click.echo(
            "Nothing to claim: every onboarding is complete, cancelled, or held by "
            "another worker."
        )
        return
    _print_outcomes(outcomes, fmt, quiet)
    if not all(item.settled for item in outcomes):
        raise SystemExit(EXIT_UNFINISHED)


def _serve(serving: Worker, threads: int, quiet: bool) -> list[Outcome]:
    with Progress(
        TextColumn("{task.description}"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=True,
    ) as progress:
        task = progress.add_task("claiming", total=None)

        def show(user: str, state: str) -> None:
            progress.update(task, description=f"{user} -> {state}")

        def done(_outcome: Outcome) -> None:
            progress.advance(task)

        return serving.one_pass(threads, show, done)


@cli.command()
@FILE_OPTION
@DB_OPTION
@click.option("--user", help="Only this user's transitions.")
@click.option("--state", help="Only transitions into this state.")
@click.option(
    "--since", type=UTC_TIME, help="Only transitions started at or after (UTC)."
)
@click.option("--until", type=UTC_TIME, help="Only transitions started before (UTC).")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def history(
    path: str,
    db: str | None,
    user: str | None,
    state: str | None,
    since: datetime | None,
    until: datetime | None,
    fmt: str,
) -> None:
    """List the state history, one row per transition, oldest first.

    \b
    Example:
      python -m engine history --user ana.silva
      python -m engine history --state Reviewed --format json
      python -m engine history --since 2026-12-01 --until "2026-12-02 12:00:00"
    """
    if since and until and since >= until:
        raise click.BadParameter("must be later than --since", param_hint="--until")
    engine_store = _store_for_queries(db, path)
    rows = engine_store.history(user=user, state=state, since=since, until=until)
    if not rows and (user or state or since or until):
        click.echo(_no_match_hint(engine_store, user, state), err=True)
    if fmt == "json":
        click.echo(json.dumps(cli_output.history_json(rows), indent=2))
    else:
        _stdout().print(cli_output.history_table(rows))


def _no_match_hint(
    engine_store: store.Store, user: str | None, state: str | None
) -> str:
    if user and engine_store.onboarding(user) is None:
        return f"no onboarding for user {user}; `python -m engine status` lists them"
    hint = "no transitions match those filters"
    return hint + (" (--state is case-sensitive)" if state else "")


@cli.command()
@FILE_OPTION
@DB_OPTION
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def status(path: str, db: str | None, fmt: str) -> None:
    """Show each user's current state and what the engine has set up for it.

    \b
    Example:
      python -m engine status
      python -m engine status --format json
    """
    engine_store = _store_for_queries(db, path)
    rows = [
        cli_output.tracker(item, engine_store.history(user=item.user_name))
        for item in engine_store.all_onboardings()
    ]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        _stdout().print(cli_output.status_table(rows))


@cli.command()
@click.argument("workflows")
@DB_OPTION
@click.option("--user", help="Only this user (case ignored).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "markdown"]),
    default="table",
    show_default=True,
)
def review(workflows: str, db: str | None, user: str | None, fmt: str) -> None:
    """Audit every onboarded user in WORKFLOWS again; record drift in the history.

    A user is reviewed once its onboarding has passed every state before the
    review step. For a finished onboarding a history row (trigger review) is
    written when its findings differ from the last recorded review.

    \b
    Example:
      python -m engine review workflows.yaml
      python -m engine review workflows.yaml --user ci-deployer --format json
      python -m engine review workflows.yaml --format markdown > review.md

    Exit codes: 0 no high-severity finding, 1 at least one, 2 bad input,
    3 database or AWS unavailable.
    """
    loaded = _load(workflows)
    if user and not any(u.name.lower() == user.lower() for u in loaded.config.users):
        raise click.BadParameter(f"no user {user} in {workflows}", param_hint="--user")
    url = store.resolve_url(db, loaded.database_url())
    engine_store = store.open_store(url, must_exist=True)
    secrets = SecretSink(
        loaded.resolve(loaded.config.secrets.mfa_seed_dir),
        loaded.config.secrets.secret_prefix,
        REDACTOR,
    )
    target = open_target(loaded.config.aws, _sandbox_file(loaded, url))
    try:
        reviewer = Reviewer(loaded, engine_store, target, secrets, default_actor())
        reviews = reviewer.review(user)
    finally:
        target.close()
        engine_store.dispose()
    _print_reviews(reviews, fmt)
    if any(item.high for item in reviews):
        raise SystemExit(EXIT_UNFINISHED)


def _print_reviews(reviews: list[UserReview], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(cli_output.review_json(reviews), indent=2))
    elif fmt == "markdown":
        click.echo(cli_output.review_markdown(reviews))
    else:
        _stdout().print(cli_output.review_table(reviews))
    click.echo(cli_output.review_summary(reviews), err=fmt != "table")


def _operator_options(command: Any) -> Any:
    options = [
        click.argument("user"),
        click.option(
            "--reason",
            required=True,
            callback=_reason,
            help="Why; kept in the history.",
        ),
        click.option("--actor", default=None, help="Who; defaults to the OS user."),
        FILE_OPTION,
        DB_OPTION,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _report(onboarding: store.Onboarding, action: str) -> None:
    name = onboarding.user_name
    if onboarding.status == store.CANCELLED:
        after = (
            f"Runs skip it; `python -m engine retry {name} --reason ...` undoes this."
        )
    else:
        after = "Run `python -m engine run FILE` to continue."
    click.echo(
        f"{name}: {action}; now {onboarding.state} ({onboarding.status}). {after}"
    )


@cli.command()
@_operator_options
def retry(user: str, reason: str, actor: str | None, path: str, db: str | None) -> None:
    """Let USER's failed or cancelled onboarding run again, attempts reset.

    \b
    Example:
      python -m engine retry ci-deployer --reason "quota raised by AWS support"
    """
    engine_store = _store_for_queries(db, path)
    _report(
        operator.retry(engine_store, user, actor or default_actor(), reason),
        "retry recorded",
    )


@cli.command()
@_operator_options
def cancel(
    user: str, reason: str, actor: str | None, path: str, db: str | None
) -> None:
    """Stop USER's onboarding; runs skip it until it is retried or reset.

    \b
    Example:
      python -m engine cancel erin.mbeki --reason "offer withdrawn"
    """
    engine_store = _store_for_queries(db, path)
    _report(
        operator.cancel(engine_store, user, actor or default_actor(), reason),
        "cancelled",
    )


@cli.command()
@_operator_options
@click.option(
    "--to", "to_state", required=True, help="The earlier state to go back to."
)
def reset(
    user: str, reason: str, actor: str | None, path: str, db: str | None, to_state: str
) -> None:
    """Move USER's onboarding back to an earlier state, so later steps run again.

    \b
    Example:
      python -m engine reset ana.silva --to Created --reason "policy changed by hand"
    """
    if not os.path.exists(path):
        raise click.UsageError(
            f"reset moves {user} under the workflows file's definition, and there "
            f"is no {path}; name the file with -f FILE"
        )
    loaded = _load(path)
    url = store.resolve_url(db, loaded.database_url())
    engine_store = store.open_store(url, must_exist=True)
    found = engine_store.onboarding(user)
    workflow = loaded.config.workflows.get(found.workflow) if found else None
    who = actor or default_actor()
    _report(
        operator.reset(engine_store, user, to_state, workflow, who, reason),
        f"reset to {to_state}",
    )


@cli.command()
@click.argument("workflows")
def validate(workflows: str) -> None:
    """Check WORKFLOWS without running anything or touching the database.

    \b
    Example:
      python -m engine validate workflows.yaml
    """
    loaded = _load(workflows)
    click.echo(
        f"{workflows}: valid ({cli_output.plural(len(loaded.config.users), 'user')}, "
        f"{cli_output.plural(len(loaded.config.workflows), 'workflow')})"
    )


@cli.group()
def db() -> None:
    """Manage the database schema (it is also upgraded whenever the engine opens it).

    \b
    Example:
      python -m engine db upgrade --db postgresql+psycopg://user@dbhost/iam
    """


@db.command("upgrade")
@FILE_OPTION
@DB_OPTION
def db_upgrade(path: str, db: str | None) -> None:
    """Create or upgrade the schema to the newest revision.

    \b
    Example:
      python -m engine db upgrade --db state/onboarding.db
    """
    engine_store = _store_for_queries(db, path, must_exist=False)
    click.echo(f"schema of {engine_store.url} is at the newest revision")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; the only place errors become exit codes."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name=_prog_name(), standalone_mode=False)
    except click.exceptions.Exit as stop:
        return int(stop.exit_code)
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx else _prog_name()
        click.echo(f"error: {err.format_message()} (see {where} --help)", err=True)
        return EXIT_INPUT
    except click.ClickException as err:
        err.show()
        return EXIT_INPUT
    except click.exceptions.Abort:
        return _fail(
            "interrupted; run the same command again to resume", EXIT_INTERRUPTED, debug
        )
    except SystemExit as stop:
        return int(stop.code or 0)
    except EngineError as err:
        return _fail(str(err), err.exit_code, debug)
    except KeyboardInterrupt:
        return _fail(
            "interrupted; run the same command again to resume", EXIT_INTERRUPTED, debug
        )
    except Exception as err:  # noqa: BLE001 - the last line of defence turns a bug into a message
        message = (
            f"internal error: {type(err).__name__}: {err} "
            "(run with --debug for the traceback)"
        )
        return _fail(message, EXIT_INTERNAL, debug)
    return 0


def _prog_name() -> str:
    invoked = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "python -m engine" if invoked in ("__main__.py", "-m", "") else invoked


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        logging.getLogger("engine").exception("traceback")
    click.echo(f"error: {REDACTOR.mask(message)}", err=True)
    return code


def _entry() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
