"""Strict YAML reading for files people write: no aliases, no duplicate keys, every value located.

`load_located` returns the data and a map from each value's path to its line, so that a validation
error on `recommendations[2].text` can point at the line a person has to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ncpi_workflow.errors import UserError

LocatedPath = tuple[str | int, ...]


class _NoAliasLoader(yaml.SafeLoader):
    """Refuses aliases outright: they are never needed in a report and they make alias bombs possible."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                None, None, "YAML aliases (*name) are not allowed in this file", event.start_mark
            )
        return super().compose_node(parent, index)


def _line(node: Node) -> int:
    return node.start_mark.line + 1


PLAIN_TAGS = {
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq")
}


def _build(node: Node, path: LocatedPath, lines: dict[LocatedPath, int], constructor: SafeConstructor) -> Any:
    lines[path] = _line(node)
    if node.tag == "tag:yaml.org,2002:merge":
        raise _located(node, "YAML merge keys (<<) are not allowed in this file")
    if node.tag not in PLAIN_TAGS:
        # Explicit tags (!!python/..., !custom) would ask a looser reader to build objects: refuse them all.
        raise _located(node, f"YAML tag {node.tag!r} is not allowed in this file")
    if isinstance(node, MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _build(key_node, path + ("<key>",), {}, constructor)
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise _located(key_node, f"mapping keys must be plain words, got {key!r} (quote it if it is a word)")
            if key in result:
                raise _located(key_node, f"duplicate key {key!r} (first at line {lines[path + (key,)]})")
            result[key] = _build(value_node, path + (key,), lines, constructor)
        return result
    if isinstance(node, SequenceNode):
        return [_build(item, path + (i,), lines, constructor) for i, item in enumerate(node.value)]
    assert isinstance(node, ScalarNode)
    try:
        return constructor.construct_object(node, deep=True)
    except (ValueError, yaml.YAMLError) as exc:
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _located(node, f"cannot read {node.value!r}: {reason}") from None


class LocatedYAMLError(Exception):
    def __init__(self, line: int | None, reason: str):
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _located(node: Node, reason: str) -> LocatedYAMLError:
    return LocatedYAMLError(_line(node), reason)


def load_located(file: Path, max_bytes: int) -> tuple[Any, dict[LocatedPath, int]]:
    """Parse a YAML file strictly. Raises UserError naming the file, the line and the reason."""
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{file}: no such file") from None
    except OSError as exc:
        raise UserError(f"{file}: cannot read: {exc.strerror}") from None
    if file.is_dir():
        raise UserError(f"{file}: is a directory, not a report file")
    if size > max_bytes:
        raise UserError(f"{file}: file is {size:,} bytes, over the {max_bytes:,}-byte limit for a report")
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{file}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    if "\x00" in text:
        raise UserError(f"{file}: contains NUL bytes; a report is UTF-8 text")
    try:
        loader = _NoAliasLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}" if mark else str(file)
        problem = exc.problem or exc.context or "invalid YAML"
        raise UserError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{file}: not valid YAML: {exc}") from None
    if root is None:
        raise UserError(f"{file}: the file is empty")
    lines: dict[LocatedPath, int] = {}
    try:
        data = _build(root, (), lines, SafeConstructor())
    except LocatedYAMLError as exc:
        raise UserError(f"{file}:{exc.line}: {exc.reason}") from None
    return data, lines


def line_for(lines: dict[LocatedPath, int], path: LocatedPath) -> int | None:
    """The line of the value at `path`, or of its nearest located ancestor."""
    while path not in lines and path:
        path = path[:-1]
    return lines.get(path)
