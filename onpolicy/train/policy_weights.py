"""Frozen states of the policy (snapshots) that log-probs can be computed with, whether the policy trains every
weight or a LoRA adapter.

One snapshot kind for each way a state is held without a second trainer:

- `FullCopy`: a frozen model (full fine-tuning): the reference TRL is handed as its `ref_model`;
- `AdapterState`: the trained adapter's weights at some round (LoRA): loaded into TRL's "ref" adapter, or
  swapped into the policy for a no-grad pass;
- `BaseModel`: the LoRA policy with its adapter off, which is the initial policy (LoRA starts as a no-op), so it
  costs no copy at all;
- `ShardedState`: this process's shard of every weight of a policy sharded over the training processes
  (`onpolicy.train.sharding`), swapped into the policy while it computes: 1/N of a copy on each process.

`PolicyWeights` takes snapshots of one policy, loads them from checkpoints and knows the initial policy; the
reference kinds (`onpolicy.train.reference`) and the KL estimate hold snapshots and never ask which kind they hold.
"""

from __future__ import annotations

import contextlib
import copy
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
        _save_gathered(policy, sharding.as_sharded(self.shards, policy), folder)

    @torch.no_grad()
    def _swap(self, policy: torch.nn.Module) -> None:
        for name, weight in sharding.parameters(policy):
            mine, theirs = sharding.local(weight), self.shards[name]
            scratch = mine.clone()
            mine.copy_(theirs)
            theirs.copy_(scratch)


# the snapshots that hold every weight (full fine-tuning): they can be mixed toward the policy and saved
FullState = FullCopy | ShardedState


class PolicyWeights:
    """Snapshots of one policy (`is_lora`: it trains a PEFT adapter), and its initial state (`initial_path`: the
    initial model's folder)."""

    def __init__(self, policy: torch.nn.Module, is_lora: bool, initial_path: str) -> None:
        self.policy = policy
        self.is_lora = is_lora
        self.sharded = sharding.is_sharded(policy)  # every method below is then collective
        self._initial_path = initial_path
        self._initial: Snapshot | None = None

    def named(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their HF names (with LoRA: merged, computed without touching the policy)."""
        if self.is_lora:
            return lora.merged_weights(self.policy)
        if self.sharded:  # on the main process; the others take part and get nothing
            return sharding.full_weights(sharding.weights(self.policy))
        return iter(self.policy.state_dict().items())

    def save(self, folder: pathlib.Path) -> None:
        """The policy as an ordinary HF model folder; with LoRA merged, and the adapter alone in adapter/ (a
        sharded policy: gathered, and written by the main process)."""
        if self.is_lora:
            lora.save_merged(self.policy, folder)
        elif self.sharded:
            _save_gathered(self.policy, sharding.weights(self.policy), folder)
        else:
            self.policy.save_pretrained(folder)

    def after_training(self) -> None:
        """The policy back in eval mode after a round's trainer, without the reference adapter TRL added to a
        LoRA policy."""
        if self.is_lora:
            lora.drop_reference(self.policy)
        self.policy.eval()

    def snapshot(self, is_initial: bool = False) -> Snapshot:
        """The policy as it is now. `is_initial`: the policy has not moved from the initial one, which for LoRA
        is the base model (no adapter pass)."""
        if self.is_lora:
            return BaseModel() if is_initial else AdapterState(lora.adapter_state(self.policy))
        if self.sharded:
            return ShardedState.of(self.policy)
        return FullCopy(_frozen(copy.deepcopy(self.policy)))

    def refresh(self, snapshot: Snapshot | None) -> Snapshot:
        """The policy as it is now, copied into `snapshot`'s own tensors where it holds every weight (no second
        allocation each round), else a new snapshot."""
        if isinstance(snapshot, FullState):
            snapshot.mix(self.policy, 1.0)
            return snapshot
        return self.snapshot()

    def load(self, folder: str | pathlib.Path, is_initial: bool = False) -> Snapshot:
        """The policy saved in `folder` (a round checkpoint, the initial model, or a mixed reference's folder);
        `is_initial`: that is the initial model."""
        from transformers import AutoModelForCausalLM

        if self.is_lora:
            if is_initial:
                return BaseModel()
            return AdapterState(lora.saved_adapter_state(pathlib.Path(folder) / lora.ADAPTER_FOLDER))
        if self.sharded:
            return ShardedState(sharding.load_shards(folder, self.policy))
        dtype = next(self.policy.parameters()).dtype
        return FullCopy(_frozen(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)))

    def initial(self) -> Snapshot:
        """The initial policy: with LoRA the base model, else a frozen copy loaded once from its folder (on the
        policy's device)."""
        if self._initial is None:
            self._initial = self.load(self._initial_path, is_initial=True)
        return self._initial


def _save_gathered(
    policy: torch.nn.Module, state: Iterable[tuple[str, torch.Tensor]], folder: pathlib.Path
) -> None:
    """`state` (a sharded policy's state dict, or one laid out like it) gathered, and written by the main process
    as an HF folder with the policy's config (collective)."""
    gathered = dict(sharding.full_weights(state))  # empty but on the main process
    if sharding.is_main():
        policy.save_pretrained(folder, state_dict=gathered)


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    return model.eval().requires_grad_(False)


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
