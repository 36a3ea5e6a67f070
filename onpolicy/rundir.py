"""The run directory: everything a run leaves behind, each file written whole or not at all.

    DIR/config.yaml                 the resolved config (absolute paths, every default filled in)
    DIR/rounds.jsonl                one JSON object per completed round: `round` plus every logged metric
    DIR/rounds/0001/samples.jsonl   every sample of round 1 with its reward (or why it has none)
    DIR/rounds/0001/pairs.jsonl     the pairs round 1 trained on
    DIR/checkpoints/round-0002/     the policy after round 2 (every `checkpoint.every` rounds)
    DIR/final/                      the last policy: an ordinary HF folder that transformers and vLLM load
    DIR/wandb/                      the W&B run (offline runs: upload later with `wandb sync`)

Files are written to a temporary name and renamed into place; a round's line in `rounds.jsonl` is appended,
flushed and fsynced only after its samples, pairs and checkpoint are in place.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from onpolicy.errors import OnpolicyError
from onpolicy.types import Pair, ScoredGroup, to_json


def default_run_dir(config_path: str | None) -> pathlib.Path:
    stem = pathlib.Path(config_path).stem if config_path else "run"
    return pathlib.Path("runs") / f"{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


class RunDirectory:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

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

    def write_text(self, name: str, text: str) -> pathlib.Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return target

    def write_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
        return self.write_text(name, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

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
        with open(self.path / "rounds.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_rounds(self) -> list[dict[str, Any]]:
        file = self.path / "rounds.jsonl"
        if not file.exists():
            return []
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]

    def save_model(self, name: str, save: Callable[[pathlib.Path], None]) -> pathlib.Path:
        """Save a model folder via `save(folder)` into a temporary folder, then rename it into place."""
        target = self.path / name
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        save(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return target
