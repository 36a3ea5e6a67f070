"""Several training processes: a job started by `torchrun --nproc_per_node N`, `accelerate launch --num_processes N`
(or `onpolicy run --processes N`, which starts torchrun), on one node or several, trains them together.

The main process (global rank 0) runs the job as a single process does: it generates, scores and pairs, syncs the
weights into the generator, writes the run directory and logs. The other processes (the first process of another
node included) only train. The main process tells them each step that changes the policy (`MirroredUpdater`);
they follow (`follow_main`), and TRL's trainer then runs each update on all of them together (through
accelerate), each process taking `train.batch_size / N` pairs of every batch. With DDP every process holds the
whole policy, so syncing and saving need the main process alone; with FSDP2 sharding (`onpolicy.train.sharding`)
each holds 1/N of it, and whatever reads it whole (a sync, a save, the KL estimate) runs on every process together.

A stop (SIGINT/SIGTERM, which torchrun passes to every process) ends training after the same step on every
process: each step they agree whether any of them was asked to stop. A process that dies makes its launcher end
the others of its node; the processes on other nodes find it gone at their next collective step (`LostProcess`).
The run directory then holds the rounds completed before, as after a kill of a single process.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import shutil
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from onpolicy.errors import ConfigError, OnpolicyError
from onpolicy.interfaces import PhaseProgress
from onpolicy.run.launch import LAUNCHED_PROCESSES, launched_processes
from onpolicy.types import Pair, SampleGroup, UpdateResult

if TYPE_CHECKING:
    from onpolicy.config import TrainConfig
    from onpolicy.interfaces import Generator
    from onpolicy.train.policy_storage import PolicyStorage
    from onpolicy.train.update import DPOUpdater

@dataclasses.dataclass(frozen=True)
class TrainerStart:
    """What every training process needs to build the same policy, reference and updater: decided by the main
    process (which alone reads the run directory and resolves the model) and sent to the others."""

    initial_path: str  # the initial policy's model folder
    checkpoint: str | None  # the round checkpoint a resumed run continues (None: the initial policy)
    tokenizer_path: str
    storage: PolicyStorage  # how every process holds the policy
    reference: tuple[str, int] | None  # resume: restore the reference from (folder, round it was saved after)
    engine_dtype: torch.dtype | None


class Team:
    """The job's training processes over torch.distributed: the group the trainer uses (gloo on CPUs, NCCL on
    GPUs), and a gloo group for the main process's commands, which carries Python objects on any device. Meets
    `onpolicy.interfaces.TrainingTeam`: a process other than the main one builds its updater with
    `build_updater(start, team)`."""

    def __init__(
        self,
        timeout_s: int,
        collective_timeout_s: int,
        sharded: bool = False,
        build_updater: Callable[[TrainerStart, Team], DPOUpdater] | None = None,
    ) -> None:
        """`timeout_s` bounds the wait for the main process's next command (it may generate and score for hours),
        `collective_timeout_s` the trainers' own steps (a lost node must not hold every GPU for as long)."""
        import torch.distributed as dist

        self._build_updater = build_updater
        self.sharded = sharded  # the policy is sharded over the processes: reading it whole takes all of them
        if not dist.is_initialized():
            dist.init_process_group(
                "nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(seconds=collective_timeout_s)
            )
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self._commands = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        self._dismissed = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any = None) -> Any:
        """The main process's `value`, on every process (the others pass nothing and wait for it)."""
        import torch.distributed as dist

        objects = [value]
        dist.broadcast_object_list(objects, src=0, group=self._commands)
        return objects[0]

    def anyone(self, asked: Callable[[], bool] | None) -> Callable[[], bool]:
        """`asked` agreed by all: true on every process when it is true on any. Every process must call the
        result at the same points (here: after each training step)."""
        import torch.distributed as dist

        def agreed() -> bool:
            flag = torch.tensor([int(asked is not None and asked())])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._commands)
            return bool(flag.item())

        return agreed

    def follow_main(self, stop_asked: Callable[[], bool]) -> None:
        """On a process other than the main one: train as the main process says until it dismisses the team."""
        assert self._build_updater is not None, "a team that follows the main process is given build_updater"
        build = self._build_updater
        follow_main(self, lambda start: build(start, self), stop_asked)

    def lost_process(self, error: BaseException) -> LostProcess | None:
        return lost_process(error)

    def dismiss(self) -> None:
        """From the main process: tell the others the job is over (once; they then leave `follow_main`)."""
        if self.is_main and not self._dismissed:
            self._dismissed = True
            try:
                self.broadcast(None)
            except Exception:  # noqa: BLE001 - a process died: the launcher ends the others, the job's error stands
                pass

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class LostProcess(OnpolicyError):
    """A step that takes every training process failed because one of them is gone (ended, killed, or on a node
    that cannot be reached)."""


def lost_process(error: BaseException) -> LostProcess | None:
    """`error` as a `LostProcess` where torch.distributed raised it (gloo and NCCL report a vanished peer as a
    RuntimeError from inside their collectives), else None."""
    if not isinstance(error, RuntimeError) or isinstance(error, OnpolicyError):
        return None
    traceback = error.__traceback__
    while traceback is not None and f"torch{os.sep}distributed{os.sep}" not in traceback.tb_frame.f_code.co_filename:
        traceback = traceback.tb_next
    if traceback is None:
        return None
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return LostProcess(
        f"another training process of this job is gone (ended, or its node unreachable): a step all of them take "
        f"together failed ({reason[:300]})"
    )


def join(
    train: TrainConfig, build_updater: Callable[[TrainerStart, Team], DPOUpdater] | None = None
) -> Team | None:
    """This process's team when the job was launched as several processes, or sharded by a launcher (even as one
    process: `train.sharding`, or an FSDP2 accelerate launch), else None; `build_updater`: how a process other
    than the main one builds its updater."""
    from onpolicy.train import sharding as shards

    processes = launched_processes()
    sharded = shards.sharded_job(train.sharding, os.environ)
    if sharded:
        if LAUNCHED_PROCESSES not in os.environ:
            raise ConfigError(
                "train.sharding=fsdp2 shards the policy over training processes started by a launcher: run with "
                "onpolicy run --processes N, torchrun or accelerate launch (docs/scaling.md)"
            )
        shards.check_shardable(lora=train.lora is not None)
        shards.fsdp_variables(os.environ)
    elif processes == 1:
        return None
    check_batch_size(train.batch_size, processes)
    return Team(train.process_timeout_s, train.collective_timeout_s, sharded, build_updater)


def check_batch_size(batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise ConfigError(
            f"train.batch_size={batch_size} is the batch of all {processes} training processes together: give "
            f"a multiple of {processes}"
        )


class MirroredUpdater:
    """The main process's updater in a team: what changes the policy runs on every process, the rest (weights
    for the generator, checkpoints) on the main process alone. Meets `onpolicy.interfaces.Updater`."""

    def __init__(self, updater: DPOUpdater, team: Team, data_dir: pathlib.Path) -> None:
        self.updater = updater
        self.team = team
        self.data_dir = data_dir  # the round's training rows, in a folder every process sees
        shutil.rmtree(data_dir, ignore_errors=True)  # what a killed job left

    def start_round(self, round_number: int) -> bool:
        self.team.broadcast(("start_round", (round_number,)))
        return self.updater.start_round(round_number)

    def update(
        self,
        pairs: Sequence[Pair],
        round_number: int,
        should_stop: Callable[[], bool] | None = None,
        progress: PhaseProgress | None = None,
    ) -> UpdateResult:
        shutil.rmtree(self.data_dir, ignore_errors=True)  # the round before's rows: every process is done with them
        rows = self.updater.prepare(pairs, round_number).on_disk(self.data_dir / f"round-{round_number:04d}")
        self.team.broadcast(("train", (rows, round_number)))
        return self.updater.train(rows, round_number, self.team.anyone(should_stop), progress)

    def send_policy(self, generator: Generator, version: str) -> None:
        self._with_the_others("send_policy")  # a sharded policy is gathered by all of them
        self.updater.send_policy(generator, version)

    def save(self, folder: pathlib.Path) -> None:
        self._with_the_others("save", folder)
        self.updater.save(folder)

    def save_checkpoint(self, folder: pathlib.Path) -> None:
        self._with_the_others("save_checkpoint", folder)
        self.updater.save_checkpoint(folder)

    def kl_from_samples(self, groups: Sequence[SampleGroup]) -> dict[str, float]:
        self._with_the_others("kl_from_samples", groups)
        return self.updater.kl_from_samples(groups)

    def _with_the_others(self, step: str, *args: Any) -> None:
        """A sharded policy is read whole by every process together: have the others run `step` beside this one
        (with DDP the main process's copy is whole, and the others have nothing to do)."""
        if self.updater.storage.sharded:
            self.team.broadcast((step, args))

    def close(self) -> None:
        self.team.dismiss()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def follow_main(
    team: Team, build_updater: Callable[[TrainerStart], DPOUpdater], stop_asked: Callable[[], bool]
) -> None:
    """A process other than the main one: build the updater the main process describes, then run each step it
    sends until it dismisses the team."""
    start = team.broadcast()
    if start is None:  # the main process stopped before training began
        return
    updater = build_updater(start)
    while (command := team.broadcast()) is not None:
        step, args = command
        if step == "train":
            updater.train(*args, should_stop=team.anyone(stop_asked))
        elif step == "send_policy":  # gathered one weight at a time for the main process's generator: every
            for _ in updater.named_weights():  # process goes through all of them (the others get nothing)
                pass
        else:
            getattr(updater, step)(*args)
