"""Frozen states of the policy (snapshots) that log-probs can be computed with, one kind for each way a state is
held without a second trainer:

- `FullCopy`: a frozen model (full fine-tuning): the reference TRL is handed as its `ref_model`;
- `AdapterState`: the trained adapter's weights at some round (LoRA): loaded into TRL's "ref" adapter, or
  swapped into the policy for a no-grad pass;
- `BaseModel`: the LoRA policy with its adapter off, which is the initial policy (LoRA starts as a no-op), so it
  costs no copy at all;
- `ShardedState`: this process's shard of every weight of a policy sharded over the training processes
  (`onpolicy.train.sharding`), swapped into the policy while it computes: 1/N of a copy on each process.

The policy's storage kind (`onpolicy.train.policy_storage`) takes and loads them; the reference kinds
(`onpolicy.train.reference`) and the KL estimate hold them and never ask which kind they hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch

from onpolicy.train import lora, sharding


@dataclasses.dataclass(frozen=True)
class TrainerReference:
    """What a round's trainer is given as its reference: a frozen `model` (TRL's `ref_model`), or, for a LoRA
    policy, what to do with the "ref" adapter TRL adds beside the trained one (`adapter(model)`); neither: the
    reference is the policy as the round starts (TRL's copy of the adapter, or a pass of the policy itself)."""

    model: torch.nn.Module | None = None
    adapter: Callable[[Any], None] | None = None
    # a sharded policy: opened around TRL's reference pass, so that the policy computes with the reference's weights
    weights: Callable[[torch.nn.Module], contextlib.AbstractContextManager[torch.nn.Module]] | None = None


class Snapshot(Protocol):
    """A frozen state of the policy."""

    def computing(self, policy: torch.nn.Module) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """A model that computes this state's log-probs, beside (or as) `policy`, on the policy's device."""
        ...

    def for_trainer(self) -> TrainerReference:
        """This state as a round's trainer takes its reference."""
        ...


@dataclasses.dataclass(frozen=True)
class FullCopy:
    """A frozen copy of every weight."""

    model: torch.nn.Module

    @contextlib.contextmanager
    def computing(self, policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
        # A copy taken before the trainer moved the policy stays behind: the log-probs must come from the same
        # kernels as the policy's.
        yield self.model.to(next(policy.parameters()).device)

    def for_trainer(self) -> TrainerReference:
        return TrainerReference(model=self.model)

    def mix(self, policy: torch.nn.Module, share: float) -> None:
        mix_into(self.model, policy, share)

    def save(self, policy: torch.nn.Module, folder: pathlib.Path) -> None:
        self.model.save_pretrained(folder)


@dataclasses.dataclass(frozen=True)
class AdapterState:
    """The trained LoRA adapter's weights (CPU copies) at some round."""

    tensors: dict[str, torch.Tensor]

    def computing(self, policy: torch.nn.Module) -> contextlib.AbstractContextManager[torch.nn.Module]:
        return lora.adapter_swapped(policy, self.tensors)

    def for_trainer(self) -> TrainerReference:
        return TrainerReference(adapter=functools.partial(lora.load_reference_adapter, state=self.tensors))


@dataclasses.dataclass(frozen=True)
class BaseModel:
    """The LoRA policy's base model: the adapter off."""

    @contextlib.contextmanager
    def computing(self, policy: Any) -> Iterator[torch.nn.Module]:
        with policy.disable_adapter():
            yield policy

    def for_trainer(self) -> TrainerReference:
        return TrainerReference(adapter=lora.use_base_as_reference)


@dataclasses.dataclass(frozen=True)
class ShardedState:
    """A frozen state of a sharded policy: this process's shard of each weight (FSDP modules cannot be copied).
    Whatever computes with it or saves it is collective: every process does it, on its own shard."""

    shards: dict[str, torch.Tensor]

    @classmethod
    def of(cls, policy: torch.nn.Module) -> ShardedState:
        return cls({name: sharding.local(p).detach().clone() for name, p in sharding.parameters(policy)})

    @contextlib.contextmanager
    def computing(self, policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The policy with this state's weights while open, its own after (swapped one weight at a time)."""
        self._swap(policy)
        try:
            yield policy
        finally:
            self._swap(policy)

    def for_trainer(self) -> TrainerReference:
        return TrainerReference(weights=self.computing)

    @torch.no_grad()
    def mix(self, policy: torch.nn.Module, share: float) -> None:
        """state <- share * policy + (1 - share) * state, shard by shard (share 1 copies the policy)."""
        for name, weight in sharding.parameters(policy):
            if share == 1.0:
                self.shards[name].copy_(sharding.local(weight))
            else:
                self.shards[name].lerp_(sharding.local(weight), share)

    def save(self, policy: torch.nn.Module, folder: pathlib.Path) -> None:
        save_gathered(policy, sharding.as_sharded(self.shards, policy), folder)

    @torch.no_grad()
    def _swap(self, policy: torch.nn.Module) -> None:
        for name, weight in sharding.parameters(policy):
            mine, theirs = sharding.local(weight), self.shards[name]
            scratch = mine.clone()
            mine.copy_(theirs)
            theirs.copy_(scratch)


# the snapshots that hold every weight (full fine-tuning): they can be mixed toward the policy and saved
FullState = FullCopy | ShardedState


def save_gathered(
    policy: torch.nn.Module, state: Iterable[tuple[str, torch.Tensor]], folder: pathlib.Path
) -> None:
    """`state` (a sharded policy's state dict, or one laid out like it) gathered, and written by the main process
    as an HF folder with the policy's config (collective)."""
    gathered = dict(sharding.full_weights(state))  # empty but on the main process
    if sharding.is_main():
        policy.save_pretrained(folder, state_dict=gathered)


@torch.no_grad()
def mix_into(reference: torch.nn.Module, policy: torch.nn.Module, share: float) -> None:
    """reference <- share * policy + (1 - share) * reference, weight by weight, in place (parameters, not the
    state dict: a tied embedding is one parameter under two state-dict names, and must move once); share 1
    copies the policy exactly."""
    policy_weights = dict(policy.named_parameters())
    for name, weight in reference.named_parameters():
        if share == 1.0:
            weight.copy_(policy_weights[name])
        else:
            weight.lerp_(policy_weights[name].to(weight.device, weight.dtype), share)
