"""JSON and YAML that people write or edit (configs, prompt files, Label Studio exports, a run directory's own
files), parsed so that no shape of it ends in a traceback.

The parsers recurse: a few hundred `[` overflow Python's stack (`RecursionError`), YAML's anchors and aliases can
make a list hold itself (`a: &a [*a]`) or repeat one subtree into billions of nodes (`b: [*a, *a, ...]` nested),
and everything that walks the data later (validation, redaction, writing) recurses or expands too. Whatever is
nested deeper than `MAX_DEPTH`, holds itself, or repeats its aliases' nodes more than `MAX_REPEATS` times is
refused here as `UnreadableData`, one line naming the file. Syntax errors stay the parsers' own, for the caller
to word.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml

from onpolicy.errors import OnpolicyError

MAX_DEPTH = 100  # far beyond any config or record, far below Python's recursion limit
MAX_REPEATS = 100_000  # a few aliases used a few times each; not an alias bomb


class UnreadableData(OnpolicyError):
    """Data nested too deep, holding itself, or expanding past bounds through YAML aliases."""


def parse_json(text: str | bytes, where: str) -> Any:
    """`text` as JSON (`json.JSONDecodeError` as json raises it), its nesting checked (`check_nesting`)."""
    return _checked(json.loads, text, where)


def parse_yaml(text: str, where: str) -> Any:
    """`text` as YAML with `yaml.safe_load` (`yaml.YAMLError` as it raises it), its nesting checked."""
    return _checked(yaml.safe_load, text, where)


def _checked(parse: Callable[[Any], Any], text: str | bytes, where: str) -> Any:
    try:
        value = parse(text)
    except RecursionError:
        raise _too_deep(where) from None
    check_nesting(value, where)
    return value


def check_nesting(value: Any, where: str) -> None:
    """Refuse `value` (parsed data: dicts, lists, scalars) when it is nested deeper than `MAX_DEPTH`, holds
    itself, or revisits shared nodes (YAML aliases) more than `MAX_REPEATS` times."""
    seen: set[int] = set()
    repeats = 0

    def walk(node: Any, depth: int, ancestors: set[int]) -> None:
        nonlocal repeats
        if not isinstance(node, (dict, list)):
            return
        if id(node) in ancestors:
            raise UnreadableData(f"{where}: holds itself (a YAML alias inside its own anchor), which is not data")
        if depth >= MAX_DEPTH:
            raise _too_deep(where)
        if id(node) in seen:
            repeats += 1
            if repeats > MAX_REPEATS:
                raise UnreadableData(
                    f"{where}: its YAML aliases repeat the same values over {MAX_REPEATS} times (an alias bomb?); "
                    "write the data out instead"
                )
        seen.add(id(node))
        ancestors.add(id(node))
        for child in node.values() if isinstance(node, dict) else node:
            walk(child, depth + 1, ancestors)
        ancestors.discard(id(node))

    walk(value, 0, set())


def _too_deep(where: str) -> UnreadableData:
    return UnreadableData(f"{where}: nested deeper than {MAX_DEPTH} levels, which is no config or record")
