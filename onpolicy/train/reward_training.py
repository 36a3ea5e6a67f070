"""Train a reward model on a preference file with TRL's `RewardTrainer`, for the built-in `reward_model` reward.

The base is a causal LM folder (by default the embedded SmolLM2); it becomes a sequence classifier with one
logit (a new score head), and the whole model is trained, or only that head (`head_only`). On this project's
2-core CPU, one epoch over 72 pairs with SmolLM2 takes about 80 s; the head alone learned less in more epochs
(it reads one token's features), so whole-model training is the default. The preference file is TRL's format, one
JSON object per line: `prompt` (chat turns) with `chosen` and `rejected` (the assistant turns), or `chosen` and
`rejected` as whole conversations.
"""

from __future__ import annotations

import pathlib
import tempfile

from onpolicy.errors import OnpolicyError


def train_reward_model(
    base: pathlib.Path,
    preferences: pathlib.Path,
    out: pathlib.Path,
    epochs: int = 1,
    learning_rate: float = 2e-5,
    batch_size: int = 8,
    head_only: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Train and save the reward model (with its tokenizer and chat template) to `out`; returns TRL's final
    training metrics (loss, accuracy on the training pairs)."""
    if not preferences.is_file():
        raise OnpolicyError(f"preference file not found: {preferences}")
    if out.exists() and any(out.iterdir()):
        raise OnpolicyError(f"{out} exists and is not empty; give a new folder")
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, PrinterCallback
    from trl import RewardConfig, RewardTrainer

    try:
        dataset = datasets.load_dataset("json", data_files=str(preferences), split="train")
    except Exception as exc:
        raise OnpolicyError(f"{preferences} is not a JSON-lines preference file: {exc}") from None
    missing = {"chosen", "rejected"} - set(dataset.column_names)
    if missing:
        raise OnpolicyError(f"{preferences}: every line needs chosen and rejected (missing {sorted(missing)})")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    if head_only:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("score.")
    with tempfile.TemporaryDirectory(prefix="onpolicy-rm-") as scratch:
        args = RewardConfig(
            output_dir=scratch,
            num_train_epochs=epochs,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            lr_scheduler_type="constant",
            bf16=False,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            seed=seed,
            disable_tqdm=True,
            dataloader_pin_memory=False,
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    last = logs[-1] if logs else {}
    return {key: float(value) for key, value in last.items() if isinstance(value, (int, float))}
