"""A strict YAML reader that remembers where every value came from.

PyYAML's safe loader already refuses tags that build Python objects. On top
of it this reader refuses duplicate keys (which plain loaders silently
resolve to the last one) and aliases (which can expand a small file into a
huge document), and records the line of every mapping key and list item so
that validation errors can point at the line a user must fix.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from engine.errors import ConfigError

MAX_BYTES = 1_000_000
MAX_DEPTH = 32


class LineDict(dict[str, Any]):
    """A mapping that knows the line of itself and of each of its keys."""

    line: int
    key_lines: dict[str, int]


class LineList(list[Any]):
    """A sequence that knows the line of itself and of each of its items."""

    line: int
    item_lines: list[int]


class _StrictLoader(yaml.SafeLoader):
    depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if self.check_event(yaml.AliasEvent):
            raise _located(
                event.start_mark, "aliases (*name) are not allowed; write the value out"
            )
        if self.depth >= MAX_DEPTH:
            raise _located(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as err:
            problem = f"unreadable value ({_one_line(str(err))})"
            raise _located(node.start_mark, problem) from None

    def construct_mapping(  # type: ignore[override]
        self, node: MappingNode, deep: bool = False
    ) -> LineDict:
        result = LineDict()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise _located(key_node.start_mark, f"key {key!r} must be a string")
            if key in result:
                first = result.key_lines[key]
                raise _located(
                    key_node.start_mark,
                    f"duplicate key '{key}' (first on line {first})",
                )
            result.key_lines[key] = key_node.start_mark.line + 1
            result[key] = self.construct_object(value_node, deep=True)
        return result

    def construct_sequence(self, node: SequenceNode, deep: bool = False) -> LineList:
        result = LineList(
            self.construct_object(child, deep=True) for child in node.value
        )
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:seq", _StrictLoader.construct_sequence)


class _Located(Exception):
    def __init__(self, line: int, problem: str) -> None:
        self.line = line
        self.problem = problem


def _located(mark: Any, problem: str) -> _Located:
    return _Located(mark.line + 1, problem)


def load(path: str) -> Any:
    """Read ``path`` as strict YAML; raise ConfigError naming the line on any fault."""
    text = _read(path)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - strict safe loader
    except _Located as err:
        raise ConfigError(path, err.line, "yaml", err.problem) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        problem = (err.problem or err.context or "invalid YAML").strip()
        raise ConfigError(path, line, "yaml", _one_line(problem)) from None
    except yaml.YAMLError as err:
        raise ConfigError(path, None, "yaml", _one_line(str(err))) from None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            path, None, "file", "not found; pass the path of a workflows.yaml"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            path,
            None,
            "file",
            f"cannot be read ({err}); pass the path of a workflows.yaml",
        ) from None
    if len(text) > MAX_BYTES:
        raise ConfigError(
            path, None, "file", f"larger than {MAX_BYTES} bytes; split it"
        )
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split())


def line_of(document: Any, location: tuple[int | str, ...]) -> int | None:
    """Return the line of the deepest node on ``location`` that has one."""
    line = getattr(document, "line", None)
    node = document
    for part in location:
        if isinstance(node, LineDict) and isinstance(part, str) and part in node:
            line = node.key_lines[part]
            node = node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and part < len(node):
            line = node.item_lines[part]
            node = node[part]
        else:
            break
    return line
