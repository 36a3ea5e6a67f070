"""Starting a job: a new run directory, or the continuation of an interrupted run in the same directory.

A run continues from its last *complete* round (its line in rounds.jsonl; see `rundir`): what a crash left of
later rounds is discarded, the policy comes from that round's checkpoint, the reference from the checkpoint
(or initial model) the reference refresh policy names for the next round, the prompt order and each round's
random seeds are functions of the config's seed and the round number, and W&B continues the same run id.
Only `rounds`, `checkpoint.*` and `wandb.*` may differ from the run's saved config: anything else would make
the rounds after the restart a different experiment than the rounds before it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

from onpolicy.config import CheckpointConfig, Config, redaction
from onpolicy.errors import OnpolicyError
from onpolicy.run.lock import RunLock
from onpolicy.run.model_folders import is_whole_model_folder
from onpolicy.run.rundir import RunDirectory

StartMode = Literal["auto", "resume", "fresh"]
# what a resume may change: how long the run is, what it keeps and logs, and how its training is spread over
# processes (an HF checkpoint loads into DDP or FSDP2 alike), none of which changes what a round computes
CHANGEABLE_ON_RESUME = (
    "rounds", "checkpoint", "wandb", "train.sharding", "train.process_timeout_s", "train.collective_timeout_s"
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CheckpointLayout:
    """What a run's round checkpoints hold beside the policy's HF model folder, and which round each round's
    reference comes from: the policy's storage and its reference kind say (`onpolicy.components` asks them), so
    that a resume knows, before anything loads, which checkpoints are whole and which to keep."""

    reference_round: Callable[[int], int]  # the round whose starting policy is round n's reference
    adapters: tuple[str, ...] = ()  # PEFT adapter subfolders the policy continues from (LoRA: adapter/)
    reference_folder: str | None = None  # where a checkpoint holds a reference no other folder holds (a mix)


@dataclasses.dataclass(frozen=True)
class Start:
    run: RunDirectory
    last_complete: int  # -1: nothing yet; 0: only the initial evaluation
    policy: pathlib.Path | None  # the checkpoint to continue from (None: the configured model)
    reference_from: int  # the reference is the policy after this round (0: the initial model)
    wandb_run_id: str | None
    lock: RunLock  # held for the job's life: release it when the job ends
    layout: CheckpointLayout
    notes: tuple[str, ...] = ()

    @property
    def resumed(self) -> bool:
        return self.last_complete >= 0


def open_run(config: Config, path: pathlib.Path, layout: CheckpointLayout, mode: StartMode = "auto") -> Start:
    """A fresh run directory, or the run already in `path` ready to continue from the checkpoints `layout`
    describes (`auto` decides by whether `path` holds a run; `resume` insists on one; `fresh` moves an existing
    run aside and starts anew). The directory is locked for this job (`Start.lock`); a job already running there
    is refused."""
    if mode == "resume" and not RunDirectory.holds_run(path):
        raise OnpolicyError(f"--resume: {path} holds no run to resume")
    path = pathlib.Path(os.path.abspath(path))  # `.`, `..` and `a/..` as the folder they name, which has a name
    notes: list[str] = []
    if mode == "fresh" and RunDirectory.holds_run(path):
        _check_movable(path, config)
        with RunLock.take(path):  # a job running there keeps its directory
            aside = path.with_name(f"{path.name}.replaced-{datetime.datetime.now():%Y%m%d-%H%M%S}")
            path.rename(aside)
        notes.append(f"the run that was in {path} is now in {aside}")
    lock = RunLock.take(path)
    try:
        return _open_locked(config, RunDirectory(path, config.secrets()), layout, lock, notes)
    except BaseException:
        lock.release()
        raise


def _check_movable(path: pathlib.Path, config: Config) -> None:
    """Refuse to move `path` aside (`--fresh`) where that would move the folder the user works in, or one above it
    (`--run-dir .`, `..`), or what the new run reads (its prompts, its model): the new run would start in a folder
    that moved under it, or without its inputs."""
    moved = path.resolve()
    here = pathlib.Path.cwd().resolve()
    if moved == here or moved in here.parents:
        raise OnpolicyError(
            f"--fresh would move {path} aside, and it is the folder you are working in or one above it; give "
            "--run-dir a folder of its own (e.g. runs/NAME), or move the old run aside yourself"
        )
    inputs = {"prompts.path": config.prompts.path, "model.path": config.model.path}
    if config.eval.prompts is not None:
        inputs["eval.prompts.path"] = config.eval.prompts.path
    for key, value in inputs.items():
        if value is not None and (moved == (read := pathlib.Path(value).resolve()) or moved in read.parents):
            raise OnpolicyError(
                f"--fresh would move {path} aside, and with it {key} ({value}), which the new run reads; copy it "
                "out of the old run first, or give another --run-dir"
            )


def _open_locked(
    config: Config, run: RunDirectory, layout: CheckpointLayout, lock: RunLock, notes: list[str]
) -> Start:
    if not RunDirectory.holds_run(run.path):
        RunDirectory.create(run.path, config.to_yaml())
        return Start(run, -1, None, 0, None, lock, layout, tuple(notes))
    last = run.last_complete_round()  # before anything changes: a damaged rounds.jsonl stops here
    differences = _saved_differences(run, config)
    if last < 0 and _changed_settings(differences):
        # the run never completed a round (its model did not load, say): nothing of the old config to keep
        run.write_text("state.json", "{}\n")
        notes.append(f"{run.path} held a run with another config that completed no round: starting it anew")
    else:
        notes += _check_same_experiment(run, differences)
    leftovers = run.discard_unfinished(max(last, 0))
    if leftovers.removed:
        notes.append(f"discarded the unfinished work of round {max(last, 0) + 1}: {', '.join(leftovers.removed)}")
    if leftovers.set_aside is not None:
        notes.append(
            f"rounds.jsonl ends at round {max(last, 0)}, but checkpoints or files of later rounds were here (a crash "
            "just after a checkpoint, or a rounds.jsonl shortened by an edit or a bad copy): they are set aside in "
            f"{leftovers.set_aside}, nothing deleted; continuing after round {max(last, 0)}"
        )
    resumable = _last_resumable_round(run, layout, last)
    if resumable < last:
        kept = run.set_aside_rounds_after(resumable)
        notes.append(
            f"the checkpoints needed to continue after round {last} are damaged or missing (a power cut?): "
            f"continuing after round {resumable}; the records and files of rounds {resumable + 1}-{last} are in "
            f"{kept}"
        )
        last = resumable
    reference_from = layout.reference_round(last + 1) - 1 if last >= 0 else 0
    state = run.read_state()
    run.write_text("config.yaml", config.to_yaml())  # `rounds` and the other changeable keys may have changed
    return Start(
        run=run,
        last_complete=last,
        policy=run.checkpoint(last) if last >= 1 else None,
        reference_from=reference_from,
        wandb_run_id=state.get("wandb_run_id"),
        lock=lock,
        layout=layout,
        notes=tuple(notes),
    )


def _last_resumable_round(run: RunDirectory, layout: CheckpointLayout, last: int) -> int:
    """The newest complete round (at most `last`) whose checkpoint and next reference are whole: the round a
    job continues after. 0 (or -1 when nothing is complete) needs no checkpoint."""
    saved_reference = layout.reference_folder
    for candidate in range(last, 0, -1):
        reference_from = layout.reference_round(candidate + 1) - 1
        reference_folder = None if saved_reference is None else run.checkpoint(candidate) / saved_reference
        if (
            run.checkpoint_is_whole(candidate, layout.adapters)
            and (reference_from < 1 or run.checkpoint_is_whole(reference_from, layout.adapters))
            and (reference_folder is None or is_whole_model_folder(reference_folder, tokenizer=False))
        ):
            return candidate
    return min(last, 0)


def retention(newest: int, keep: CheckpointConfig, layout: CheckpointLayout) -> Callable[[int], bool]:
    """Which round checkpoints to keep once round `newest` is complete: the newest `keep.keep_last`, every
    `keep.every`-th, and the one the next round's reference comes from."""
    reference_from = layout.reference_round(newest + 1) - 1

    def kept(round_number: int) -> bool:
        return (
            round_number > newest - keep.keep_last
            or (keep.every > 0 and round_number % keep.every == 0)
            or round_number == reference_from
        )

    return kept


def _changed_settings(differences: list[tuple[str, Any, Any]]) -> list[str]:
    """Of the `differences` from the run's saved config, those a resume may not change."""
    return [
        f"{key} ({old!r} -> {new!r})"
        for key, old, new in differences
        if not any(key == part or key.startswith(f"{part}.") for part in CHANGEABLE_ON_RESUME) and old is not _ABSENT
    ]


def _saved_differences(run: RunDirectory, config: Config) -> list[tuple[str, Any, Any]]:
    return _differences(run.read_config(), redaction.redact(config.model_dump(mode="json")))  # saved masked


def _check_same_experiment(run: RunDirectory, differences: list[tuple[str, Any, Any]]) -> list[str]:
    """Refuse a config that changes the experiment (`differences` from the run's saved config); return notes on
    settings the saved config predates (keys a newer onpolicy added), which take their current values."""
    added = [f"{key}={new!r}" for key, old, new in differences if old is _ABSENT]
    changed = _changed_settings(differences)
    if changed:
        raise OnpolicyError(
            f"{run.path} holds a run with another config; changed: {'; '.join(changed[:5])}"
            + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            + ". Resuming needs the same config (only rounds, checkpoint.*, wandb.*, train.sharding, "
            "train.process_timeout_s and train.collective_timeout_s may change): use --fresh to start over in that "
            "directory (the old run is kept aside), or another --run-dir"
        )
    return [f"settings newer than this run take their values: {', '.join(added)}"] if added else []


_ABSENT = object()  # a key the saved config does not have


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key, _ABSENT), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [(prefix.rstrip("."), old, new)]
