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

import datetime
import errno
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from onpolicy.errors import OnpolicyError
from onpolicy.types import Pair, ScoredGroup, to_json

LABELS_FILE = "labels.jsonl"  # people's labels of a round's groups (onpolicy.human), kept through a crash
REFERENCE_FOLDER = "reference"  # in a round checkpoint: the mixed reference (`ref.refresh: mix`)


def default_run_dir(config_path: str | None) -> pathlib.Path:
    stem = pathlib.Path(config_path).stem if config_path else "run"
    return pathlib.Path("runs") / f"{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


class RunDirectory:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

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
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
        if durable:
            _fsync_directory(target.parent)
        return target

    def write_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
        return self.write_text(name, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """The rows of a JSONL file this directory holds; none when it is missing."""
        path = self.path / name
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def round_folder(self, round_number: int) -> str:
        return f"rounds/{round_number:04d}"

    def write_samples(self, round_number: int, scored: Sequence[ScoredGroup]) -> pathlib.Path:
        rows = (
            {
                "prompt_id": group.group.record.id,
                "sample": i,
                "reward": reward,
                "failure": failure,
                **to_json(sample),
            }
            for group in scored
            for i, (sample, reward, failure) in enumerate(zip(group.group.samples, group.rewards, group.failures))
        )
        return self.write_jsonl(f"{self.round_folder(round_number)}/samples.jsonl", rows)

    def write_pairs(self, round_number: int, pairs: Sequence[Pair]) -> pathlib.Path:
        return self.write_jsonl(f"{self.round_folder(round_number)}/pairs.jsonl", map(to_json, pairs))

    def append_round(self, record: Mapping[str, Any]) -> None:
        """Mark a round complete: one line in rounds.jsonl, on disk before this returns."""
        append_line(self.path / "rounds.jsonl", json.dumps(dict(record), ensure_ascii=False))

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
            _cut_torn_tail(file)
        return records

    def last_complete_round(self) -> int:
        """The number of the last complete round: -1 when none is, 0 when only the initial evaluation is."""
        return max((int(r["round"]) for r in self.read_rounds()), default=-1)

    def read_state(self) -> dict[str, Any]:
        file = self.path / "state.json"
        return json.loads(file.read_text(encoding="utf-8")) if file.exists() else {}

    def write_state(self, **updates: Any) -> None:
        self.write_text("state.json", json.dumps({**self.read_state(), **updates}, indent=1) + "\n")

    def write_status(self, round_number: int, phase: str, **progress: Any) -> None:
        """What the job is doing now, and how far the phase is (`onpolicy.run.progress`). Not fsynced: it is for
        watching, never for resuming."""
        status = {"round": round_number, "phase": phase, "pid": os.getpid(), "time": time.time(), **progress}
        self.write_text("status.json", json.dumps(status) + "\n", durable=False)

    def discard_unfinished(self, last_complete: int) -> list[str]:
        """Remove what a crash left of rounds after `last_complete` and of interrupted writes; returns what."""
        removed = []
        for folder in sorted((self.path / "rounds").glob("[0-9]*")):
            if folder.name.isdigit() and int(folder.name) > last_complete:
                if (folder / LABELS_FILE).is_file():  # people's work: the round, run again, shows only what is left
                    for part in sorted(folder.iterdir()):
                        if part.name != LABELS_FILE:
                            shutil.rmtree(part) if part.is_dir() else part.unlink()
                            removed.append(str(part.relative_to(self.path)))
                    continue
                shutil.rmtree(folder)
                removed.append(str(folder.relative_to(self.path)))
        for folder in sorted((self.path / "checkpoints").glob("round-*")):
            if _checkpoint_round(folder) > last_complete:
                shutil.rmtree(folder)
                removed.append(str(folder.relative_to(self.path)))
        for tmp in sorted(self.path.rglob(".*.tmp")):
            if "wandb" not in tmp.relative_to(self.path).parts:
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
                removed.append(str(tmp.relative_to(self.path)))
        return removed

    def set_aside_rounds_after(self, round_number: int) -> pathlib.Path:
        """Move the records, files and checkpoints of the complete rounds after `round_number` into a folder of
        their own (returned), so that the run continues after `round_number` and nothing of them is deleted."""
        aside = self.path / "set-aside" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        records = self.read_rounds()
        later = [record for record in records if record["round"] > round_number]
        for kind in ("rounds", "checkpoints"):
            (aside / kind).mkdir(parents=True, exist_ok=True)
        (aside / "rounds.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in later))
        for record in later:
            for folder in (self.path / self.round_folder(record["round"]), self.checkpoint(record["round"])):
                if folder.exists():
                    folder.rename(aside / folder.parent.name / folder.name)
        self.write_jsonl("rounds.jsonl", [record for record in records if record["round"] <= round_number])
        return aside

    def checkpoint(self, round_number: int) -> pathlib.Path:
        return self.path / "checkpoints" / f"round-{round_number:04d}"

    def checkpoint_is_whole(self, round_number: int) -> bool:
        """Whether round `round_number`'s checkpoint is there and whole: a config, weights, and every JSON and
        safetensors file in it readable to its end (what a power cut before its files reached the disk breaks)."""
        return is_whole_model_folder(self.checkpoint(round_number))

    def save_checkpoint(self, round_number: int, save: Callable[[pathlib.Path], None]) -> pathlib.Path:
        return self.save_model(str(self.checkpoint(round_number).relative_to(self.path)), save)

    def prune_checkpoints(self, keep: Callable[[int], bool]) -> list[int]:
        """Delete the round checkpoints `keep` rejects, never the newest one; returns the rounds deleted."""
        rounds = sorted(_checkpoint_round(f) for f in (self.path / "checkpoints").glob("round-[0-9]*"))
        deleted = [n for n in rounds[:-1] if not keep(n)]
        for n in deleted:
            shutil.rmtree(self.checkpoint(n))
        return deleted

    def save_model(self, name: str, save: Callable[[pathlib.Path], None]) -> pathlib.Path:
        """Save a model folder via `save(folder)` into a temporary folder, fsync it, then rename it into place.
        A full disk stops with a message saying so, and leaves no half-written folder behind."""
        target = self.path / name
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            save(tmp)
            for file in sorted(tmp.rglob("*")):
                if file.is_file():
                    with open(file, "rb") as f:
                        os.fsync(f.fileno())
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if _disk_full(exc):
                free = shutil.disk_usage(self.path).free / 1024**3
                raise OnpolicyError(
                    f"no space left writing {target} ({exc}; {free:.1f} GiB free): the round was not marked "
                    "complete. Free some space (or lower checkpoint.keep_last) and run the same command again to "
                    "resume"
                ) from None
            raise
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        _fsync_directory(target.parent)
        return target


def is_whole_model_folder(folder: pathlib.Path) -> bool:
    """A saved HF model folder with a config and weights, each of its JSON and safetensors files complete."""
    from safetensors import safe_open

    if not (folder / "config.json").is_file() or not any(folder.rglob("*.safetensors")):
        return False
    try:
        for file in folder.rglob("*.json"):
            json.loads(file.read_text(encoding="utf-8"))
        for file in folder.rglob("*.safetensors"):
            with safe_open(str(file), "pt"):  # checks that the header's tensors cover the file exactly
                pass
    except Exception:
        return False
    return True


def append_line(file: pathlib.Path, line: str) -> None:
    """Append `line` and a newline to an append-only file, on disk before this returns (a new file's directory
    entry too). A torn last line a crash left (no newline at its end) is cut first: it was never written whole,
    and the new line must not run on from it."""
    new = not file.exists()
    if not new:
        _cut_torn_tail(file)
    with open(file, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    if new:
        _fsync_directory(file.parent)


def _cut_torn_tail(file: pathlib.Path) -> None:
    """Cut what follows the last newline of `file` (nothing when it ends with one)."""
    with open(file, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)
        os.fsync(f.fileno())


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


def _fsync_directory(path: pathlib.Path) -> None:
    """Make a rename or a new file in `path` durable (the entry lives in the directory, not in the file)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _checkpoint_round(folder: pathlib.Path) -> int:
    return int(folder.name.removeprefix("round-"))


_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _disk_full(exc: BaseException) -> bool:
    """Whether a write failed for want of space: an OSError saying so, or a library's error wrapping one
    (safetensors reports "I/O error: ... (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    return any(f"(os error {code})" in str(exc) for code in _DISK_FULL)
