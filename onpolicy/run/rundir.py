"""The run directory: everything a run leaves behind, each file written whole or not at all.

    DIR/config.yaml                 the resolved config (absolute paths, every default filled in)
    DIR/rounds.jsonl                one JSON object per completed round: `round` plus every logged metric
    DIR/rounds/0001/samples.jsonl   every sample of round 1 with its reward (or why it has none)
    DIR/rounds/0001/pairs.jsonl     the pairs round 1 trained on
    DIR/checkpoints/round-0002/     the policy after round 2 (the last `checkpoint.keep_last`, every N-th, and
                                    the one the reference comes from); with `ref.refresh: mix`, the reference
                                    round 2 trained against in its reference/
    DIR/state.json                  what resuming needs besides the files above: the W&B run id
    DIR/status.json                 what the job is doing now (round, phase, how far), for whoever watches it
    DIR/final/                      the last policy: an ordinary HF folder that transformers and vLLM load
    DIR/wandb/                      the W&B run (offline runs: upload later with `wandb sync`)
    DIR/trainer-data/               with several training processes: the round's training rows, which they all
                                    read (so DIR must be on storage every node sees); removed when the job ends

Files are written to a temporary name, fsynced and renamed into place, and the rename itself is fsynced (the
directory's entry), so that what a power cut leaves is the old file or the new one, whole. A round is complete
when its line is in `rounds.jsonl`, appended (and fsynced) only after its samples, pairs, evaluation and
checkpoint are in place; anything of a later round is unfinished work that resuming discards.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml

from onpolicy.errors import OnpolicyError
from onpolicy.run import files
from onpolicy.run.files import append_line, cut_torn_tail
from onpolicy.run.model_folders import is_whole_model_folder
from onpolicy.types import Pair, ScoredGroup, to_json
from onpolicy.untrusted import parse_json, parse_yaml

LABELS_FILE = "labels.jsonl"  # people's labels of a round's groups (onpolicy.human), kept through a crash
REFERENCE_FOLDER = "reference"  # in a round checkpoint: the mixed reference (`ref.refresh: mix`)
FINAL_FOLDER = "final"
SET_ASIDE_FOLDER = "set-aside"
FAILURE_SUFFIX = "_failure"  # an eval row's key for why a metric has no score
_ROUND_FOLDER = re.compile(r"[0-9]{4,}")  # rounds/0001; any other name there is not onpolicy's
_CHECKPOINT_FOLDER = re.compile(r"round-([0-9]{4,})")  # checkpoints/round-0001


@dataclasses.dataclass(frozen=True)
class Leftovers:
    """What `RunDirectory.discard_unfinished` did: the crash leftovers it removed, and the folder it moved the
    work of later rounds into (None: there was none to keep)."""

    removed: tuple[str, ...]
    set_aside: pathlib.Path | None


def default_run_dir(config_path: str | None) -> pathlib.Path:
    stem = pathlib.Path(config_path).stem if config_path else "run"
    return pathlib.Path("runs") / f"{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


class RunDirectory:
    """A run's directory. `secrets` (the config's: `Config.secrets()`) are masked in what rewards and judges
    said of a failure before it is written, as they are in what the job prints."""

    def __init__(self, path: pathlib.Path, secrets: Sequence[str] = ()) -> None:
        self.path = path
        self.secrets = tuple(secrets)

    @staticmethod
    def holds_run(path: pathlib.Path) -> bool:
        return (path / "config.yaml").exists()

    @classmethod
    def create(cls, path: pathlib.Path, config_yaml: str) -> RunDirectory:
        """A new run directory holding the resolved config. An existing run is never overwritten."""
        if (path / "rounds.jsonl").exists() or (path / "config.yaml").exists():
            raise OnpolicyError(f"{path} already holds a run; give another --run-dir (or remove it)")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OnpolicyError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
        run = cls(path)
        run.write_text("config.yaml", config_yaml)
        return run

    def write_text(self, name: str, text: str, durable: bool = True) -> pathlib.Path:
        """Write `name` whole or not at all; `durable` also fsyncs it before it takes the old one's place."""
        return files.write_text(self.path / name, text, durable)

    def write_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
        return self.write_text(name, "".join(map(_json_line, rows)))

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """The rows of a JSONL file this directory holds; none when it is missing."""
        path = self.path / name
        if not path.is_file():
            return []
        lines = _text(path).splitlines()
        fix = "restore the line (one JSON object per line, as onpolicy wrote it) or move the run aside"
        return [_json_object(line, f"{path}, line {n}", fix) for n, line in enumerate(lines, start=1) if line.strip()]

    def read_config(self) -> dict[str, Any]:
        """The config the run saved (config.yaml), as plain data."""
        file = self.path / "config.yaml"
        try:
            saved = parse_yaml(_text(file), str(file))
        except yaml.YAMLError as exc:
            raise OnpolicyError(f"{file} is not YAML ({_one_line(exc)}); {_SAVED_CONFIG}") from None
        if saved is not None and not isinstance(saved, dict):
            raise OnpolicyError(f"{file} holds a {type(saved).__name__}, not a config; {_SAVED_CONFIG}")
        return saved or {}

    def round_folder(self, round_number: int) -> str:
        return f"rounds/{round_number:04d}"

    def write_samples(self, round_number: int, scored: Sequence[ScoredGroup]) -> pathlib.Path:
        rows = (
            {
                "prompt_id": group.group.record.id,
                "sample": i,
                "reward": reward,
                "failure": None if failure is None else _redacted(failure, self.secrets),
                **to_json(sample),
            }
            for group in scored
            for i, (sample, reward, failure) in enumerate(zip(group.group.samples, group.rewards, group.failures))
        )
        return self.write_jsonl(f"{self.round_folder(round_number)}/samples.jsonl", rows)

    def write_eval(self, round_number: int, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Write round `round_number`'s eval answers (one row per prompt; a metric's failure under
        `NAME_failure`); returns the rows as written, failures with the secrets masked."""
        written = [{key: self._masked(key, value) for key, value in row.items()} for row in rows]
        self.write_jsonl(f"{self.round_folder(round_number)}/eval.jsonl", written)
        return written

    def _masked(self, key: str, value: Any) -> Any:
        return _redacted(value, self.secrets) if key.endswith(FAILURE_SUFFIX) and isinstance(value, str) else value

    def write_pairs(self, round_number: int, pairs: Sequence[Pair]) -> pathlib.Path:
        return self.write_jsonl(f"{self.round_folder(round_number)}/pairs.jsonl", map(to_json, pairs))

    def read_pairs(self, round_number: int) -> list[Pair]:
        """The pairs round `round_number` trained on, as `write_pairs` wrote them (none when it has no file)."""
        name = f"{self.round_folder(round_number)}/pairs.jsonl"
        try:
            return [Pair.from_json(row) for row in self.read_jsonl(name)]
        except (KeyError, TypeError, ValueError) as exc:
            raise OnpolicyError(
                f"{self.path / name} holds a line that is not a pair as onpolicy writes it ({exc!r}): restore the "
                "file or move the run aside"
            ) from None

    def append_round(self, record: Mapping[str, Any]) -> None:
        """Mark a round complete: one line in rounds.jsonl, on disk before this returns."""
        append_line(self.path / "rounds.jsonl", _json_line(record).rstrip("\n"))

    def read_rounds(self, repair: bool = True) -> list[dict[str, Any]]:
        """The completed rounds' records, in order. A last line cut short by a crash mid-append (no newline at
        its end) is not a record: it is dropped from the file (its round was not complete), unless `repair` is
        off (a reader beside a job that may be appending it). Anything else that is
        not a round's record (an edit, a disk error) stops with a message naming the line, and nothing changes:
        guessing which rounds it belonged to could discard finished work."""
        file = self.path / "rounds.jsonl"
        if not file.exists():
            return []
        data = file.read_bytes()
        *lines, torn = data.split(b"\n")
        records = []
        for number, line in enumerate(lines, start=1):
            record = _round_record(line)
            problem = _out_of_place(record, records[-1]["round"] if records else -1)
            if problem:
                raise OnpolicyError(
                    f"{file}, line {number}: {problem} ({line[:80]!r}). Only a crash's torn last line is repaired "
                    "on resume; this file was changed otherwise and nothing has been touched. Restore the line "
                    "(one JSON object per complete round, with its 'round') or move the run aside, then run again"
                )
            records.append(record)
        if torn and repair:
            cut_torn_tail(file)
        return records

    def last_complete_round(self, repair: bool = True) -> int:
        """The number of the last complete round: -1 when none is, 0 when only the initial evaluation is
        (`repair`: as `read_rounds`)."""
        return max((int(r["round"]) for r in self.read_rounds(repair)), default=-1)

    def read_state(self) -> dict[str, Any]:
        file = self.path / "state.json"
        if not file.exists():
            return {}
        fix = (
            "restore it, or delete it: the run then continues in a new W&B run and rebuilds final/ from its last "
            "checkpoint"
        )
        return _json_object(_text(file), str(file), fix)

    def write_state(self, **updates: Any) -> None:
        self.write_text("state.json", json.dumps({**self.read_state(), **updates}, indent=1) + "\n")

    def write_status(self, round_number: int, phase: str, **progress: Any) -> None:
        """What the job is doing now, and how far the phase is (`onpolicy.run.progress`). Not fsynced: it is for
        watching, never for resuming."""
        status = {"round": round_number, "phase": phase, "pid": os.getpid(), "time": time.time(), **progress}
        self.write_text("status.json", json.dumps(status) + "\n", durable=False)

    def discard_unfinished(self, last_complete: int) -> Leftovers:
        """Clear what lies beyond round `last_complete`, the last in rounds.jsonl. A crash leaves only the round
        in flight (its folder without its line) and temporary files: those are removed, people's labels kept.
        A round checkpoint beyond it, or the folder of a round after the next, is work `rounds.jsonl` lost (a
        crash just after a checkpoint, or a file shortened by hand or a bad copy): all of it is set aside,
        never deleted."""
        later_rounds = {
            n: f for n, f in self.round_folders().items() if n > last_complete and not _holds_only_labels(f)
        }  # people's labels kept for rounds to run again (by a crash or a set-aside) are no lost work
        later_checkpoints = {n: f for n, f in self.checkpoint_folders().items() if n > last_complete}
        removed = []
        aside = None
        if later_checkpoints or any(n > last_complete + 1 for n in later_rounds):
            aside = self._set_aside([], [*later_rounds.values(), *later_checkpoints.values()])
        else:
            for folder in later_rounds.values():
                removed += self._clear_round_folder(folder)
        for tmp in self._temporary_files():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
            removed.append(str(tmp.relative_to(self.path)))
        return Leftovers(tuple(removed), aside)

    def set_aside_rounds_after(self, round_number: int) -> pathlib.Path:
        """Move the records, files and checkpoints of the complete rounds after `round_number` into a folder of
        their own (returned), so that the run continues after `round_number` and nothing of them is deleted."""
        records = self.read_rounds()
        later = [record["round"] for record in records if record["round"] > round_number]
        folders = [self.path / self.round_folder(n) for n in later] + [self.checkpoint(n) for n in later]
        aside = self._set_aside([r for r in records if r["round"] > round_number], folders)
        self.write_jsonl("rounds.jsonl", [record for record in records if record["round"] <= round_number])
        return aside

    def round_folders(self) -> dict[int, pathlib.Path]:
        """The rounds/NNNN folders, by round (other names there are left alone)."""
        return {int(f.name): f for f in _listed(self.path / "rounds") if f.is_dir() and _ROUND_FOLDER.fullmatch(f.name)}

    def checkpoint_folders(self) -> dict[int, pathlib.Path]:
        """The round checkpoints, by round (other names in checkpoints/ are left alone)."""
        found = {}
        for folder in _listed(self.path / "checkpoints"):
            match = _CHECKPOINT_FOLDER.fullmatch(folder.name)
            if match and folder.is_dir():
                found[int(match.group(1))] = folder
        return found

    def _set_aside(self, records: Sequence[Mapping[str, Any]], folders: Iterable[pathlib.Path]) -> pathlib.Path:
        """Move `folders` (round folders, checkpoints) and `records` into a new folder of set-aside/, durably;
        a round folder's labels stay in place too, so that the round, run again, offers only the groups nobody
        labelled yet."""
        (self.path / SET_ASIDE_FOLDER).mkdir(exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-")
        aside = pathlib.Path(tempfile.mkdtemp(prefix=stamp, dir=self.path / SET_ASIDE_FOLDER))  # unique
        if records:
            files.write_text(aside / "rounds.jsonl", "".join(_json_line(record) for record in records))
        for folder in folders:
            if not folder.exists():
                continue
            target = aside / folder.parent.name / folder.name
            target.parent.mkdir(exist_ok=True)
            folder.rename(target)
            files.fsync_directory(target.parent)
            files.fsync_directory(folder.parent)
            if (target / LABELS_FILE).is_file():
                files.write_text(folder / LABELS_FILE, (target / LABELS_FILE).read_text(encoding="utf-8"))
        files.fsync_directory(aside)
        files.fsync_directory(aside.parent)
        return aside

    def _clear_round_folder(self, folder: pathlib.Path) -> list[str]:
        """Remove an unfinished round's folder, all but people's labels (the round, run again, shows only what
        is left to label); returns what went."""
        if not (folder / LABELS_FILE).is_file():
            shutil.rmtree(folder)
            return [str(folder.relative_to(self.path))]
        removed = []
        for part in sorted(folder.iterdir()):
            if part.name != LABELS_FILE:
                shutil.rmtree(part) if part.is_dir() else part.unlink()
                removed.append(str(part.relative_to(self.path)))
        return removed

    def _temporary_files(self) -> list[pathlib.Path]:
        """What an interrupted write left: `.NAME.tmp` where onpolicy writes (not in wandb/ or set-aside/)."""
        places = [self.path, self.path / "checkpoints", self.path / "rounds", *self.round_folders().values()]
        return [tmp for place in places for tmp in sorted(place.glob(".*.tmp"))]

    def checkpoint(self, round_number: int) -> pathlib.Path:
        return self.path / "checkpoints" / f"round-{round_number:04d}"

    def checkpoint_is_whole(self, round_number: int, adapters: Sequence[str] = ()) -> bool:
        """Whether round `round_number`'s checkpoint holds everything a resume loads (config, every weight
        file, the tokenizer; a PEFT adapter in each subfolder `adapters` names), each readable to its end
        (what a power cut before its files reached the disk breaks)."""
        return is_whole_model_folder(self.checkpoint(round_number), adapters=adapters)

    def save_checkpoint(self, round_number: int, save: Callable[[pathlib.Path], None]) -> pathlib.Path:
        return self.save_model(str(self.checkpoint(round_number).relative_to(self.path)), save)

    def prune_checkpoints(self, keep: Callable[[int], bool]) -> list[int]:
        """Delete the round checkpoints `keep` rejects, never the newest one; returns the rounds deleted."""
        rounds = sorted(self.checkpoint_folders())
        deleted = [n for n in rounds[:-1] if not keep(n)]
        for n in deleted:
            shutil.rmtree(self.checkpoint(n))
        return deleted

    def save_model(self, name: str, save: Callable[[pathlib.Path], None]) -> pathlib.Path:
        """Save a model folder via `save(folder)` into a temporary folder, fsync it (files and subfolders), then
        swap it into place in one step. A full disk stops with a message saying so, and leaves no half-written
        folder behind."""
        target = self.path / name
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            with files.space_checked(target):
                save(tmp)
                files.fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        files.replace_folder(tmp, target)
        return target

    def save_final(self, round_number: int, save: Callable[[pathlib.Path], None]) -> pathlib.Path:
        """Save the policy after round `round_number` as final/, and then note that round in state.json."""
        folder = self.save_model(FINAL_FOLDER, save)
        self.write_state(final_round=round_number)
        return folder

    def final_is_round(self, round_number: int) -> bool:
        """Whether final/ is there, whole, and the policy after round `round_number` (a job killed after a
        round's line but before its final/ was in place left the previous one, or none)."""
        folder = self.path / FINAL_FOLDER
        return self.read_state().get("final_round") == round_number and is_whole_model_folder(folder)


def _out_of_place(record: dict[str, Any] | None, previous: int) -> str | None:
    """Why `record` (None: unreadable) cannot follow round `previous` in rounds.jsonl; None when it can."""
    if record is None:
        return "it is not a round's JSON record"
    if record["round"] <= previous:
        return f"round {record['round']} follows round {previous}"
    return None


def _round_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(record, dict) or type(record.get("round")) is not int:
        return None
    return record


_SAVED_CONFIG = "it is the run's saved config: restore it, or start over with --fresh (which keeps the run aside)"


def _text(file: pathlib.Path) -> str:
    """A file of the run directory as text (one onpolicy wrote: UTF-8, unless something else changed it)."""
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OnpolicyError(
            f"{file} is not UTF-8 text (byte {exc.start}): it was changed since onpolicy wrote it; restore it or move "
            "the run aside"
        ) from None


def _json_object(text: str, where: str, fix: str) -> dict[str, Any]:
    """`text` as the JSON object onpolicy wrote there, or one line naming `where` and what to do (`fix`)."""
    try:
        value = parse_json(text, where)
    except json.JSONDecodeError as exc:
        raise OnpolicyError(f"{where}: not valid JSON ({exc.msg}); {fix}") from None
    if not isinstance(value, dict):
        raise OnpolicyError(f"{where}: holds a JSON {type(value).__name__}, not the object onpolicy wrote; {fix}")
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _redacted(text: str, secrets: Sequence[str]) -> str:
    from onpolicy.config.redaction import redact_text  # here: onpolicy.config's package imports this module

    return redact_text(text, secrets)


def _holds_only_labels(folder: pathlib.Path) -> bool:
    return [part.name for part in folder.iterdir()] == [LABELS_FILE]


def _listed(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _json_line(record: Mapping[str, Any]) -> str:
    """`record` as a line of JSON, its text as it is but for lone surrogates, which no UTF-8 file holds: written
    as their JSON escapes (which json reads back as they were). The inputs are refused with them before round 1
    (`onpolicy.jsonable`); what a round makes can still hold one (a judge's answer with a "\\ud800" escape, quoted
    in a sample's failure), and must not stop the round once its work is done."""
    text = json.dumps(dict(record), ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text) + "\n"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds a pair as one character: these are halves
