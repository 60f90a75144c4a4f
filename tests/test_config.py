"""Validation of workflows.yaml: every fault names file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from tests.conftest import load_file, write_workflows

REPO = Path(__file__).resolve().parent.parent

GOOD_HEAD = """\
version: 1
workflows:
  standard:
    steps:
      Created: create_user
      LeastPrivilege: least_privilege
      MFA: mfa
      Role: service_role
      Rotated: access_keys
      Monitored: cloudtrail
      Reviewed: review
users:
  - name: alice
"""


def _error_for(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "workflows.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    return caught.value


def test_the_shipped_file_is_valid() -> None:
    loaded = load_file(REPO / "workflows.yaml")

    assert len(loaded.config.users) == 8
    assert loaded.config.aws.sandbox is True


def test_an_unknown_key_names_its_line_and_field(tmp_path: Path) -> None:
    err = _error_for(tmp_path, GOOD_HEAD + "    colour: blue\n")

    assert (err.line, err.field) == (14, "users[0].colour")
    assert "unknown key" in str(err) and str(err).startswith(
        f"{tmp_path / 'workflows.yaml'}:14:"
    )


def test_a_missing_field_names_the_mapping_that_lacks_it(tmp_path: Path) -> None:
    err = _error_for(
        tmp_path, GOOD_HEAD.replace("  - name: alice\n", "  - path: /x/\n")
    )

    assert (err.line, err.field) == (13, "users[0].name")
    assert "required" in err.problem


def test_an_unknown_step_lists_the_known_ones(tmp_path: Path) -> None:
    err = _error_for(tmp_path, GOOD_HEAD.replace("MFA: mfa", "MFA: yubikey"))

    assert (err.line, err.field) == (7, "workflows.standard.steps.MFA")
    assert "unknown step 'yubikey'" in err.problem and "create_user" in err.problem


def test_a_step_for_an_unknown_state_is_refused(tmp_path: Path) -> None:
    err = _error_for(
        tmp_path,
        GOOD_HEAD.replace(
            "      Reviewed: review\n",
            "      Reviewed: review\n      Audited: review\n",
        ),
    )

    assert err.field == "workflows.standard.steps.Audited" and err.line == 12
    assert "unknown state" in err.problem


def test_duplicate_user_names_are_refused_whatever_their_case(tmp_path: Path) -> None:
    err = _error_for(tmp_path, GOOD_HEAD + "  - name: Alice\n")

    assert (err.line, err.field) == (14, "users[1].name")
    assert "duplicate user name" in err.problem


def test_a_duplicate_yaml_key_is_refused_not_overwritten(tmp_path: Path) -> None:
    """Case 8: plain loaders keep the last of two equal keys without a word."""
    err = _error_for(
        tmp_path,
        GOOD_HEAD.replace(
            "      MFA: mfa\n", "      MFA: mfa\n      MFA: create_user\n"
        ),
    )

    assert err.line == 8 and "duplicate key 'MFA' (first on line 7)" in err.problem


def test_a_tag_that_would_build_a_python_object_is_refused(tmp_path: Path) -> None:
    err = _error_for(
        tmp_path, GOOD_HEAD + "    path: !!python/object/apply:os.system ['true']\n"
    )

    assert err.line == 14 and "constructor" in err.problem


def test_aliases_are_refused(tmp_path: Path) -> None:
    bomb = "version: 1\na: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"

    err = _error_for(tmp_path, bomb)

    assert err.line == 3 and "aliases" in err.problem


def test_an_invalid_iam_user_name_is_refused_before_aws_is_called(
    tmp_path: Path,
) -> None:
    err = _error_for(tmp_path, GOOD_HEAD.replace("name: alice", "name: al ice"))

    assert (err.line, err.field) == (13, "users[0].name") and "IAM name" in err.problem


def test_a_name_longer_than_iam_allows_is_refused(tmp_path: Path) -> None:
    err = _error_for(tmp_path, GOOD_HEAD.replace("name: alice", f"name: {'a' * 65}"))

    assert err.field == "users[0].name"


def test_an_undefined_group_is_refused(tmp_path: Path) -> None:
    path = write_workflows(tmp_path, users=[{"name": "bob", "groups": ["nobody"]}])

    with pytest.raises(
        ConfigError, match=r"users\[0\]\.groups\[0\]: unknown group 'nobody'"
    ):
        load_file(path)


def test_a_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    err = _error_for(tmp_path, GOOD_HEAD + "    programmatic_access: sometimes\n")

    assert (err.line, err.field) == (
        14,
        "users[0].programmatic_access",
    ) and "boolean" in err.problem


def test_a_file_that_is_not_yaml_gives_one_line(tmp_path: Path) -> None:
    err = _error_for(tmp_path, "version: 1\nusers: [unclosed\n")

    assert err.line is not None and "\n" not in str(err)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_file(tmp_path / "absent.yaml")


def test_the_workflow_hash_changes_with_the_definition(tmp_path: Path) -> None:
    first = (
        load_file(write_workflows(tmp_path))
        .config.workflows["standard"]
        .definition_hash()
    )
    steps = {"Created": "create_user", "Reviewed": "review"}
    changed = write_workflows(
        tmp_path,
        workflows={"standard": {"states": ["Created", "Reviewed"], "steps": steps}},
    )

    second = load_file(changed).config.workflows["standard"].definition_hash()

    assert first != second


@pytest.mark.parametrize(
    "entry",
    [
        "    managed_policies: [arn:aws:iam::aws:policy/AdministratorAccess]\n",
        "    inline_policy: {Statement: [{Effect: Allow, Action: '*', Resource: '*'}]}\n",
        "    inline_policy: {Statement: [{Effect: Allow, Action: ['iam:*'], Resource: '*'}]}\n",
    ],
    ids=["managed-admin", "inline-star", "iam-star"],
)
def test_an_admin_grant_without_allow_admin_is_refused_before_running(
    tmp_path: Path, entry: str
) -> None:
    err = _error_for(tmp_path, GOOD_HEAD + entry)

    assert err.line == 14 and "allow_admin" in err.problem


def test_an_admin_grant_with_a_reason_is_accepted(tmp_path: Path) -> None:
    text = (
        GOOD_HEAD
        + "    managed_policies: [arn:aws:iam::aws:policy/AdministratorAccess]\n    allow_admin: {reason: break-glass administrator}\n"
        + "    direct_policies: {reason: break-glass administrator}\n"
    )
    path = tmp_path / "workflows.yaml"
    path.write_text(text)

    assert load_file(path).config.users[0].allow_admin is not None


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        (
            "    inline_policy: {Statement: [{Effect: Maybe, Action: s3:GetObject, Resource: '*'}]}\n",
            "users[0].inline_policy",
            "Effect",
        ),
        (
            "    inline_policy: {Statement: [{Effect: Allow, Resource: '*'}]}\n",
            "users[0].inline_policy",
            "Action or NotAction",
        ),
        ("    path: people\n", "users[0].path", "starts and ends with /"),
        (
            "    managed_policies: [ReadOnlyAccess]\n",
            "users[0].managed_policies[0]",
            "not a policy ARN",
        ),
        (
            "    tags: {cost-center: 4100}\n",
            "users[0].tags.cost-center",
            "put the value in quotes",
        ),
        (
            "    tags: {" + ", ".join(f"k{i}: v" for i in range(51)) + "}\n",
            "users[0].tags",
            "at most 50",
        ),
    ],
    ids=["effect", "no-action", "path", "arn", "unquoted-number", "too-many-tags"],
)
def test_field_errors_say_what_the_value_should_be(
    tmp_path: Path, entry: str, field: str, words: str
) -> None:
    err = _error_for(tmp_path, GOOD_HEAD + entry)

    assert err.field == field and words in err.problem and "pattern" not in err.problem


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("version: 1", "version: true", "version"),
        ("version: 1", "version: 2", "version"),
        ("workflows:", "aws: {region: mars-1}\nworkflows:", "aws.region"),
    ],
)
def test_loose_values_are_refused(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    assert _error_for(tmp_path, GOOD_HEAD.replace(old, new, 1)).field == field


def test_store_path_and_url_together_are_refused(tmp_path: Path) -> None:
    err = _error_for(
        tmp_path,
        GOOD_HEAD.replace(
            "workflows:", "store: {path: a.db, url: 'sqlite:///b.db'}\nworkflows:", 1
        ),
    )

    assert err.field == "store" and "not both" in err.problem


def test_a_policy_error_names_the_statement_not_pydantic_internals(
    tmp_path: Path,
) -> None:
    err = _error_for(
        tmp_path,
        GOOD_HEAD
        + "    inline_policy: {Statement: [{Effect: Permit, Action: s3:GetObject, Resource: '*'}]}\n",
    )

    assert "Statement[0].Effect" in err.problem and "function-after" not in err.problem


BIG_RESOURCES = ", ".join(
    f"'arn:aws:s3:::northwind-bucket-{i:04}/*'" for i in range(80)
)


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        (
            "    allow_admin: {reason: '            '}\n",
            "users[0].allow_admin.reason",
            "besides spaces",
        ),
        (
            "    direct_policies: {reason: ' short   '}\n",
            "users[0].direct_policies.reason",
            "besides spaces",
        ),
        (
            "    inline_policy: {Statement: []}\n",
            "users[0].inline_policy",
            "is empty",
        ),
        (
            "    inline_policy: {Statement: [{Effect: Allow, Action: [], Resource: '*'}]}\n",
            "users[0].inline_policy",
            "Action list is empty",
        ),
        ("    tags: {'aws:team': x}\n", "users[0].tags.aws:team", "reserved"),
        ("    tags: {team: 'plat<form>'}\n", "users[0].tags.team", "not allowed"),
        (
            "    direct_policies: {reason: a recorded exception}\n"
            "    inline_policy: {Statement: [{Effect: Allow, Action: s3:GetObject, "
            f"Resource: [{BIG_RESOURCES}]}}]}}\n",
            "users[0]",
            "over IAM's 2048 for a user",
        ),
    ],
    ids=[
        "blank-admin-reason",
        "short-direct-reason",
        "no-statement",
        "no-action",
        "aws-tag-key",
        "tag-value-char",
        "inline-too-big",
    ],
)
def test_values_aws_would_refuse_are_refused_at_load(
    tmp_path: Path, entry: str, field: str, words: str
) -> None:
    err = _error_for(tmp_path, GOOD_HEAD + entry)

    assert err.field == field and words in err.problem, str(err)


@pytest.mark.parametrize(
    ("section", "field", "words"),
    [
        (
            "secrets: {secret_prefix: 'north wind!!/'}",
            "secrets.secret_prefix",
            "Secrets Manager",
        ),
        (
            "secrets: {mfa_seed_dir: workflows.yaml/seeds}",
            "secrets.mfa_seed_dir",
            "is not a folder",
        ),
        ("groups: {'analysts group!': {}}", "groups.analysts group!", "IAM group name"),
    ],
    ids=["secret-prefix", "seed-dir-under-a-file", "group-name"],
)
def test_bad_top_level_values_are_refused_at_load(
    tmp_path: Path, section: str, field: str, words: str
) -> None:
    err = _error_for(
        tmp_path, GOOD_HEAD.replace("workflows:", f"{section}\nworkflows:", 1)
    )

    assert err.field == field and words in err.problem, str(err)


def test_a_wildcard_resource_mismatch_names_a_few_actions_not_hundreds(
    tmp_path: Path,
) -> None:
    err = _error_for(
        tmp_path,
        GOOD_HEAD
        + "    direct_policies: {reason: a recorded exception}\n"
        + "    allow_admin: {reason: break-glass administrator}\n"
        + "    inline_policy: {Statement: [{Effect: Allow, Action: ['iam:*'], "
        + "Resource: 'arn:aws:glue:us-east-1:123456789012:table/db/t'}]}\n",
    )

    assert "RESOURCE_MISMATCH" in err.problem and "more action(s)" in err.problem
    assert len(str(err)) < 1000


def test_a_reason_of_invisible_characters_is_refused(tmp_path: Path) -> None:
    err = _error_for(
        tmp_path, GOOD_HEAD + '    allow_admin: {reason: "' + "\\u200b" * 12 + '"}\n'
    )

    assert (
        err.field == "users[0].allow_admin.reason" and "besides spaces" in err.problem
    )


def test_policy_document_messages_carry_no_pydantic_wording(tmp_path: Path) -> None:
    err = _error_for(tmp_path, GOOD_HEAD + "    inline_policy: {Statement: []}\n")

    assert "is empty; give at least one" in err.problem
    assert "Value error" not in err.problem and "after validation" not in err.problem
