"""How the policy's weights are held while it trains: one kind per mode, chosen once (`policy_storage`).

- `FullWeights`: every weight, trained (full fine-tuning);
- `LoraAdapter`: a frozen base model with a PEFT LoRA adapter trained on it, sent to the generator merged into the
  base weights, or as the adapter alone (`generation.lora_sync: adapter`: the generator then serves the base model
  with the adapter on top);
- `ShardedWeights`: every weight, sharded over the training processes with FSDP2 (`onpolicy.train.sharding`), so
  that whatever reads the policy whole (a sync, a save, a snapshot) runs on every process together.

A kind is a frozen description, no model in it: the composition root asks it, before anything loads, what the
generator starts from (`engine_start`) and what a round checkpoint holds for a resumed run to be whole
(`checkpoint_adapters`); the main process sends it to the other training processes, and each updater `load`s the
policy with it. Its other methods work on that policy; `onpolicy.train.policy_weights.PolicyWeights` holds the
policy with its kind, and the snapshots the reference and the KL estimate take of it.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch

from onpolicy.train import lora, sharding
from onpolicy.train.snapshots import AdapterState, BaseModel, FullCopy, ShardedState, Snapshot, save_gathered
from onpolicy.types import EngineStart

if TYPE_CHECKING:
    from onpolicy.config import TrainConfig
    from onpolicy.interfaces import Generator, TrainingTeam


class PolicyStorage(Protocol):
    """One way of holding the policy's weights (see the module docstring)."""

    # the PEFT adapter subfolders a round checkpoint holds beside the HF model folder, which a resumed run loads
    checkpoint_adapters: tuple[str, ...]
    sharded: bool  # the policy reaches the trainer sharded (`onpolicy.train.trl_compat` takes it as it is)
    # the generator serves adapters of this rank on top of the base model (None: it serves whole weights)
    served_adapter_rank: int | None

    def engine_start(self, initial: str, checkpoint: str | None) -> EngineStart:
        """What the generator starts from: the initial model's folder, or a checkpoint a resumed run continues."""
        ...

    def load(self, initial: str, checkpoint: str | None, dtype: torch.dtype, seed: int) -> torch.nn.Module:
        """The policy to train: the initial model, or the round checkpoint a resumed run continues."""
        ...

    def named(self, policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their HF names (collective where sharded: the main process gets them)."""
        ...

    def send(self, policy: torch.nn.Module, generator: Generator, version: str) -> None:
        """The policy into the generator, as weight version `version`: its weights, or the adapter alone."""
        ...

    def save(self, policy: torch.nn.Module, folder: pathlib.Path) -> None:
        """The policy as an ordinary HF model folder, with the adapters `checkpoint_adapters` names."""
        ...

    def after_training(self, policy: torch.nn.Module) -> None:
        """The policy as a round's trainer left it, made ready to sample from and snapshot again."""
        ...

    def snapshot(self, policy: torch.nn.Module, is_initial: bool = False) -> Snapshot:
        """The policy as it is now; `is_initial`: it has not moved from the initial policy."""
        ...

    def load_snapshot(self, policy: torch.nn.Module, folder: str | pathlib.Path, is_initial: bool = False) -> Snapshot:
        """A saved state of the policy (a round checkpoint, the initial model, a mixed reference's folder);
        `is_initial`: that is the initial model."""
        ...

    def non_finite(self, policy: torch.nn.Module) -> list[str]:
        """The trained weights holding NaN or infinity (`count of size in name`; collective where sharded)."""
        ...


@dataclasses.dataclass(frozen=True)
class FullWeights:
    """Every weight, trained, in this process."""

    checkpoint_adapters: tuple[str, ...] = ()
    sharded: bool = False
    served_adapter_rank: int | None = None

    def engine_start(self, initial: str, checkpoint: str | None) -> EngineStart:
        return EngineStart(checkpoint or initial)

    def load(self, initial: str, checkpoint: str | None, dtype: torch.dtype, seed: int) -> torch.nn.Module:
        return _from_pretrained(checkpoint or initial, dtype)

    def named(self, policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(policy.state_dict().items())

    def send(self, policy: torch.nn.Module, generator: Generator, version: str) -> None:
        generator.load_weights(self.named(policy), version)

    def save(self, policy: torch.nn.Module, folder: pathlib.Path) -> None:
        policy.save_pretrained(folder)

    def after_training(self, policy: torch.nn.Module) -> None:
        policy.eval()

    def snapshot(self, policy: torch.nn.Module, is_initial: bool = False) -> Snapshot:
        return FullCopy(_frozen(copy.deepcopy(policy)))

    def load_snapshot(self, policy: torch.nn.Module, folder: str | pathlib.Path, is_initial: bool = False) -> Snapshot:
        return FullCopy(_frozen(_from_pretrained(str(folder), next(policy.parameters()).dtype)))

    def non_finite(self, policy: torch.nn.Module) -> list[str]:
        return _non_finite(policy)


@dataclasses.dataclass(frozen=True)
class LoraAdapter:
    """A PEFT LoRA adapter (`settings`: `train.lora`, PEFT's LoraConfig fields) trained on a frozen base model,
    the initial model; `sends_adapter`: the generator is sent the adapter alone, else the merged weights."""

    settings: Mapping[str, Any]
    sends_adapter: bool = False
    checkpoint_adapters: tuple[str, ...] = (lora.ADAPTER_FOLDER,)  # the adapter a resumed run continues
    sharded: bool = False

    @property
    def served_adapter_rank(self) -> int | None:
        return lora.rank(self.settings) if self.sends_adapter else None

    def engine_start(self, initial: str, checkpoint: str | None) -> EngineStart:
        if not self.sends_adapter:
            return EngineStart(checkpoint or initial)
        # the generator serves the base model and loads each adapter on top: a resumed run sends its own first
        return EngineStart(initial, send_policy=checkpoint is not None)

    def load(self, initial: str, checkpoint: str | None, dtype: torch.dtype, seed: int) -> torch.nn.Module:
        base = _from_pretrained(initial, dtype)
        if checkpoint is not None:
            return lora.load_adapter(base, str(pathlib.Path(checkpoint) / lora.ADAPTER_FOLDER))
        return lora.add_adapter(base, self.settings, seed)

    def named(self, policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        return lora.merged_weights(policy)

    def send(self, policy: torch.nn.Module, generator: Generator, version: str) -> None:
        if self.sends_adapter:
            generator.load_adapter(policy.save_pretrained, version)
        else:
            generator.load_weights(self.named(policy), version)

    def save(self, policy: torch.nn.Module, folder: pathlib.Path) -> None:
        lora.save_merged(policy, folder)

    def after_training(self, policy: torch.nn.Module) -> None:
        lora.drop_reference(policy)  # the reference adapter TRL added for the round
        policy.eval()

    def snapshot(self, policy: torch.nn.Module, is_initial: bool = False) -> Snapshot:
        # LoRA starts as a no-op: the initial policy is the base model, the adapter off
        return BaseModel() if is_initial else AdapterState(lora.adapter_state(policy))

    def load_snapshot(self, policy: torch.nn.Module, folder: str | pathlib.Path, is_initial: bool = False) -> Snapshot:
        if is_initial:
            return BaseModel()
        return AdapterState(lora.saved_adapter_state(pathlib.Path(folder) / lora.ADAPTER_FOLDER))

    def non_finite(self, policy: torch.nn.Module) -> list[str]:
        return _non_finite(policy)


@dataclasses.dataclass(frozen=True)
class ShardedWeights:
    """Every weight, sharded over the training processes (FSDP2; `mixed_precision`: accelerate's setting, "bf16"
    or "no"). Every method that reads the policy is collective: each process calls it, on its own shard."""

    mixed_precision: str = "no"
    checkpoint_adapters: tuple[str, ...] = ()
    sharded: bool = True
    served_adapter_rank: int | None = None

    def engine_start(self, initial: str, checkpoint: str | None) -> EngineStart:
        return EngineStart(checkpoint or initial)

    def load(self, initial: str, checkpoint: str | None, dtype: torch.dtype, seed: int) -> torch.nn.Module:
        return sharding.shard(_from_pretrained(checkpoint or initial, dtype), self.mixed_precision)

    def named(self, policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        return sharding.full_weights(sharding.weights(policy))  # on the main process; the others get nothing

    def send(self, policy: torch.nn.Module, generator: Generator, version: str) -> None:
        generator.load_weights(self.named(policy), version)  # the main process's part; the others drain `named`

    def save(self, policy: torch.nn.Module, folder: pathlib.Path) -> None:
        save_gathered(policy, sharding.weights(policy), folder)

    def after_training(self, policy: torch.nn.Module) -> None:
        policy.eval()

    def snapshot(self, policy: torch.nn.Module, is_initial: bool = False) -> Snapshot:
        return ShardedState.of(policy)

    def load_snapshot(self, policy: torch.nn.Module, folder: str | pathlib.Path, is_initial: bool = False) -> Snapshot:
        return ShardedState(sharding.load_shards(folder, policy))

    def non_finite(self, policy: torch.nn.Module) -> list[str]:
        mine = _non_finite(policy)
        if sharding.any_process(bool(mine)) and not mine:
            return ["in another training process's shard"]  # every process stops, not only the one that saw it
        return mine


def policy_storage(train: TrainConfig, lora_sync: str = "merged", team: TrainingTeam | None = None) -> PolicyStorage:
    """The kind `train` asks for (`lora_sync`: `generation.lora_sync`), sharded where the job's `team` of training
    processes shards the policy (by `train.sharding`, or an FSDP2 launch)."""
    if team is not None and team.sharded:
        return ShardedWeights("bf16" if train.bf16 else "no")
    if train.lora is not None:
        return LoraAdapter(dict(train.lora), sends_adapter=lora_sync == "adapter")
    return FullWeights()


def _from_pretrained(folder: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    return model.eval().requires_grad_(False)


def _non_finite(policy: torch.nn.Module) -> list[str]:
    """This process's trained weights (its shards, where sharded) holding NaN or infinity."""
    return [
        f"{int((~torch.isfinite(shard)).sum())} of {shard.numel()} in {name}"
        for name, weight in sharding.parameters(policy)
        if weight.requires_grad and not bool(torch.isfinite(shard := sharding.local(weight)).all())
    ]
