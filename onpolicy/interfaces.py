"""The roles a job's rounds use, as small Protocols: the loop calls nothing else on its components.

A new backend (a generation server, several trainer processes) is a new class that meets one of these, built
in `onpolicy.components`; the loop does not change.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch

from onpolicy.progress import PhaseProgress
from onpolicy.types import Pair, PromptRecord, SampleGroup, UpdateResult


class Generator(Protocol):
    """Serves the current policy: samples groups for training and greedy answers for evaluation."""

    engine_dtype: torch.dtype  # what its sampling log-probs are computed in (the updater compares its own)

    def generate(
        self, records: Sequence[PromptRecord], progress: PhaseProgress | None = None
    ) -> tuple[list[SampleGroup], list[PromptRecord]]:
        """One group of samples per prompt that fits, and the prompts that did not fit; `progress` advances by
        one per prompt answered."""
        ...

    def complete_greedy(
        self, records: Sequence[PromptRecord], max_new_tokens: int, progress: PhaseProgress | None = None
    ) -> list[str | None]:
        """The greedy answer to each prompt (None where the prompt does not fit)."""
        ...

    def sample(
        self,
        records: Sequence[PromptRecord],
        num_samples: int,
        max_new_tokens: int,
        progress: PhaseProgress | None = None,
    ) -> list[SampleGroup]:
        """`num_samples` samples per prompt that fits, at the configured temperature: for evaluation."""
        ...

    def load_weights(self, named_tensors: Iterator[tuple[str, torch.Tensor]], version: str | None = None) -> None:
        """Serve these weights (HF names) from now on, as weight version `version` (the round that made them)."""
        ...

    def load_adapter(self, save_adapter: Callable[[pathlib.Path], None], version: str | None = None) -> None:
        """Serve the base model with the LoRA adapter that `save_adapter(folder)` writes, from now on."""
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

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their HF names, for the generator."""
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

    def save_adapter(self, folder: pathlib.Path) -> None:
        """With `train.lora`: the adapter alone, as PEFT saves it."""
        ...
