"""Update: one DPO update per round on that round's pairs, with TRL's `DPOTrainer`.

The policy lives in memory for the whole job; only the trainer wrapper is rebuilt per round (its dataset
changes). The updater holds the policy, its reference (`onpolicy.train.reference`: one kind per `ref.refresh`, none of
which costs a reference forward per step) and the glue to TRL; the pairs become TRL's tokenized rows in
`onpolicy.train.training_rows`.

Everything that relies on TRL beyond its public arguments (the trainer subclass for tokenized rows with engine
log-probs, two scoped adjustments of its internals, the mapping of its logs) lives in `onpolicy.train.trl_compat`.
"""

from __future__ import annotations

import math
import pathlib
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from onpolicy.config import RefConfig, TrainConfig
from onpolicy.devices import choose_gradient_checkpointing
from onpolicy.errors import OnpolicyError
from onpolicy.interfaces import Generator, PhaseProgress
from onpolicy.train import kl, sharding, trl_compat
from onpolicy.train.policy_storage import PolicyStorage, policy_storage
from onpolicy.train.policy_weights import PolicyWeights
from onpolicy.train.reference import build_reference
from onpolicy.train.training_rows import RowBuilder, TrainingRows, use_engine_logps
from onpolicy.types import Pair, SampleGroup, UpdateResult


class DPOUpdater:
    """Holds the policy and its reference, and updates the policy with TRL's `DPOTrainer`."""

    def __init__(
        self,
        initial_path: str,
        tokenizer: Any,
        train: TrainConfig,
        ref: RefConfig,
        seed: int = 0,
        dtype: str = "float32",
        engine_dtype: torch.dtype | None = None,
        checkpoint: str | pathlib.Path | None = None,
        processes: int = 1,
        kl: bool = False,
        storage: PolicyStorage | None = None,
    ) -> None:
        """`initial_path`: the initial policy's model folder; `checkpoint`: the round checkpoint a resumed run
        continues (None: train the initial policy); `storage`: how the policy is held (`onpolicy.train.policy_storage`;
        by default the kind `train` asks for in one process), which loads it; `processes`: how many data-parallel
        training processes run this update together (`onpolicy.train.distributed`), all of them together where the
        storage is sharded, after which every method is collective: each process calls it; `kl`: keep what
        `kl_from_samples` compares with; `engine_dtype`: what the engine that samples computes in (None: no engine
        log-probs)."""
        self.train_config = train
        self.tokenizer = tokenizer
        # TRL wants an output folder; with save_strategy="no" it stays empty, so keep it out of the run directory.
        self._output_dir = tempfile.TemporaryDirectory(prefix="onpolicy-trainer-")
        self.seed = seed
        self.processes = processes
        self.storage = storage if storage is not None else policy_storage(train)
        checkpoint = None if checkpoint is None else str(checkpoint)
        self.policy = self.storage.load(initial_path, checkpoint, getattr(torch, dtype), seed)
        self.weights = PolicyWeights(self.policy, self.storage, initial_path)
        self.reference = build_reference(ref, self.weights, keep_copy=kl)
        # The engine's log-probs are the reference's only when the reference is the policy that sampled.
        self.engine_logps = (
            engine_dtype is not None
            and self.reference.sampling_policy
            and use_engine_logps(ref, train, engine_dtype, self.policy.dtype)
        )
        self.rows = RowBuilder(tokenizer, train.max_length, self.engine_logps, ref.check_pairs, seed)

    def start_round(self, round_number: int) -> bool:
        """Refresh the reference if round `round_number` needs a newer one; True when it was refreshed."""
        return self.reference.start_round(round_number)

    def update(
        self,
        pairs: Sequence[Pair],
        round_number: int,
        should_stop: Callable[[], bool] | None = None,
        progress: PhaseProgress | None = None,
    ) -> UpdateResult:
        """A DPO update on `pairs`; skipped (and said so) when there are none. When `should_stop()` turns true,
        training stops after the current step (the caller then abandons the round); each step advances
        `progress`."""
        return self.train(self.prepare(pairs, round_number), round_number, should_stop, progress)

    def prepare(self, pairs: Sequence[Pair], round_number: int) -> TrainingRows:
        """The round's pairs as the trainer's rows (what every training process of a job receives)."""
        return self.rows.rows(pairs, round_number)

    def train(
        self,
        data: TrainingRows,
        round_number: int,
        should_stop: Callable[[], bool] | None = None,
        progress: PhaseProgress | None = None,
    ) -> UpdateResult:
        """The DPO update on prepared rows (`prepare`); skipped when there are none."""
        if data.dataset is None:
            metrics = (
                {"train/dropped_long_prompts": float(data.dropped_long_prompts)} if data.dropped_long_prompts else {}
            )
            return UpdateResult(skipped=True, metrics=metrics)
        cfg = self.train_config
        reference = self.reference.for_trainer()
        with trl_compat.adjusted_trl(self.storage.sharded):
            started = time.perf_counter()
            trainer = trl_compat.make_trainer(
                data.dataset,
                checked_rows=data.checked,
                group_by_length=cfg.group_by_length,
                should_stop=should_stop,
                progress=progress,
                reference_adapter=reference.adapter,
                reference_weights=reference.weights,
                model=self.policy,
                ref_model=reference.model,
                args=trl_compat.dpo_config(
                    cfg,
                    self._output_dir.name,
                    self.seed + round_number,
                    self.gradient_checkpointing,
                    self.processes,
                    round_number,
                    self.storage.sharded,
                ),  # fmt: skip
                processing_class=self.tokenizer,
            )
            setup_s = time.perf_counter() - started
            try:
                started = time.perf_counter()
                trainer.train()
                steps_s = time.perf_counter() - started
                metrics = trl_compat.round_metrics(trainer)
                metrics["train/dropped_long_prompts"] = float(data.dropped_long_prompts)
                metrics["train/beta"] = trainer.args.beta
                metrics["train/learning_rate"] = trainer.args.learning_rate  # the round's, before lr_scheduler_type
                epochs = trainer.state.global_step / max(trainer.state.max_steps, 1) * cfg.num_epochs
                metrics["perf/train_setup_s"] = setup_s - metrics["perf/ref_logps_s"]
                metrics["perf/train_steps_s"] = steps_s
                metrics["perf/train_tokens_per_s"] = data.tokens * epochs / steps_s if steps_s > 0 else 0.0
                check_finite(round_number, metrics, self.storage.non_finite(self.policy))
            finally:
                trl_compat.release(trainer, (self.policy, reference.model))
                self.weights.after_training()
        return UpdateResult(skipped=False, metrics=metrics)

    @property
    def gradient_checkpointing(self) -> bool:
        """train.gradient_checkpointing, `auto` resolved: on with a GPU, off on a CPU."""
        return choose_gradient_checkpointing(self.train_config.gradient_checkpointing, torch.cuda.is_available())

    def kl_from_samples(self, groups: Sequence[SampleGroup]) -> dict[str, float]:
        """eval/kl_initial and eval/kl_reference, with their _per_token (`onpolicy.train.kl`): the KL from the policy to
        the initial policy and to the reference the last round trained against, on the policy's own samples."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        initial = self.reference.initial()  # where the reference holds it already, else loaded once
        if initial is None:
            initial = self.weights.initial()
        return kl.kl_from_samples(self.policy, pad, groups, {"initial": initial, "reference": self.reference.last()})

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their HF names (with LoRA: merged)."""
        return self.weights.named()

    def send_policy(self, generator: Generator, version: str) -> None:
        """The policy into `generator` as weight version `version`, as its storage sends it (its weights, merged
        with LoRA, or the LoRA adapter alone)."""
        self.storage.send(self.policy, generator, version)

    def save(self, folder: pathlib.Path) -> None:
        """The policy as an ordinary HF folder (config, safetensors, tokenizer with its chat template); with LoRA
        the merged policy, and the adapter alone in adapter/ (what a resumed run continues)."""
        self.weights.save(folder)
        if sharding.is_main():  # a sharded policy is saved by every process together, its tokenizer by one
            self.tokenizer.save_pretrained(folder)

    def save_checkpoint(self, folder: pathlib.Path) -> None:
        """What a resumed run continues from: the policy (`save`) and, with `ref.refresh: mix`, the reference of
        the round just trained in `reference/` (no other folder holds a mix)."""
        self.save(folder)
        self.reference.save(folder)


class Diverged(OnpolicyError):
    """An update left a non-finite training metric or non-finite weights."""


def check_finite(round_number: int, metrics: Mapping[str, float], bad_weights: Sequence[str]) -> None:
    """Stop the job when round `round_number`'s update diverged: a training metric that is NaN or infinite, or
    trained weights that are (`bad_weights`, as the policy's storage finds them). Raised before the weights reach
    the engine or a checkpoint, so the last complete round stays the last good one."""
    bad_metrics = [f"{key} = {value}" for key, value in metrics.items() if not math.isfinite(value)]
    if not bad_metrics and not bad_weights:
        return
    found = "; ".join(
        ([f"non-finite {', '.join(bad_metrics[:4])}"] if bad_metrics else [])
        + ([f"non-finite weights: {', '.join(bad_weights[:3])}" + (" ..." if len(bad_weights) > 3 else "")]
           if bad_weights else [])
    )  # fmt: skip
    raise Diverged(
        f"round {round_number}'s update diverged ({found}). Its weights were neither sent to the engine nor "
        f"saved: round {round_number - 1} stays the last complete round. Resuming would repeat the same update; "
        "start again with a lower train.learning_rate (or a lower train.max_grad_norm), with --fresh or another "
        "--run-dir"
    )
