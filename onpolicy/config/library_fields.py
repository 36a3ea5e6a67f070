"""What `train.*` may hand to the libraries it configures: the fields of TRL's `DPOConfig` (the loss types its
`DPOTrainer` knows, the fields `train.extra` may set) and of PEFT's `LoraConfig` (`train.lora`), read from the
installed libraries when a config is checked, so that a typo is a config error before any model loads.

The field table that builds a round's `DPOConfig` (`onpolicy.train.trl_compat.dpo_config`) lives here too: one
table says both what onpolicy sets and what `train.extra` therefore may not.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

# DPOConfig field <- the train.* key that sets it. The same table builds the config and tells a `train.extra` key
# that it may not set the field.
DPO_FIELDS_FROM_TRAIN = {
    "beta": "beta",
    "loss_type": "loss_type",
    "loss_weights": "loss_weights",
    "learning_rate": "learning_rate",
    "num_train_epochs": "num_epochs",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "max_length": "max_length",
    "max_grad_norm": "max_grad_norm",
    "lr_scheduler_type": "lr_scheduler_type",
    "warmup_steps": "warmup_steps",
    "bf16": "bf16",
}
# DPOConfig fields onpolicy sets from elsewhere (what sets them instead), or must own because the loop depends on
# them (why): every field `onpolicy.train.trl_compat.dpo_config` passes itself is here, so `train.extra` cannot pass
# it a second time.
DPO_FIELDS_SET_BY_ONPOLICY = {
    "gradient_checkpointing": "train.gradient_checkpointing",
    "train_sampling_strategy": "train.group_by_length",
    "seed": "seed",
    "output_dir": "--run-dir",
    "report_to": "wandb.mode",
    "precompute_ref_log_probs": "ref.refresh",
    "save_strategy": "checkpoint.every",
    "per_device_train_batch_size": "train.batch_size",
    "ddp_backend": "the launcher (torchrun / accelerate launch)",
    "ddp_timeout": "train.collective_timeout_s",
    "logging_steps": "every step is logged, and averaged per round (rounds.jsonl, W&B)",
    "disable_tqdm": "the job's own progress display",
    "use_cpu": "CUDA_VISIBLE_DEVICES (empty: train on the CPU)",
    "accelerator_config": "train.sharding (a sharded job's trainers use the accelerate state it set up)",
}
OWNED_FIELDS = {**{field: f"train.{key}" for field, key in DPO_FIELDS_FROM_TRAIN.items()}, **DPO_FIELDS_SET_BY_ONPOLICY}


@functools.cache
def dpo_loss_types() -> tuple[str, ...]:
    """The loss types the installed TRL's `DPOTrainer` knows, read from `DPOConfig.loss_type`'s own help text."""
    from trl.trainer.dpo_config import DPOConfig

    field = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type")
    return tuple(re.findall(r"`'(\w+)'`", field.metadata["help"]))


def check_dpo_config_fields(loss_types: Sequence[str], extra: Mapping[str, Any]) -> None:
    """Raise ValueError for an unknown loss type, or an `extra` key DPOConfig lacks or onpolicy owns."""
    known_losses = dpo_loss_types()
    for loss in loss_types:
        if loss not in known_losses:
            near = difflib.get_close_matches(loss, known_losses, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f" (one of: {', '.join(known_losses)})"
            raise ValueError(f"train.loss_type: unknown DPO loss type '{loss}'{hint}")
    if not extra:
        return
    from trl.trainer.dpo_config import DPOConfig

    known = {f.name for f in dataclasses.fields(DPOConfig)}
    for key in extra:
        if key == "push_to_hub" or key.startswith("hub_"):
            raise ValueError(
                f"train.extra.{key}: a job never publishes weights (its checkpoints and final/ are HF folders on "
                "local storage); upload the one you choose yourself, e.g. `hf upload REPO RUN_DIR/final`"
            )
        if key in OWNED_FIELDS:
            raise ValueError(f"train.extra.{key} is set by onpolicy; it follows {OWNED_FIELDS[key]}")
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            raise ValueError(
                f"train.extra.{key}: trl.DPOConfig has no field '{key}'"
                + (f"; did you mean '{near[0]}'?" if near else "")
            )


def check_lora_fields(settings: Mapping[str, Any]) -> None:
    """Raise ValueError for a `train.lora` key PEFT's LoraConfig lacks or onpolicy sets itself."""
    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig)}
    for key in settings:
        if key == "task_type":
            raise ValueError("train.lora.task_type is set by onpolicy (CAUSAL_LM)")
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            raise ValueError(
                f"train.lora.{key}: peft.LoraConfig has no field '{key}'"
                + (f"; did you mean '{near[0]}'?" if near else "")
            )
