"""Checks of train-config values against the installed TRL, so that a typo fails at config time, not after the
models are loaded."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

# The loss types of trl.DPOTrainer (trl/trainer/dpo_trainer.py, `_compute_loss`).
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip

# DPOConfig fields that onpolicy sets itself from its own config or must own (the loop depends on them).
OWNED_FIELDS = {
    "beta": "train.beta",
    "loss_type": "train.loss_type",
    "learning_rate": "train.learning_rate",
    "num_train_epochs": "train.num_epochs",
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "max_length": "train.max_length",
    "max_grad_norm": "train.max_grad_norm",
    "lr_scheduler_type": "train.lr_scheduler_type",
    "warmup_steps": "train.warmup_steps",
    "bf16": "train.bf16",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "train_sampling_strategy": "train.group_by_length",
    "seed": "seed",
    "output_dir": "--run-dir",
    "report_to": "wandb.mode",
    "precompute_ref_log_probs": "ref.refresh",
    "save_strategy": "checkpoint.every",
}


def check_dpo_config_fields(loss_type: str, extra: Mapping[str, Any]) -> None:
    """Raise ValueError for an unknown loss type, or an `extra` key DPOConfig lacks or onpolicy owns."""
    if loss_type not in DPO_LOSS_TYPES:
        near = difflib.get_close_matches(loss_type, DPO_LOSS_TYPES, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f" (one of: {', '.join(DPO_LOSS_TYPES)})"
        raise ValueError(f"train.loss_type: unknown DPO loss type '{loss_type}'{hint}")
    if not extra:
        return
    from trl import DPOConfig

    known = {f.name for f in dataclasses.fields(DPOConfig)}
    for key in extra:
        if key in OWNED_FIELDS:
            raise ValueError(f"train.extra.{key} is set by onpolicy: use {OWNED_FIELDS[key]} instead")
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            raise ValueError(
                f"train.extra.{key}: trl.DPOConfig has no field '{key}'"
                + (f"; did you mean '{near[0]}'?" if near else "")
            )
