"""One policy held with its storage kind (`onpolicy.train.policy_storage`): what the reference kinds
(`onpolicy.train.reference`) and the KL estimate ask of it, snapshots taken and loaded, and the initial policy,
loaded once where it is asked for."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import torch

from onpolicy.train.policy_storage import PolicyStorage
from onpolicy.train.snapshots import FullState, Snapshot


class PolicyWeights:
    """Snapshots of `policy`, held as `storage` says, and its initial state (`initial_path`: the initial model's
    folder). Where the storage is sharded, every method is collective."""

    def __init__(self, policy: torch.nn.Module, storage: PolicyStorage, initial_path: str) -> None:
        self.policy = policy
        self.storage = storage
        self._initial_path = initial_path
        self._initial: Snapshot | None = None

    def named(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their HF names (with LoRA: merged, computed without touching the policy)."""
        return self.storage.named(self.policy)

    def save(self, folder: pathlib.Path) -> None:
        """The policy as an ordinary HF model folder (with LoRA merged, and the adapter alone in adapter/)."""
        self.storage.save(self.policy, folder)

    def after_training(self) -> None:
        """The policy back in eval mode after a round's trainer (without the reference adapter TRL added)."""
        self.storage.after_training(self.policy)

    def snapshot(self, is_initial: bool = False) -> Snapshot:
        """The policy as it is now. `is_initial`: the policy has not moved from the initial one, which for LoRA
        is the base model (no adapter pass)."""
        return self.storage.snapshot(self.policy, is_initial)

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
        return self.storage.load_snapshot(self.policy, folder, is_initial)

    def initial(self) -> Snapshot:
        """The initial policy: with LoRA the base model, else a frozen copy loaded once from its folder (on the
        policy's device)."""
        if self._initial is None:
            self._initial = self.load(self._initial_path, is_initial=True)
        return self._initial
