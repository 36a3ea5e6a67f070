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
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import yaml

from onpolicy.config import Config
from onpolicy.errors import OnpolicyError
from onpolicy.rundir import RunDirectory
from onpolicy.update import reference_round

StartMode = Literal["auto", "resume", "fresh"]
CHANGEABLE_ON_RESUME = ("rounds", "checkpoint", "wandb")


@dataclasses.dataclass(frozen=True)
class Start:
    run: RunDirectory
    last_complete: int  # -1: nothing yet; 0: only the initial evaluation
    policy: pathlib.Path | None  # the checkpoint to continue from (None: the configured model)
    reference_from: int  # the reference is the policy after this round (0: the initial model)
    wandb_run_id: str | None
    notes: tuple[str, ...] = ()

    @property
    def resumed(self) -> bool:
        return self.last_complete >= 0


def open_run(config: Config, path: pathlib.Path, mode: StartMode = "auto") -> Start:
    """A fresh run directory, or the run already in `path` ready to continue (`auto` decides by whether
    `path` holds a run; `resume` insists on one; `fresh` moves an existing run aside and starts anew)."""
    exists = RunDirectory.holds_run(path)
    if mode == "resume" and not exists:
        raise OnpolicyError(f"--resume: {path} holds no run to resume")
    notes: list[str] = []
    if exists and mode == "fresh":
        aside = path.with_name(f"{path.name}.replaced-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        path.rename(aside)
        notes.append(f"the run that was in {path} is now in {aside}")
        exists = False
    if not exists:
        run = RunDirectory.create(path, config.to_yaml())
        return Start(run, -1, None, 0, None, tuple(notes))
    run = RunDirectory(path)
    notes += _check_same_experiment(run, config)
    last = run.last_complete_round()
    removed = run.discard_unfinished(max(last, 0))
    if removed:
        notes.append(f"discarded the unfinished work of round {max(last, 0) + 1}: {', '.join(removed)}")
    if last >= 1 and not run.checkpoint(last).is_dir():
        raise OnpolicyError(
            f"{path}: round {last} is complete but its checkpoint {run.checkpoint(last)} is missing; it cannot be "
            "resumed (use --fresh to start over, or another --run-dir)"
        )
    reference_from = reference_round(last + 1, config.ref) - 1 if last >= 0 else 0
    if reference_from >= 1 and not run.checkpoint(reference_from).is_dir():
        raise OnpolicyError(f"{path}: the reference checkpoint {run.checkpoint(reference_from)} is missing")
    state = run.read_state()
    run.write_text("config.yaml", config.to_yaml())  # `rounds` and the other changeable keys may have changed
    return Start(
        run=run,
        last_complete=last,
        policy=run.checkpoint(last) if last >= 1 else None,
        reference_from=reference_from,
        wandb_run_id=state.get("wandb_run_id"),
        notes=tuple(notes),
    )


def retention(newest: int, config: Config) -> Callable[[int], bool]:
    """Which round checkpoints to keep once round `newest` is complete: the newest `keep_last`, every
    `every`-th, and the one the next round's reference comes from."""
    keep = config.checkpoint
    reference_from = reference_round(newest + 1, config.ref) - 1

    def kept(round_number: int) -> bool:
        return (
            round_number > newest - keep.keep_last
            or (keep.every > 0 and round_number % keep.every == 0)
            or round_number == reference_from
        )

    return kept


def _check_same_experiment(run: RunDirectory, config: Config) -> list[str]:
    """Refuse a config that changes the experiment; return notes on settings the saved config predates (keys a
    newer onpolicy added), which take their current values."""
    saved = yaml.safe_load((run.path / "config.yaml").read_text(encoding="utf-8")) or {}
    differences = _differences(saved, config.model_dump(mode="json"))
    added = [f"{key}={new!r}" for key, old, new in differences if old is _ABSENT]
    changed = [
        f"{key} ({old!r} -> {new!r})"
        for key, old, new in differences
        if key.split(".")[0] not in CHANGEABLE_ON_RESUME and old is not _ABSENT
    ]
    if changed:
        raise OnpolicyError(
            f"{run.path} holds a run with another config; changed: {'; '.join(changed[:5])}"
            + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            + ". Resuming needs the same config (only rounds, checkpoint.* and wandb.* may change): use --fresh "
            "to start over in that directory (the old run is kept aside), or another --run-dir"
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
