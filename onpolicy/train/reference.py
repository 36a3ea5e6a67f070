"""The reference a round's DPO update trains against, one kind per `ref.refresh`, chosen once (`build_reference`).

None of them costs training time:

- `RoundStartReference` (`every_round`, or `every: 1`): round n's reference is the policy at the start of round n,
  the very model that sampled the round's responses. The engine reported each sampled token's log-prob while
  sampling, so their sums may stand in for the reference's (`sampling_policy`); sides without them get TRL's exact
  no-grad pass with the policy before its first step (`precompute_ref_log_probs` with no `ref_model`; without
  precompute, `ref_model=None` would make TRL load the *initial* checkpoint from disk: a silent "never refresh").
  No copy is kept, except one for the KL estimate where it is asked for.
- `FrozenReference` (`never`, `every: N`): a snapshot of the policy taken when a refresh is due, from which TRL
  precomputes the reference log-probs before training; still no reference forward per step. With LoRA the
  snapshot is an adapter state, or the base model while the reference is the initial policy.
- `MixedReference` (`mix: a`): a frozen copy (of this process's shards, for a sharded policy) that moves toward
  the policy at the start of every round after the first, `ref = a * policy + (1 - a) * ref` (TR-DPO's soft
  update, per round rather than per step). No other folder holds a mix, so each round's checkpoint keeps it in
  `reference/` for a resumed run.

How each kind is held (a full copy, an adapter state, the base model, shards) is `onpolicy.train.snapshots`'s
business, and which of those a policy takes its storage kind's (`onpolicy.train.policy_storage`).
"""

from __future__ import annotations

import pathlib
from typing import Protocol

from onpolicy.config import RefConfig
from onpolicy.run.rundir import REFERENCE_FOLDER, RunDirectory
from onpolicy.train.policy_weights import PolicyWeights
from onpolicy.train.snapshots import FullState, Snapshot, TrainerReference


def reference_round(round_number: int, ref: RefConfig) -> int:
    """The round (1-based) whose starting policy is the reference of round `round_number` (with `mix`: the
    newest round whose starting policy went into it; the mixed reference is saved in its round checkpoints)."""
    if ref.refresh in ("every_round", "mix"):
        return round_number
    if ref.refresh == "never":
        return 1
    return 1 + ref.every * ((round_number - 1) // ref.every)


class Reference(Protocol):
    """The reference of each round: made ready at the round's start, handed to the trainer, compared with by the
    KL estimate, saved into a checkpoint and restored from one."""

    sampling_policy: bool  # the reference is the policy that sampled the round: engine log-probs may stand in
    checkpoint_folder: str | None  # where in a round checkpoint `save` puts it (None: it saves nothing)

    def start_round(self, round_number: int) -> bool:
        """Make round `round_number`'s reference ready; True when it was refreshed."""
        ...

    def for_trainer(self) -> TrainerReference:
        """What this round's trainer gets as its reference."""
        ...

    def last(self) -> Snapshot | None:
        """The reference the last round trained against, for the KL estimate (None: none kept)."""
        ...

    def initial(self) -> Snapshot | None:
        """The initial policy, where this reference holds it already (else None)."""
        ...

    def save(self, checkpoint: pathlib.Path) -> None:
        """Into a round checkpoint: what no other folder holds."""
        ...

    def restore(self, folder: str | pathlib.Path, from_round: int) -> None:
        """On resume: the reference as it stood after round `from_round` (0: the initial model), from `folder`."""
        ...


class RoundStartReference:
    """The policy as each round starts (`keep_copy`: a snapshot of it is kept for the KL estimate)."""

    sampling_policy = True
    checkpoint_folder = None

    def __init__(self, weights: PolicyWeights, ref: RefConfig, keep_copy: bool = False) -> None:
        self.weights = weights
        self.keep_copy = keep_copy
        self._snapshot: Snapshot | None = None

    def start_round(self, round_number: int) -> bool:
        if self.keep_copy:  # TRL keeps no copy of the round's starting policy: the KL estimate needs one
            self._snapshot = self.weights.refresh(self._snapshot)
        return True

    def for_trainer(self) -> TrainerReference:
        return TrainerReference()

    def last(self) -> Snapshot | None:
        return self._snapshot

    def initial(self) -> Snapshot | None:
        return None

    def save(self, checkpoint: pathlib.Path) -> None:
        pass

    def restore(self, folder: str | pathlib.Path, from_round: int) -> None:
        pass

    @staticmethod
    def restore_source(run: RunDirectory, last_complete: int, reference_from: int, model_path: str) -> None:
        return None


class FrozenReference:
    """A snapshot taken when a refresh is due (round 1, then every `ref.every` rounds; `never`: round 1 only)."""

    sampling_policy = False
    checkpoint_folder = None

    def __init__(self, weights: PolicyWeights, ref: RefConfig, keep_copy: bool = False) -> None:
        self.weights = weights  # a snapshot is kept in any case: `keep_copy` asks nothing more
        self.ref = ref
        self._snapshot: Snapshot | None = None
        self._round = 0  # the round whose starting policy `_snapshot` is (0: none yet)

    def start_round(self, round_number: int) -> bool:
        due = reference_round(round_number, self.ref)
        if due == self._round:
            return False
        self._snapshot = self.weights.snapshot(is_initial=due == 1)
        self._round = due
        return True

    def for_trainer(self) -> TrainerReference:
        assert self._snapshot is not None, "start_round comes first"
        return self._snapshot.for_trainer()

    def last(self) -> Snapshot | None:
        return self._snapshot

    def initial(self) -> Snapshot | None:
        return self._snapshot if self._round == 1 else None

    def save(self, checkpoint: pathlib.Path) -> None:
        pass  # the reference is the policy of an earlier checkpoint (or the initial model), kept by retention

    def restore(self, folder: str | pathlib.Path, from_round: int) -> None:
        self._snapshot = self.weights.load(folder, is_initial=from_round == 0)
        self._round = from_round + 1

    @staticmethod
    def restore_source(
        run: RunDirectory, last_complete: int, reference_from: int, model_path: str
    ) -> tuple[str, int] | None:
        """The checkpoint (or initial model) the next round's reference comes from, unless that round takes a
        new one (then None)."""
        if last_complete < 1 or reference_from >= last_complete:
            return None
        return (model_path if reference_from == 0 else str(run.checkpoint(reference_from))), reference_from


class MixedReference:
    """A full copy that moves `ref.mix` of the way toward the policy at each round's start (full fine-tuning
    only: a LoRA policy is refused by the config)."""

    sampling_policy = False
    checkpoint_folder = REFERENCE_FOLDER

    def __init__(self, weights: PolicyWeights, ref: RefConfig, keep_copy: bool = False) -> None:
        self.weights = weights  # a copy is kept in any case: `keep_copy` asks nothing more
        self.share = ref.mix
        self._snapshot: FullState | None = None
        self._round = 0  # the newest round whose starting policy went into the mix

    def start_round(self, round_number: int) -> bool:
        if round_number == self._round:
            return False
        if self._snapshot is None:
            snapshot = self.weights.snapshot()
            assert isinstance(snapshot, FullState), "a mixed reference needs full weights (refused with LoRA)"
            self._snapshot = snapshot
        else:
            self._snapshot.mix(self.weights.policy, self.share)
        self._round = round_number
        return True

    def for_trainer(self) -> TrainerReference:
        assert self._snapshot is not None, "start_round comes first"
        return self._snapshot.for_trainer()

    def last(self) -> Snapshot | None:
        return self._snapshot

    def initial(self) -> Snapshot | None:
        return None

    def save(self, checkpoint: pathlib.Path) -> None:
        if self._snapshot is not None:
            self._snapshot.save(self.weights.policy, checkpoint / self.checkpoint_folder)

    def restore(self, folder: str | pathlib.Path, from_round: int) -> None:
        snapshot = self.weights.load(folder)
        assert isinstance(snapshot, FullState)
        self._snapshot = snapshot
        self._round = from_round + 1

    @staticmethod
    def restore_source(
        run: RunDirectory, last_complete: int, reference_from: int, model_path: str
    ) -> tuple[str, int] | None:
        """The mix the last complete round trained against, saved with it."""
        if last_complete < 1:
            return None
        return str(run.checkpoint(last_complete) / MixedReference.checkpoint_folder), last_complete - 1


ReferenceKind = type[RoundStartReference] | type[FrozenReference] | type[MixedReference]


def reference_kind(ref: RefConfig) -> ReferenceKind:
    """The reference kind `ref.refresh` names."""
    if ref.is_round_start_policy:
        return RoundStartReference
    return MixedReference if ref.refresh == "mix" else FrozenReference


def build_reference(ref: RefConfig, weights: PolicyWeights, keep_copy: bool = False) -> Reference:
    """The reference `ref` asks for, over `weights` (`keep_copy`: the KL estimate compares with the round-start
    policy, so that kind keeps a copy)."""
    return reference_kind(ref)(weights, ref, keep_copy)


def restore_source(
    ref: RefConfig, run: RunDirectory, last_complete: int, reference_from: int, model_path: str
) -> tuple[str, int] | None:
    """Where a resumed job's reference comes from, as (folder, the round after which it stood), for a run that
    continues after round `last_complete` whose next reference is the policy after round `reference_from` (0:
    the initial model at `model_path`); None where the reference makes it itself (the round's starting policy,
    or a reference not taken yet)."""
    return reference_kind(ref).restore_source(run, last_complete, reference_from, model_path)
