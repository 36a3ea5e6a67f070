"""The machinery behind `onpolicy.config.load_config`: reading the YAML, applying `key.path=value` overrides,
making relative paths absolute, and turning pydantic's validation errors into one message that names the key,
where it came from, and the nearest valid key for a typo.

It works on plain data (the YAML's dicts and lists) and on the key names it is given, so that the schema in
`onpolicy.config` stays the one place that knows the config's shape.
"""

from __future__ import annotations

import difflib
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from onpolicy.config.sections import is_template_text
from onpolicy.errors import ConfigError
from onpolicy.jsonable import lone_surrogate
from onpolicy.untrusted import parse_yaml
from reward import Needs, RewardConfigError, reward_needs

# Keys whose relative paths are resolved against the YAML file's folder (or the working directory).
PATH_KEYS = (
    ("model", "path"),
    ("model", "cache_dir"),
    ("model", "chat_template"),  # unless it holds the template itself
    ("prompts", "path"),
    ("eval", "prompts", "path"),
    ("generation", "server", "sync_dir"),
)


def read_yaml(path: pathlib.Path) -> dict[str, Any]:
    """A config file's mapping, with its relative paths made absolute against the file's folder."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not a {type(loaded).__name__}")
    data = loaded or {}
    check_text(data, str(path))  # before a path is resolved: the file system takes no lone surrogate either
    resolve_paths(data, path.parent.resolve())
    resolve_reward_files(data, path.parent.resolve())
    return data


def check_text(data: Any, source: str, key: str = "") -> None:
    """Refuse a string no file can hold as UTF-8 (a lone surrogate, from an escape like "\\ud800"), in a value or
    a key, naming its key: it would otherwise fail when the run directory's files are written."""
    if isinstance(data, dict):
        for name, value in data.items():
            dotted = f"{key}.{name}" if key else str(name)
            if isinstance(name, str) and (at := lone_surrogate(name)) is not None:
                raise ConfigError(
                    f"key {dotted!r} in {source}: holds {name[at]!r}, half of a UTF-16 pair (a lone surrogate), "
                    "which is not text"
                )
            check_text(value, source, dotted)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_text(value, source, f"{key}[{i}]")
    elif isinstance(data, str) and (at := lone_surrogate(data)) is not None:
        raise ConfigError(
            f"'{key}' in {source}: holds {data[at]!r}, half of a UTF-16 pair (a lone surrogate), which is not text"
        )


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, str]:
    """Set each `key.path=value` in `data` (relative paths against the working directory); {key: override}."""
    override_keys: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        check_text({key: value}, f"command-line override {item!r}")
        override_keys[key] = item
        set_dotted(data, key, value, item)
        if key in {".".join(k) for k in PATH_KEYS}:
            resolve_paths(data, pathlib.Path.cwd(), only=key)
    resolve_reward_files(data, pathlib.Path.cwd())
    return override_keys


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    try:
        value = parse_yaml(raw, f"the value of override {key.strip()!r}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any, item: str) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} has no item {part}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} is not a section")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def resolve_paths(data: dict[str, Any], base: pathlib.Path, only: str | None = None) -> None:
    for *sections, key in PATH_KEYS:
        if only is not None and only != ".".join((*sections, key)):
            continue
        node: Any = data
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key), str) and not is_template_text(node[key]):
            candidate = pathlib.Path(node[key]).expanduser()
            node[key] = str(candidate if candidate.is_absolute() else (base / candidate).resolve())


def resolve_reward_files(data: dict[str, Any], base: pathlib.Path) -> None:
    """`file.py:function` reward names and eval metric functions are files too, and so are the arguments a reward
    declares as paths (`Needs.paths`: a reward model's `path`, a local judge's `model`): make them absolute, like
    the other paths, in the reward terms among a term's arguments too (a `human` term's `fallback`)."""
    evaluation = data.get("eval")
    metrics = evaluation.get("metrics") if isinstance(evaluation, dict) else None
    for metric in metrics if isinstance(metrics, list) else []:
        if isinstance(metric, dict) and isinstance(metric.get("function"), str):
            metric["function"] = _absolute_py_name(metric["function"], base)
    _resolve_term_files(data.get("reward"), base)
    if isinstance(evaluation, dict):
        _resolve_term_files(evaluation.get("reward"), base)


def _resolve_term_files(terms: Any, base: pathlib.Path) -> None:
    for term in terms if isinstance(terms, list) else []:
        if not isinstance(term, dict):
            continue
        if isinstance(term.get("name"), str):
            term["name"] = _absolute_py_name(term["name"], base)
        args = term.get("args")
        if not isinstance(args, dict):
            continue
        needs = declared_needs(term)
        for key in needs.paths:
            if isinstance(args.get(key), str) and not pathlib.Path(args[key]).expanduser().is_absolute():
                args[key] = str((base / pathlib.Path(args[key]).expanduser()).resolve())
        for key in needs.rewards:
            _resolve_term_files(args.get(key), base)


def declared_needs(term: Mapping[str, Any]) -> Needs:
    """What a reward term, as the YAML gives it (not yet checked), declares it needs; nothing for a name that is
    not a built-in (user code is imported when the config is checked, not when it is read) or for arguments its
    reward refuses (the check says so later)."""
    name, args = term.get("name"), term.get("args")
    if not isinstance(name, str) or ":" in name:
        return Needs()
    try:
        return reward_needs(name, args if isinstance(args, dict) else {})
    except RewardConfigError:
        return Needs()


def _absolute_py_name(name: str, base: pathlib.Path) -> str:
    """`file.py:function` with the file made absolute against `base`; any other name as it is."""
    file, sep, function = name.rpartition(":")
    if sep and file.endswith(".py") and not pathlib.Path(file).expanduser().is_absolute():
        return f"{(base / pathlib.Path(file).expanduser()).resolve()}:{function}"
    return name


def explain(exc: ValidationError, source: str, override_keys: dict[str, str], valid_keys: Sequence[str]) -> str:
    """One line per validation error, naming the key and where it came from; `valid_keys` (spelled
    `section.key`, `section[].key`) are the candidates for a mistyped key."""
    lines = []
    for error in exc.errors():
        loc = _dotted(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        where = _where(loc, message, source, override_keys)
        if error["type"] == "extra_forbidden":
            hint = suggest(loc, valid_keys)
            lines.append(f"unknown key '{loc}' in {where}" + (f"; did you mean '{hint}'?" if hint else ""))
        elif error["type"] == "missing":
            lines.append(f"missing key '{loc}' in {where}")
        elif error["type"] == "value_error":  # cross-field checks: their message names the keys
            lines.append(f"{where}: {message}")
        else:
            got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
            lines.append(f"'{loc}' in {where}: {message}{got}")
    return lines[0] if len(lines) == 1 else "invalid config:\n  " + "\n  ".join(lines)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (isinstance(part, str) and (part.startswith("function-") or part in {"str", "dict[str,any]"})):
            out += f".{part}" if out else str(part)
    return out


def _where(loc: str, message: str, source: str, override_keys: dict[str, str]) -> str:
    """The command-line override an error comes from, else the config file."""
    plain = loc.replace("[", ".").replace("]", "")
    for key, item in override_keys.items():
        if plain and (plain == key or plain.startswith(key + ".") or key.startswith(plain + ".")):
            return f"command-line override '{item}'"
        if not plain and key in message:
            return f"command-line override '{item}'"
    return source


def suggest(loc: str, valid_keys: Sequence[str]) -> str | None:
    """The valid key nearest to a mistyped one (same section first, then anywhere), spelled like `loc`."""
    section, _, leaf = loc.rpartition(".")
    schema_section = re.sub(r"\[\d+\]", "[]", section)  # reward[0] -> reward[]
    siblings = [c.rpartition(".")[2] for c in valid_keys if c.rpartition(".")[0] == schema_section]
    match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if match:
        return f"{section}.{match[0]}" if section else match[0]
    match = difflib.get_close_matches(f"{schema_section}.{leaf}".lstrip("."), valid_keys, n=1, cutoff=0.6)
    if match:
        return match[0]
    by_leaf = [c for c in valid_keys if c.rpartition(".")[2] == leaf]
    return by_leaf[0] if by_leaf else None
