"""Hostile and malformed workflows files: a clean ConfigError or a valid load, never a crash."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.__main__ import main
from engine.config import LoadedConfig
from engine.errors import ConfigError
from tests.conftest import BASE_DOC, load_file

FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=80),
    st.text(alphabet="abcXYZ019_+=,.@-/ \u00e9\u4e2d\U0001f600\x00", max_size=70),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
PATHS = [
    ("version",),
    ("aws",),
    ("aws", "region"),
    ("aws", "max_attempts"),
    ("store",),
    ("monitoring", "trail_name"),
    ("groups",),
    ("workflows",),
    ("workflows", "standard", "steps"),
    ("workflows", "standard", "key_max_age_days"),
    ("users",),
    ("users", 0),
    ("users", 0, "name"),
    ("users", 0, "groups"),
    ("users", 0, "mfa"),
    ("users", 0, "tags"),
    ("users", 0, "service_role"),
    ("users", 0, "inline_policy"),
    ("users", 0, "allow_admin"),
]


def _mutate(
    document: dict[str, Any], path: tuple[Any, ...], value: Any
) -> dict[str, Any]:
    mutated = copy.deepcopy(document)
    node: Any = mutated
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return mutated


def _load_text(folder: Path, text: str) -> LoadedConfig | None:
    path = folder / "workflows.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return load_file(path)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith(str(path))
        return None


@FUZZ_SETTINGS
@given(path=st.sampled_from(PATHS), value=values)
def test_a_mutated_field_gives_a_clean_error_or_a_valid_file(
    tmp_path: Path, path: tuple[Any, ...], value: Any
) -> None:
    document = _mutate(BASE_DOC, path, value)

    loaded = _load_text(tmp_path, yaml.safe_dump(document, allow_unicode=True))

    if loaded is not None:
        assert all(user.name for user in loaded.config.users)


@FUZZ_SETTINGS
@given(text=st.text(max_size=400))
def test_arbitrary_text_gives_a_clean_error_or_a_valid_file(
    tmp_path: Path, text: str
) -> None:
    _load_text(tmp_path, text)


HOSTILE = {
    "billion-laughs": "a: &a ['x','x','x']\nb: &b [*a,*a,*a]\nc: &c [*b,*b,*b]\nd: [*c,*c,*c]\n",
    "python-object": "version: !!python/object/apply:os.system ['echo pwned']\n",
    "python-name": "version: !!python/name:os.system\n",
    "duplicate-key": "version: 1\nversion: 1\n",
    "merge-key": "base: &b {name: x}\nusers: [{<<: *b}]\n",
    "deep-nesting": "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "not-a-mapping": "- just\n- a list\n",
    "empty": "",
    "tab-indent": "version: 1\n\tusers: []\n",
    "huge-int": "version: 1" + "0" * 5000 + "\n",
    "unicode-name": "version: 1\nworkflows: {w: {steps: {Created: create_user}, states: [Created]}}\nusers: [{name: 'ü𝔘ser'}]\n",
    "nul-byte": "version: 1\x00\n",
}


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_files_are_refused_cleanly(tmp_path: Path, text: str) -> None:
    assert _load_text(tmp_path, text) is None


@pytest.mark.parametrize(
    "name", ["billion-laughs", "python-object", "duplicate-key", "nul-byte"]
)
def test_a_refused_file_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path = tmp_path / "workflows.yaml"
    path.write_text(HOSTILE[name], encoding="utf-8")

    code = main(["run", str(path), "--db", str(tmp_path / "engine.db")])

    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["workflows.yaml"]
