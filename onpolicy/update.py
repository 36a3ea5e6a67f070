"""Update: one DPO update per round on that round's pairs, with TRL's `DPOTrainer`.

The policy lives in memory for the whole job; only the trainer wrapper is rebuilt per round (its dataset
changes). The reference is handled without a second model where possible:

- `ref.refresh: every_round` (default): round n's reference is the policy at the start of round n, which is
  the policy the trainer holds before its first step. TRL's `precompute_ref_log_probs` with no `ref_model`
  computes the reference log-probs with exactly that model, once, before training: no copy, no reference
  forward per step. (Without precompute, `ref_model=None` makes TRL load the *initial* checkpoint from disk:
  a silent "never refresh".)
- `never` / `every: N`: a frozen copy of the policy is taken when the reference is due for a refresh, and TRL
  precomputes the reference log-probs with it before training.
"""

from __future__ import annotations

import copy
import math
import pathlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from onpolicy.config import RefConfig, TrainConfig
from onpolicy.types import Pair, UpdateResult

# TRL's per-step training logs, averaged over a round, under the names onpolicy logs them.
_TRL_METRICS = {
    "loss": "train/loss",
    "rewards/accuracies": "train/reward_accuracy",
    "rewards/margins": "train/reward_margin",
    "rewards/chosen": "train/reward_chosen",
    "rewards/rejected": "train/reward_rejected",
    "logps/chosen": "train/logp_chosen",
    "logps/rejected": "train/logp_rejected",
    "grad_norm": "train/grad_norm",
}


def reference_round(round_number: int, ref: RefConfig) -> int:
    """The round (1-based) whose starting policy is the reference of round `round_number`."""
    if ref.refresh == "every_round":
        return round_number
    if ref.refresh == "never":
        return 1
    return 1 + ref.every * ((round_number - 1) // ref.every)


class DPOUpdater:
    """Holds the policy (and, when the reference is not the round's starting policy, a frozen reference copy)
    and updates the policy with TRL's `DPOTrainer`."""

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        train: TrainConfig,
        ref: RefConfig,
        seed: int = 0,
        dtype: str = "float32",
    ) -> None:
        from transformers import AutoModelForCausalLM

        self.train_config = train
        self.ref_config = ref
        self.tokenizer = tokenizer
        # TRL wants an output folder; with save_strategy="no" it stays empty, so keep it out of the run directory.
        self._output_dir = tempfile.TemporaryDirectory(prefix="onpolicy-trainer-")
        self.seed = seed
        self.policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.reference: torch.nn.Module | None = None
        self._reference_round = 0

    @property
    def holds_reference_copy(self) -> bool:
        """Whether a second model is kept: only when the reference is not the round's starting policy."""
        return not (
            self.ref_config.refresh == "every_round"
            or (self.ref_config.refresh == "every" and self.ref_config.every == 1)
        )

    def restore_reference(self, folder: str | pathlib.Path, from_round: int) -> None:
        """On resume: the frozen reference is the policy saved after round `from_round` (0: the initial model)."""
        from transformers import AutoModelForCausalLM

        dtype = next(self.policy.parameters()).dtype
        self.reference = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval().requires_grad_(False)
        self._reference_round = from_round + 1

    def start_round(self, round_number: int) -> bool:
        """Refresh the reference copy if round `round_number` needs a newer one; True when it was refreshed."""
        if not self.holds_reference_copy:
            return True
        due = reference_round(round_number, self.ref_config)
        if due == self._reference_round:
            return False
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self._reference_round = due
        return True

    def update(
        self, pairs: Sequence[Pair], round_number: int, should_stop: Callable[[], bool] | None = None
    ) -> UpdateResult:
        """A DPO update on `pairs`; skipped (and said so) when there are none. When `should_stop()` turns true,
        training stops after the current step (the caller then abandons the round)."""
        if not pairs:
            return UpdateResult(skipped=True, metrics={})
        from datasets import Dataset
        from transformers import PrinterCallback, TrainerCallback
        from trl import DPOConfig, DPOTrainer

        class StopWhenAsked(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if should_stop is not None and should_stop():
                    control.should_training_stop = True

        rows = [
            {
                "prompt": [dict(m) for m in pair.messages],
                "chosen": [{"role": "assistant", "content": pair.chosen}],
                "rejected": [{"role": "assistant", "content": pair.rejected}],
            }
            for pair in pairs
        ]
        cfg = self.train_config
        args = DPOConfig(
            output_dir=self._output_dir.name,
            beta=cfg.beta,
            loss_type=cfg.loss_type,
            learning_rate=cfg.learning_rate,
            num_train_epochs=cfg.num_epochs,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            max_length=cfg.max_length,
            max_grad_norm=cfg.max_grad_norm,
            lr_scheduler_type=cfg.lr_scheduler_type,
            warmup_steps=cfg.warmup_steps,
            bf16=cfg.bf16,
            seed=self.seed + round_number,
            precompute_ref_log_probs=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            **cfg.extra,
        )
        trainer = DPOTrainer(
            model=self.policy,
            ref_model=self.reference,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=self.tokenizer,
            callbacks=[StopWhenAsked()],
        )
        trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout; onpolicy prints one line per round
        try:
            trainer.train()
            metrics = _average_logs(trainer.state.log_history)
            metrics["train/steps"] = float(trainer.state.global_step)
        finally:
            # DPOTrainer patches a fused LM head onto the model's forward; drop it so patches do not pile up
            # over rounds and the model stays an ordinary transformers model between updates.
            for model in (self.policy, self.reference):
                if model is not None:
                    model.__dict__.pop("forward", None)
            self.policy.eval()
            del trainer
        return UpdateResult(skipped=False, metrics=metrics)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their HF names, for the engine."""
        return iter(self.policy.state_dict().items())

    def save(self, folder: pathlib.Path) -> None:
        """The policy as an ordinary HF folder (config, safetensors, tokenizer with its chat template)."""
        self.policy.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def _average_logs(history: list[dict[str, float]]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for entry in history:
        for key, name in _TRL_METRICS.items():
            value = entry.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                sums.setdefault(name, []).append(float(value))
    return {name: sum(values) / len(values) for name, values in sums.items()}
