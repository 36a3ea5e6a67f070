"""`onpolicy export pairs|samples RUN_DIR OUT`: a run's pairs or scored samples in the shapes other trainers read,
to train offline on the data an online run made (offline DPO on the same pairs, a reward model on the samples).

    pairs    TRL's conversational preference format: `prompt` (the chat messages the policy was given), `chosen`
             and `rejected` (one assistant message each); beside them `chosen_reward`, `rejected_reward`, `round`,
             `prompt_id`, `edited` (which side is an edit of the policy's response: none, chosen or rejected) and
             `corrector` (for an edited pair, the run's `pairs.correction.corrector`; else None). TRL's
             `DPOTrainer` and `RewardTrainer` take it as it is (they drop the columns they do not know).
    samples  TRL's conversational prompt-completion shape (its unpaired preference format, KTO's, less the
             `label` a threshold on the reward would give): `prompt`, `completion` (one assistant message);
             beside them `reward` (None where the reward failed, `failure` says why), `round`, `prompt_id`,
             `group` (the group's place among its round's), `sample` (the sample's in its group), `finish_reason`.

Only complete rounds are exported (their line in rounds.jsonl: `onpolicy.run.rundir`), and the run directory is
only read: a job may be running in it, and what it has of a round in flight is never exported. samples.jsonl
holds no prompt text: a sample's prompt comes from its prompt's pairs in the exported rounds (what the run trained
on), or else from the run's prompt source as its config.yaml names it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from onpolicy.errors import OnpolicyError
from onpolicy.run import files
from onpolicy.run.rundir import RunDirectory
from onpolicy.types import Pair

FORMATS = ("datasets", "parquet", "jsonl")
_SUFFIX_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}  # OUT's suffix; any other: a datasets folder
_ROUNDS = re.compile(r"([0-9]+)(-([0-9]*))?")
_SAMPLE_KEYS = ("prompt_id", "sample", "reward", "failure", "text", "finish_reason")


@dataclasses.dataclass(frozen=True)
class Exported:
    """What an export wrote, and the rounds asked for that it left out because they are not complete."""

    kind: str
    out: pathlib.Path
    format: str
    rows: int
    rounds: tuple[int, ...]
    left_out: tuple[int, ...] = ()

    def describe(self) -> str:
        line = f"{self.rows} {self.kind} of round(s) {spans(self.rounds)} -> {self.out} ({self.format})"
        if self.left_out:
            line += f"; round(s) {spans(self.left_out)} not complete, left out"
        return line


def parse_rounds(text: str | None) -> tuple[int, int | None]:
    """`--rounds` as (first, last): "A-B", "A" (that round alone) or "A-" (from A on: last None); None: all."""
    if text is None:
        return 1, None
    match = _ROUNDS.fullmatch(text.strip())
    if match is None:
        raise OnpolicyError(f"--rounds {text!r}: give A-B, A or A- (round numbers, e.g. 2-5)")
    first = int(match.group(1))
    last = first if match.group(2) is None else int(match.group(3)) if match.group(3) else None
    if first < 1 or (last is not None and last < first):
        raise OnpolicyError(f"--rounds {text}: rounds count from 1 (0 is the initial evaluation), and A-B needs A <= B")
    return first, last


def output_format(out: pathlib.Path, given: str | None) -> str:
    """The format `given`, else the one OUT's suffix names (.parquet, .jsonl), else a datasets folder."""
    if given is None:
        return _SUFFIX_FORMATS.get(out.suffix.lower(), "datasets")
    if given not in FORMATS:
        raise OnpolicyError(f"--format {given}: give {', '.join(FORMATS)}")
    return given


def export(
    kind: str,
    run_dir: pathlib.Path,
    out: pathlib.Path,
    rounds: str | None = None,
    fmt: str | None = None,
    overwrite: bool = False,
) -> Exported:
    """Write the `kind` rows ("pairs" or "samples") of `run_dir`'s complete rounds within `rounds` (`parse_rounds`)
    to `out` in `fmt` (`output_format`), whole or not at all. An existing `out` is replaced only with `overwrite`,
    and only where it is an earlier export (never a part of the run directory)."""
    first, last = parse_rounds(rounds)
    fmt = output_format(out, fmt)
    if not RunDirectory.holds_run(run_dir):
        raise OnpolicyError(f"{run_dir} holds no run (no config.yaml)")
    _check_out(out, fmt, run_dir, overwrite)
    run = RunDirectory(run_dir)
    complete = [record["round"] for record in run.read_rounds(repair=False) if record["round"] >= 1]
    chosen = tuple(n for n in complete if n >= first and (last is None or n <= last))
    if not chosen:
        raise OnpolicyError(
            f"{run_dir}: no complete round in --rounds {rounds or 'all'} (complete: {spans(complete) or 'none yet'})"
        )
    rows = _ROWS[kind](run, chosen)
    if not rows:
        raise OnpolicyError(f"{run_dir}: round(s) {spans(chosen)} hold no {kind}: nothing to export")
    _write(rows, out, fmt)
    end = max([*run.round_folders(), *complete]) if last is None else last  # a round in flight, or those asked for
    left_out = tuple(n for n in range(first, end + 1) if n not in complete)
    return Exported(kind, out, fmt, len(rows), chosen, left_out)


def spans(numbers: Sequence[int]) -> str:
    """Round numbers as ranges: [1, 2, 3, 5] -> "1-3, 5"."""
    parts: list[list[int]] = []
    for n in sorted(numbers):
        if parts and n == parts[-1][-1] + 1:
            parts[-1][1:] = [n]
        else:
            parts.append([n])
    return ", ".join("-".join(map(str, part)) for part in parts)


def pair_rows(run: RunDirectory, rounds: Sequence[int]) -> list[dict[str, Any]]:
    """The pairs of `rounds` in TRL's conversational preference format, with their rewards and provenance."""
    corrector = ((run.read_config().get("pairs") or {}).get("correction") or {}).get("corrector")
    return [
        {
            "prompt": [dict(turn) for turn in pair.messages],
            "chosen": [_assistant(pair.chosen)],
            "rejected": [_assistant(pair.rejected)],
            "chosen_reward": float(pair.chosen_reward),
            "rejected_reward": float(pair.rejected_reward),
            "round": n,
            "prompt_id": pair.prompt_id,
            "edited": pair.edited,
            "corrector": corrector if pair.corrected else None,
        }
        for n in rounds
        for pair in _round_pairs(run, n)
    ]


def sample_rows(run: RunDirectory, rounds: Sequence[int]) -> list[dict[str, Any]]:
    """Every sample of `rounds` as a conversational prompt-completion row with its reward."""
    rows = []
    for n in rounds:
        group = -1
        for sample in _round_samples(run, n):
            group += sample["sample"] == 0  # write_samples lists each group's samples in turn, from 0
            rows.append(
                {
                    "prompt": None,  # filled in below, once every prompt id is known
                    "completion": [_assistant(sample["text"])],
                    "reward": None if sample["reward"] is None else float(sample["reward"]),
                    "failure": None if sample["failure"] is None else _text(sample["failure"]),
                    "round": n,
                    "prompt_id": sample["prompt_id"],
                    "group": group,
                    "sample": sample["sample"],
                    "finish_reason": sample["finish_reason"],
                }
            )
    prompts = {row["prompt_id"]: row["prompt"] for row in pair_rows(run, rounds)}
    missing = {row["prompt_id"] for row in rows} - prompts.keys()
    if missing:
        prompts.update(_source_prompts(run, missing))
    for row in rows:
        row["prompt"] = prompts[row["prompt_id"]]
    return rows


_ROWS: Mapping[str, Callable[[RunDirectory, Sequence[int]], list[dict[str, Any]]]] = {
    "pairs": pair_rows,
    "samples": sample_rows,
}


def _round_pairs(run: RunDirectory, n: int) -> list[Pair]:
    _check_present(run, n, "pairs.jsonl")
    return run.read_pairs(n)


def _round_samples(run: RunDirectory, n: int) -> list[dict[str, Any]]:
    """The rows of round `n`'s samples.jsonl, each holding what a sample row needs (an edited one stops the
    export, naming it)."""
    name = _check_present(run, n, "samples.jsonl")
    rows = run.read_jsonl(name)
    for number, row in enumerate(rows, start=1):
        lacking = [key for key in _SAMPLE_KEYS if key not in row]
        if lacking:
            raise OnpolicyError(
                f"{run.path / name}, row {number}: no {', '.join(lacking)}; restore it as onpolicy wrote it"
            )
    return rows


def _check_present(run: RunDirectory, n: int, name: str) -> str:
    """`name` of complete round `n`, relative to the run directory; a missing one stops the export, naming it."""
    relative = f"{run.round_folder(n)}/{name}"
    if not (run.path / relative).is_file():
        raise OnpolicyError(
            f"{run.path / relative} is missing, though round {n} is complete; restore it, or leave the round out"
        )
    return relative


def _source_prompts(run: RunDirectory, ids: set[str]) -> dict[str, Any]:
    """The messages of the prompts `ids` from the run's prompt source (config.yaml's prompts.path or items)."""
    from pydantic import ValidationError

    from onpolicy.config import PromptsConfig
    from onpolicy.prompts import load_prompts

    example = (
        f"{len(ids)} prompt(s) gave no pair in these rounds (e.g. {min(ids)!r}), so their text comes from the "
        "run's prompt source"
    )
    try:
        records = load_prompts(PromptsConfig.model_validate(run.read_config().get("prompts")))
    except (ValidationError, OnpolicyError) as exc:
        raise OnpolicyError(f"{example}, which cannot be read: {' '.join(str(exc).split())}") from None
    found: dict[str, Any] = {}
    for record in records:
        if record.id in ids:
            messages = [dict(turn) for turn in record.messages]
            if found.setdefault(record.id, messages) != messages:
                raise OnpolicyError(f"{example}, where id {record.id!r} names two different prompts")
    if ids - found.keys():
        lost = sorted(ids - found.keys())
        raise OnpolicyError(f"{example}, which no longer holds id(s) {', '.join(map(repr, lost[:3]))}")
    return found


def _check_out(out: pathlib.Path, fmt: str, run_dir: pathlib.Path, overwrite: bool) -> None:
    """Refuse an OUT that exists, unless `overwrite` and it is an earlier export of the same kind of path."""
    if not out.exists():
        return
    if not overwrite:
        raise OnpolicyError(f"{out} exists; give another OUT, or --overwrite to replace it")
    target, run = out.resolve(), run_dir.resolve()
    if target == run or run in target.parents or target in run.parents:
        raise OnpolicyError(f"{out} is part of the run directory {run_dir} (or holds it): export to a path outside it")
    if fmt == "datasets" and not (out / "dataset_info.json").is_file():
        raise OnpolicyError(f"{out} is not a saved dataset: --overwrite replaces only an earlier export; remove it")
    if fmt != "datasets" and not out.is_file():
        raise OnpolicyError(f"{out} is not a file: --format {fmt} writes one; give another OUT")


def _write(rows: list[dict[str, Any]], out: pathlib.Path, fmt: str) -> None:
    """Write `rows` whole or not at all: under a temporary name, renamed into place once complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        files.write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return
    import datasets

    tmp = out.with_name(f".{out.name}.tmp")
    _remove(tmp)  # what an interrupted export left
    dataset = datasets.Dataset.from_list(rows)
    try:
        if fmt == "parquet":
            dataset.to_parquet(str(tmp))
            os.replace(tmp, out)
        else:
            dataset.save_to_disk(str(tmp))
            files.replace_folder(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: pathlib.Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": _text(text)}


def _text(text: str) -> str:
    """`text` with any lone surrogate (a run file holds one as its JSON escape, e.g. in an edit or a judge's
    failure) spelled as that escape: no Parquet, Arrow or UTF-8 file holds the character itself."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
