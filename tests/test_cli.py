"""The command line: exit codes, messages, output formats, sandbox and moto server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from engine.__main__ import main
from tests.conftest import moto_server_running, write_workflows

REPO = Path(__file__).resolve().parent.parent
USERS = [
    {"name": "alice", "groups": ["readers"]},
    {"name": "bot", "mfa": "none", "programmatic_access": True},
]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def sandbox_file(tmp_path: Path) -> Path:
    return write_workflows(tmp_path, users=USERS, store={"path": "state/engine.db"})


def test_run_onboards_everyone_then_has_nothing_to_do(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    code, out, err = run_cli(capsys, "run", str(sandbox_file))
    assert code == 0, err
    assert "SANDBOX" in err and "nothing real is touched" in err
    assert "2 onboardings: 2 complete, 0 cancelled" in out

    code, out, _ = run_cli(capsys, "run", str(sandbox_file))
    assert code == 0 and "Nothing to do" in out


def test_the_sandbox_keeps_its_state_between_runs(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    run_cli(capsys, "run", str(sandbox_file))
    snapshot = sandbox_file.parent / "state" / "sandbox-aws.pickle"
    assert snapshot.exists() and (snapshot.stat().st_mode & 0o777) == 0o600
    (sandbox_file.parent / "state" / "engine.db").unlink()

    code, out, _ = run_cli(capsys, "run", str(sandbox_file), "--format", "json")

    created = json.loads(out)
    assert code == 0 and all(item["status"] == "done" for item in created)
    code, out, _ = run_cli(
        capsys,
        "history",
        "-f",
        str(sandbox_file),
        "--state",
        "Created",
        "--format",
        "json",
    )
    assert {row["detail"]["action"] for row in json.loads(out)} == {"adopted"}


def test_history_json_lists_the_transitions(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    run_cli(capsys, "run", str(sandbox_file), "--quiet")

    code, out, _ = run_cli(
        capsys, "history", "-f", str(sandbox_file), "--user", "bot", "--format", "json"
    )

    rows = json.loads(out)
    assert code == 0 and len(rows) == 7
    assert {
        "user",
        "workflow",
        "from_state",
        "to_state",
        "started_at",
        "finished_at",
        "outcome",
        "error",
    } <= set(rows[0])
    assert rows[-1]["to_state"] == "Reviewed" and rows[-1]["user"] == "bot"


def test_status_shows_the_tracker_columns(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    run_cli(capsys, "run", str(sandbox_file), "--quiet")

    code, out, _ = run_cli(
        capsys, "status", "-f", str(sandbox_file), "--format", "json"
    )

    rows = {row["user"]: row for row in json.loads(out)}
    assert (
        code == 0
        and rows["alice"]["mfa"] == "enabled (alice)"
        and rows["bot"]["mfa"] == "not needed"
    )
    assert rows["bot"]["access_keys"].startswith("1 active") and rows["alice"][
        "access_keys"
    ].startswith("none")
    assert (
        rows["alice"]["permissions"] == "groups: readers"
        and "logging" in rows["alice"]["monitoring"]
    )


def test_quiet_json_run_prints_only_json(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    code, out, err = run_cli(
        capsys, "run", str(sandbox_file), "--quiet", "--format", "json"
    )

    assert code == 0 and err == ""
    assert [item["user"] for item in json.loads(out)] == ["alice", "bot"]


def test_an_invalid_file_exits_2_with_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_workflows(
        tmp_path,
        users=[{"name": "alice", "mfa": "sms"}],
        store={"path": "state/engine.db"},
    )

    code, out, err = run_cli(capsys, "run", str(path))

    assert code == 2 and out == ""
    assert (
        err.count("\n") == 1
        and err.startswith(f"error: {path}:")
        and "users[0].mfa" in err
    )
    assert not (tmp_path / "state").exists()


def test_a_failed_onboarding_exits_1_and_names_the_user(
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

    code, out, _ = run_cli(capsys, "run", str(path))

    assert code == 1 and "Not finished: eve" in out and "PolicyRefused" in out


def test_an_unreachable_endpoint_exits_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_workflows(
        tmp_path,
        aws={"sandbox": False, "endpoint_url": "http://127.0.0.1:9", "max_attempts": 1},
    )

    code, _, err = run_cli(capsys, "run", str(path))

    assert code == 3 and "cannot reach" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["history"], ["status"], ["validate"], ["db"], ["db", "upgrade"]],
)
def test_every_command_has_help_with_an_example(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code, out, _ = run_cli(capsys, *command, "--help")

    assert code == 0 and "Usage:" in out and ("Example" in out or command == ["db"])


def test_validate_checks_without_writing(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    code, out, _ = run_cli(capsys, "validate", str(sandbox_file))

    assert code == 0 and "valid (2 users" in out
    assert not (sandbox_file.parent / "state").exists()


def test_an_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--colour")

    assert code == 2 and "No such option" in err


@pytest.fixture
def moto_server() -> Iterator[str]:
    with moto_server_running() as url:
        yield url


def test_the_same_file_runs_against_a_moto_server_over_http(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, moto_server: str
) -> None:
    users = [
        {"name": "bot", "mfa": "none", "programmatic_access": True},
        {"name": "carol"},
    ]
    path = write_workflows(
        tmp_path,
        users=users,
        aws={"sandbox": False, "endpoint_url": moto_server},
        groups={},
    )

    code, out, err = run_cli(capsys, "run", str(path))

    assert code == 0, out + err
    assert f"endpoint {moto_server}" in err
    code, out, _ = run_cli(capsys, "run", str(path))
    assert "Nothing to do" in out


def test_python_dash_m_engine_runs_the_shipped_file(tmp_path: Path) -> None:
    for name in ("workflows.yaml",):
        shutil.copy(REPO / name, tmp_path / name)

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "run",
            "workflows.yaml",
            "--quiet",
            "--format",
            "json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 8
    assert {item["state"] for item in json.loads(done.stdout)} == {"Reviewed"}


def test_the_shipped_file_runs_against_a_moto_server_over_http(
    tmp_path: Path, moto_server: str
) -> None:
    document = yaml.safe_load((REPO / "workflows.yaml").read_text())
    document["aws"] = {"sandbox": False, "endpoint_url": moto_server}
    path = tmp_path / "workflows.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))

    done = _engine(tmp_path, "run", "workflows.yaml", "--quiet", "--format", "json")
    history = _engine(tmp_path, "history", "--format", "json")
    review = _engine(tmp_path, "review", "workflows.yaml", "--format", "json")

    assert done.returncode == 0, done.stderr
    assert {item["state"] for item in json.loads(done.stdout)} == {"Reviewed"}
    assert len(json.loads(done.stdout)) == len(document["users"])
    rows = json.loads(history.stdout)
    assert {row["to_state"] for row in rows if row["outcome"] == "ok"} >= {
        "Created",
        "Monitored",
        "Reviewed",
    }
    assert review.returncode == 0, review.stdout + review.stderr


def _engine(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_operator_commands_and_filters_ignore_name_case(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    run_cli(capsys, "run", str(sandbox_file), "--quiet")

    code, out, _ = run_cli(
        capsys,
        "reset",
        "ALICE",
        "--to",
        "Rotated",
        "--reason",
        "key leaked",
        "-f",
        str(sandbox_file),
    )
    assert code == 0 and out.startswith("alice: reset to Rotated")
    code, out, _ = run_cli(
        capsys,
        "history",
        "-f",
        str(sandbox_file),
        "--user",
        "Alice",
        "--since",
        "2000-01-01T00:00:00.5Z",
    )
    assert code == 0 and "reset" in out and "key leaked" in out


def test_an_empty_reason_is_refused(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    run_cli(capsys, "run", str(sandbox_file), "--quiet")

    code, _, err = run_cli(
        capsys, "cancel", "alice", "--reason", "  ", "-f", str(sandbox_file)
    )

    assert code == 2 and "give a reason" in err


def test_an_unreadable_sandbox_state_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    state = sandbox_file.parent / "state"
    state.mkdir()
    (state / "sandbox-aws.pickle").write_text("garbage\n")

    code, _, err = run_cli(capsys, "run", str(sandbox_file))

    assert code == 3 and "cannot be read" in err and "delete it" in err


def test_a_usage_error_is_one_line_naming_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "run", "workflows.yaml", "--workers", "0")

    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "--workers" in err and "see python -m engine run --help" in err


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--version")

    assert code == 0 and "version" in out


def test_run_refuses_a_typed_db_in_a_missing_folder(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-folder" / "engine.db"

    code, _, err = run_cli(capsys, "run", str(sandbox_file), "--db", str(missing))

    assert code == 3 and "does not exist" in err and "--db" in err
    assert not missing.parent.exists()


def test_reset_without_the_workflows_file_says_to_name_it(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path, tmp_path: Path
) -> None:
    run_cli(capsys, "run", str(sandbox_file), "--quiet")
    db = str(sandbox_file.parent / "state" / "engine.db")

    code, _, err = run_cli(
        capsys,
        "reset",
        "alice",
        "--to",
        "MFA",
        "--reason",
        "x",
        "--db",
        db,
        "-f",
        str(tmp_path / "elsewhere.yaml"),
    )

    assert code == 2 and "name the file with -f FILE" in err


def test_history_says_which_filter_matched_nothing(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    run_cli(capsys, "run", str(sandbox_file), "--quiet")
    where = ("-f", str(sandbox_file))

    _, _, unknown_user = run_cli(capsys, "history", *where, "--user", "nobody")
    _, _, no_state = run_cli(capsys, "history", *where, "--state", "reviewed")
    code, _, backwards = run_cli(
        capsys, "history", *where, "--since", "2026-12-05", "--until", "2026-12-01"
    )

    assert "no onboarding for user nobody" in unknown_user
    assert "case-sensitive" not in unknown_user
    assert "(--state is case-sensitive)" in no_state
    assert code == 2 and "--until" in backwards and "later than --since" in backwards


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_reset_before_any_run_is_refused_without_creating_a_database(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    before = _files_under(sandbox_file.parent)

    code, _, err = run_cli(
        capsys,
        "reset",
        "alice",
        "--to",
        "New",
        "--reason",
        "x",
        "-f",
        str(sandbox_file),
    )

    assert code == 3 and "no database at" in err
    assert _files_under(sandbox_file.parent) == before


def test_a_file_that_is_not_a_database_is_left_alone(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path
) -> None:
    text_file = sandbox_file.parent / "notes.txt"
    text_file.write_text("hello\n")
    before = _files_under(sandbox_file.parent)

    code, _, err = run_cli(capsys, "status", "--db", str(text_file))

    assert code == 3 and "not a database" in err
    assert _files_under(sandbox_file.parent) == before
    assert text_file.read_text() == "hello\n"


def test_missing_aws_credentials_leave_no_database(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    path = write_workflows(tmp_path, aws={"sandbox": False, "max_attempts": 1})

    code, _, err = run_cli(capsys, "run", str(path))

    assert code == 3 and "no AWS credentials" in err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("db", "words"),
    [
        ("nonsense://foo/bar", "not a database URL"),
        ("", "--db is empty"),
    ],
    ids=["unknown-dialect", "empty"],
)
def test_an_unusable_db_value_is_bad_input(
    capsys: pytest.CaptureFixture[str], sandbox_file: Path, db: str, words: str
) -> None:
    code, _, err = run_cli(capsys, "run", str(sandbox_file), "--db", db)

    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (sandbox_file.parent / "state").exists()


def test_an_empty_file_given_to_a_query_is_not_made_a_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()

    code, _, err = run_cli(capsys, "status", "--db", str(empty))

    assert code == 3 and "no database at" in err and empty.stat().st_size == 0


def test_a_seed_folder_that_cannot_be_made_stops_the_run_before_any_step(
    capsys: pytest.CaptureFixture[str],
    sandbox_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(Path, "mkdir", refuse)

    code, _, err = run_cli(capsys, "run", str(sandbox_file))

    assert code == 2 and "secrets.mfa_seed_dir" in err and "cannot create" in err
    assert not (sandbox_file.parent / "state" / "engine.db").exists()
