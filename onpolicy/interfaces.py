"""The roles a job's rounds use, as small Protocols: the loop calls nothing else on its components.

A new backend (a generation server, several trainer processes, a W&B stand-in) is a new class that meets one of
these, chosen and built in `onpolicy.components`; the loop does not change. The parts: the `Generator` serves the
policy, the `Reward` scores the round's groups, the `Correction` makes corrected pairs (from a user's corrector
function), the `Updater` trains the policy and sends it to the generator, the `Evaluation` answers held-out
prompts, the `RoundLogger` logs each round, the `TrainingTeam` is the processes of a launched job, and a
`PhaseProgress` counts a long phase's work.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from onpolicy.types import Pair, PromptRecord, SampleGroup, ScoredGroup, UpdateResult
from reward import RoundGroups, Score

if TYPE_CHECKING:  # names in annotations only: the stages that use these roles do not import torch
    import torch

    from onpolicy.config.sections import Sampling

Table = tuple[list[str], list[list[Any]]]  # (columns, rows), as a W&B Table holds them


class PhaseProgress(Protocol):
    """How far a long phase of a round is (`onpolicy.run.progress`): its parts advance it as work finishes."""

    total: int | None  # set by whoever learns it late (a trainer, its number of steps)

    def advance(self, n: int = 1) -> None: ...


class Generator(Protocol):
    """Serves the current policy: samples groups for training and answers for evaluation."""

    engine_dtype: torch.dtype  # what its sampling log-probs are computed in (the updater compares its own)

    def generate(
        self, records: Sequence[PromptRecord], progress: PhaseProgress | None = None
    ) -> tuple[list[SampleGroup], list[PromptRecord]]:
        """One group of samples per prompt that fits, and the prompts that did not fit; `progress` advances by
        one per prompt answered."""
        ...

    def complete(
        self,
        records: Sequence[PromptRecord],
        max_new_tokens: int,
        progress: PhaseProgress | None = None,
        sampling: Sampling | None = None,
    ) -> list[str | None]:
        """One answer to each prompt (None where the prompt does not fit), drawn with `sampling` (default: greedy,
        with the generation's other settings)."""
        ...

    def sample(
        self,
        records: Sequence[PromptRecord],
        num_samples: int,
        max_new_tokens: int,
        progress: PhaseProgress | None = None,
    ) -> list[SampleGroup]:
        """`num_samples` samples per prompt that fits, with the generation's sampling settings: for evaluation."""
        ...

    def load_weights(self, named_tensors: Iterator[tuple[str, torch.Tensor]], version: str | None = None) -> None:
        """Serve these weights (HF names) from now on, as weight version `version` (the round that made them)."""
        ...

    def load_adapter(self, save_adapter: Callable[[pathlib.Path], None], version: str | None = None) -> None:
        """Serve the base model with the LoRA adapter that `save_adapter(folder)` writes, from now on."""
        ...

    def rest(self) -> bool:
        """Free the device it shares with the trainer while the update runs (the in-process engine's sleep mode on
        a GPU), until `wake`; True when its weights were dropped: the policy must be sent before it samples."""
        ...

    def wake(self) -> None:
        """Take back what `rest` freed (nothing, if it did not rest)."""
        ...


class Updater(Protocol):
    """Holds the policy and its reference, and runs each round's DPO update."""

    def start_round(self, round_number: int) -> bool:
        """Make round `round_number`'s reference ready; True when it was refreshed."""
        ...

    def update(
        self,
        pairs: Sequence[Pair],
        round_number: int,
        should_stop: Callable[[], bool] | None = None,
        progress: PhaseProgress | None = None,
    ) -> UpdateResult: ...

    def send_policy(self, generator: Generator, version: str) -> None:
        """The policy into `generator` from now on, as weight version `version` (the round that made it): its
        weights, or with `generation.lora_sync: adapter` its LoRA adapter alone."""
        ...

    def save(self, folder: pathlib.Path) -> None:
        """The policy as an ordinary HF model folder."""
        ...

    def save_checkpoint(self, folder: pathlib.Path) -> None:
        """What a resumed run continues from: the policy, and a reference no other folder holds."""
        ...

    def kl_from_samples(self, groups: Sequence[SampleGroup]) -> dict[str, float]:
        """The KL from the policy to the initial policy and to the last round's reference, estimated on the
        policy's own samples (`eval.kl_samples`)."""
        ...


class Reward(Protocol):
    """Scores the samples of each group, as a weighted sum of reward terms (`reward.WeightedSum`), and passes the
    round's course on to the terms that need it (`reward.Needs`)."""

    name: str

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]: ...

    def prepare(self, round_groups: RoundGroups) -> None:
        """The round's groups, before they are scored one by one (people label them in a page)."""
        ...

    def finish(self) -> None:
        """The round's scoring is over (or stopped)."""
        ...

    def take_stats(self) -> dict[str, float]:
        """Its counters since the last call (means, agreement, each term's costs), for `reward/` metrics."""
        ...

    def close(self) -> None:
        """The job ends: release what it holds open (a labelling page)."""
        ...


class Correction(Protocol):
    """Makes a corrected pair for a group no sample of which is good enough (`pairs.correction`)."""

    max_negative_ratio: float

    def applies(self, group: ScoredGroup) -> bool:
        """Whether `group` is corrected rather than paired as it is."""
        ...

    def pair(self, group: ScoredGroup, min_margin: float) -> tuple[Pair | None, str | None]:
        """The corrected pair; (None, reason) when the correction failed; (None, None) when there was nothing to
        correct."""
        ...

    def take_problems(self) -> tuple[str, ...]:
        """What went wrong since the last call, one example per kind, for the round's warnings."""
        ...


class Evaluation(Protocol):
    """Greedy answers to held-out prompts, scored, and compared with the initial policy's answers."""

    records: Sequence[PromptRecord]

    def run(
        self, generator: Generator, progress: PhaseProgress | None = None, initial: bool = False
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """The eval metrics and one row per prompt; `initial`: these are the initial policy's answers (round 0),
        remembered for every later run to compare with."""
        ...

    def remember_initial(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """The initial policy's answers, from round 0's rows (a resumed job's)."""
        ...

    def sample(
        self, generator: Generator, num_samples: int, progress: PhaseProgress | None = None
    ) -> list[SampleGroup]:
        """`num_samples` samples per eval prompt from the current policy (for the KL estimate)."""
        ...


class RoundLogger(Protocol):
    """Logs each round's metrics and tables (W&B, or nothing)."""

    mode: str
    run_id: str | None

    def log_round(
        self, round_number: int, metrics: Mapping[str, Any], tables: Mapping[str, Table] | None = None
    ) -> None: ...

    def steps_logged(self) -> set[int] | None:
        """The rounds the run holds already from earlier processes of the job, when known."""
        ...

    def finish(self) -> None: ...


class TrainingTeam(Protocol):
    """The job's training processes, when it was launched as several (torchrun, accelerate launch): the main one
    runs the job, the others train beside it (`onpolicy.train.distributed`)."""

    @property
    def is_main(self) -> bool: ...

    @property
    def sharded(self) -> bool:
        """The policy is sharded over the processes (FSDP2): reading it whole takes all of them."""
        ...

    def follow_main(self, stop_asked: Callable[[], bool]) -> None:
        """On a process other than the main one: train as the main process says until it dismisses the team."""
        ...

    def lost_process(self, error: BaseException) -> Exception | None:
        """`error` as the job's error where it says another process is gone, else None."""
        ...

    def dismiss(self) -> None:
        """From the main process: the job is over (the others leave `follow_main`)."""
        ...

    def leave(self) -> None: ...
