"""Prompt sources: a JSONL, Parquet or text file, a Hugging Face dataset saved to a folder, or a list in the
config, read into `PromptRecord`s.

A record's prompt is its `prompts.field` (default "prompt") as a string, or a `messages` list of chat turns
ending with a user turn. Its other fields are kept as metadata (rewards see them); `id` names it, else its
position. The order is shuffled once with the run's seed and each round takes the next `per_round` prompts,
wrapping around.
"""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

from onpolicy.config import PromptsConfig
from onpolicy.errors import OnpolicyError
from onpolicy.jsonable import jsonable
from onpolicy.types import PromptRecord
from onpolicy.untrusted import parse_json


def load_prompts(config: PromptsConfig, seed: int = 0) -> list[PromptRecord]:
    """All prompts of the run, in the order rounds will take them."""
    if config.items is not None:
        raw, source = list(config.items), "prompts.items"
    else:
        path = pathlib.Path(config.path)
        raw = _read_dataset(path, config.split) if path.is_dir() else _read_file(path)
        source = config.path
    records = [_to_record(item, i, config, source) for i, item in enumerate(raw)]
    if not records:
        raise OnpolicyError(f"{source} holds no prompts")
    if config.shuffle:
        random.Random(seed).shuffle(records)
    return records


def prompts_for_round(records: Sequence[PromptRecord], round_index: int, per_round: int | None) -> list[PromptRecord]:
    """The prompts of round `round_index` (0-based): the next `per_round` of the order, wrapping around."""
    if per_round is None:
        return list(records)
    start = round_index * per_round
    return [records[(start + i) % len(records)] for i in range(per_round)]


def _read_file(path: pathlib.Path) -> list[Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(parse_json(line, f"{path}, line {n}"))
                    except json.JSONDecodeError as exc:
                        raise OnpolicyError(f"{path}, line {n}: not valid JSON ({exc.msg})") from None
            return rows
        if suffix == ".parquet":
            return _read_parquet(path)
        if suffix in {".txt", ".text"}:
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise OnpolicyError(
            f"prompt file {path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 4]!r}); "
            "save it as UTF-8"
        ) from None
    except OSError as exc:
        raise OnpolicyError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None
    raise OnpolicyError(f"prompt file {path}: unknown format '{suffix}' (use .jsonl, .parquet or .txt)")


def _read_dataset(path: pathlib.Path, split: str) -> list[Any]:
    """The rows of a Hugging Face dataset saved with `save_to_disk` (one split of a DatasetDict)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise OnpolicyError(f"prompts folder {path} is not a dataset saved by datasets' save_to_disk: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise OnpolicyError(f"prompts: the dataset in {path} has no split {split!r} (it has {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded.to_list()


def _read_parquet(path: pathlib.Path) -> list[Any]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except pyarrow.ArrowException as exc:
        raise OnpolicyError(f"prompt file {path} is not a readable Parquet file: {exc}") from None


def _to_record(item: Any, index: int, config: PromptsConfig, source: str) -> PromptRecord:
    """The record of `item`, with everything of it that reaches the run directory's files in the form they hold
    (`jsonable`: no value JSON cannot hold, no lone surrogate) before round 1, not at the end of a round."""
    where = f"{source}, prompt {index + 1}"
    if isinstance(item, str):
        item = {config.field: item}
    if not isinstance(item, Mapping):
        raise OnpolicyError(f"{where}: expected a string or a record, got {type(item).__name__}")
    if "id" in item:
        shown = repr(item["id"])
        where += f" (id {shown[:40]}{'...' if len(shown) > 40 else ''})"
    fields = {k: v for k, v in item.items() if k not in {config.field, "messages", "id"}}
    metadata = {
        str(jsonable(k, f"{where}, a field's name")): jsonable(v, f"{where}, field {k!r}") for k, v in fields.items()
    }
    if isinstance(item.get("messages"), list):
        messages = [_turn(m, f"{where}, message {i + 1}") for i, m in enumerate(item["messages"])]
        if not messages:
            raise OnpolicyError(f"{where}: 'messages' is empty; give the chat turns, ending with the user's")
        if messages[-1]["role"] != "user":
            raise OnpolicyError(f"{where}: the last message must be the user's turn")
    elif isinstance(item.get(config.field), str) and item[config.field].strip():
        messages = [{"role": "user", "content": jsonable(item[config.field], f"{where}, field {config.field!r}")}]
    else:
        raise OnpolicyError(
            f"{where}: no prompt text: expected a non-empty string field '{config.field}' or a 'messages' list "
            f"(fields present: {', '.join(map(str, item)) or 'none'}); set prompts.field to the right column"
        )
    if config.system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": config.system_prompt})
    prompt_id = str(jsonable(item.get("id", index), f"{where}, field 'id'"))
    return PromptRecord(id=prompt_id, messages=tuple(messages), metadata=metadata)


def _turn(message: Any, where: str) -> dict[str, Any]:
    """A chat turn as a dict with a text `role` and `content` (and whatever else it carries), in its JSON form."""
    if not isinstance(message, Mapping):
        raise OnpolicyError(
            f"{where}: 'messages' must be a list of {{role, content}} turns, not of {type(message).__name__} "
            f"({message!r:.40})"
        )
    for key in ("role", "content"):
        if not isinstance(message.get(key), str):
            got = "none" if key not in message else type(message[key]).__name__
            raise OnpolicyError(f"{where}: a turn's {key!r} must be text (got {got}); give {{role, content}} turns")
    return jsonable(dict(message), where)
