"""Update: one DPO update per round on that round's pairs, with TRL's `DPOTrainer`.

The policy lives in memory for the whole job; only the trainer wrapper is rebuilt per round (its dataset
changes). Pairs reach TRL as token ids: the prompt as the engine saw it and each side as the policy sampled
it, so training scores exactly the tokens that were sampled (a pair with an edited side is tokenized from its
text on both sides: see `PairTokens`).

The reference costs no training time:

- `ref.refresh: every_round` (default): round n's reference is the policy at the start of round n, the very
  model that sampled the round's responses. vLLM reported each sampled token's log-prob while sampling, so
  their sums are the reference log-probs, handed to TRL as `ref_chosen_logps` / `ref_rejected_logps`: no
  second model, no reference pass. `ref.check_pairs` pairs a round are also scored by the trainer, and the
  difference is logged as `perf/ref_logp_mismatch`. Sides without engine log-probs (edits, responses cut by
  `train.max_length`) and `ref.logps: trainer` get TRL's exact no-grad pass with the policy before its first
  step (`precompute_ref_log_probs` with no `ref_model`; without precompute, `ref_model=None` would make TRL
  load the *initial* checkpoint from disk: a silent "never refresh").
- `never` / `every: N`: a frozen copy of the policy is taken when the reference is due for a refresh, and TRL
  precomputes the reference log-probs with it before training; still no reference forward per step.

Two TRL internals are adjusted while a round's trainer lives, each measured in `bench_train` / `bench_round`
and tested: its fused LM head scores only completion tokens on a CPU too (`lm_head_on_completions_only`), and
its reference cache is keyed without hashing every weight (`unique_model_hash`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import pathlib
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from onpolicy.config import RefConfig, TrainConfig
from onpolicy.tokens import prompt_ids, response_ids
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


def use_engine_logps(ref: RefConfig, engine_dtype: torch.dtype, train_dtype: torch.dtype, bf16: bool) -> bool:
    """Whether the engine's sampling log-probs stand in for the reference's (`ref.logps`; `auto`: when the engine
    computes in the dtype the trainer does, so that the two agree to rounding)."""
    if ref.logps != "auto":
        return ref.logps == "engine"
    return engine_dtype == train_dtype and not bf16


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
        engine_dtype: torch.dtype | None = None,
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
        # The engine's log-probs (of an engine computing in `engine_dtype`) are the reference's only when the
        # reference is the policy that sampled.
        self.engine_logps = (
            engine_dtype is not None
            and use_engine_logps(ref, engine_dtype, self.policy.dtype, train.bf16)
            and not self.holds_reference_copy
        )

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

        class StopWhenAsked(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if should_stop is not None and should_stop():
                    control.should_training_stop = True

        cfg = self.train_config
        # As TRL does: a prompt that fills max_length leaves no completion to learn from.
        rows = [row for row in map(self._row, pairs) if len(row["prompt_ids"]) < self._max_length]
        if not rows:
            return UpdateResult(skipped=True, metrics={"train/dropped_long_prompts": float(len(pairs))})
        checked = [i for i, row in enumerate(rows) if row["ref_chosen_logps"] is not None]
        checked = sorted(
            random.Random(self.seed + round_number).sample(checked, min(len(checked), self.ref_config.check_pairs))
        )
        with lm_head_on_completions_only(), unique_model_hash():
            started = time.perf_counter()
            trainer = _tokenized_trainer_class()(
                checked_rows=checked,
                group_by_length=cfg.group_by_length,
                model=self.policy,
                ref_model=self.reference,
                args=self._dpo_config(round_number),
                train_dataset=Dataset.from_list(rows),
                processing_class=self.tokenizer,
                callbacks=[StopWhenAsked()],
            )
            trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout; onpolicy prints one line per round
            trainer.data_collator = padding = _PaddingCounter(trainer.data_collator)
            setup_s = time.perf_counter() - started
            try:
                started = time.perf_counter()
                trainer.train()
                steps_s = time.perf_counter() - started
                metrics = _average_logs(trainer.state.log_history)
                metrics["train/steps"] = float(trainer.state.global_step)
                metrics["train/dropped_long_prompts"] = float(len(pairs) - len(rows))
                metrics.update(trainer.reference_metrics)
                tokens = sum(
                    min(len(r["prompt_ids"]) + len(r[side]), self._max_length) for r in rows for side in _SIDES
                )
                epochs = trainer.state.global_step / max(trainer.state.max_steps, 1) * cfg.num_epochs
                metrics["perf/train_setup_s"] = setup_s - metrics["perf/ref_logps_s"]
                metrics["perf/train_steps_s"] = steps_s
                metrics["perf/train_tokens_per_s"] = tokens * epochs / steps_s if steps_s > 0 else 0.0
                metrics["perf/train_padding"] = padding.share
            finally:
                # DPOTrainer patches a fused LM head onto the model's forward; drop it so patches do not pile up
                # over rounds and the model stays an ordinary transformers model between updates.
                for model in (self.policy, self.reference):
                    if model is not None:
                        model.__dict__.pop("forward", None)
                self.policy.eval()
                del trainer
        return UpdateResult(skipped=False, metrics=metrics)

    def _dpo_config(self, round_number: int) -> Any:
        """TRL's training arguments for round `round_number`, from train.* (and train.extra)."""
        from trl import DPOConfig

        cfg = self.train_config
        return DPOConfig(
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
            gradient_checkpointing=self.gradient_checkpointing,
            seed=self.seed + round_number,
            precompute_ref_log_probs=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            **cfg.extra,
        )

    @property
    def gradient_checkpointing(self) -> bool:
        """train.gradient_checkpointing, `auto` resolved: on with a GPU, off on a CPU."""
        setting = self.train_config.gradient_checkpointing
        return torch.cuda.is_available() if setting == "auto" else setting

    @property
    def _max_length(self) -> int:
        """train.max_length, or no limit."""
        return self.train_config.max_length if self.train_config.max_length is not None else sys.maxsize

    def _row(self, pair: Pair) -> dict[str, Any]:
        """A pair as TRL's tokenized preference row, with the engine's reference log-probs where they are the
        reference's (None: the trainer computes them)."""
        tokens = pair.tokens
        prompt = list(tokens.prompt) if tokens else prompt_ids(self.tokenizer, pair.messages)
        row: dict[str, Any] = {"prompt_ids": prompt}
        for side, text in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            # without tokens (a pair built from text): both sides tokenized, ended by EOS
            ids, logp, end = (
                (getattr(tokens, f"{side}{field}") for field in ("", "_logp", "_end")) if tokens else (None,) * 3
            )
            row[f"{side}_ids"] = list(ids) if ids is not None else response_ids(self.tokenizer, text, end)
            fits = len(prompt) + len(row[f"{side}_ids"]) <= self._max_length
            row[f"ref_{side}_logps"] = logp if self.engine_logps and ids is not None and fits else None
        if row["ref_chosen_logps"] is None or row["ref_rejected_logps"] is None:  # a pair's two sides, one source
            row["ref_chosen_logps"] = row["ref_rejected_logps"] = None
        # what the pair occupies of a padded batch (both sides padded to the longest), for group_by_length
        row["length"] = min(len(prompt) + max(len(row["chosen_ids"]), len(row["rejected_ids"])), self._max_length)
        return row

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their HF names, for the engine."""
        return iter(self.policy.state_dict().items())

    def save(self, folder: pathlib.Path) -> None:
        """The policy as an ordinary HF folder (config, safetensors, tokenizer with its chat template)."""
        self.policy.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def lm_head_on_completions_only() -> contextlib.AbstractContextManager[None]:
    """While open, TRL's fused LM head scores only the completion tokens on a CPU too, as it does on GPUs.

    `DPOTrainer` gets per-token log-probs through a chunked LM head (`trl.kernels.ChunkedLogProbFunction`). On
    Triton devices it projects only the positions with a label; on any other device it projects every position,
    prompt and padding included, so that tile shapes never change for ahead-of-time compilers (Neuron). An eager
    CPU compiles nothing, and there about half of a round's positions are prompt and padding: on the default
    round, scoring only the completions made the update 1.3x faster with the same loss to five digits
    (`bench_train`). TRL decides this with `trl.trainer.utils._use_triton`, which it consults for nothing else.
    """
    return _replaced("trl.trainer.utils", "_use_triton", lambda on_triton: lambda d: d.type == "cpu" or on_triton(d))


def unique_model_hash() -> contextlib.AbstractContextManager[None]:
    """While open, TRL's `DPOTrainer` names its reference log-prob cache by a fresh random key instead of a hash
    of every weight of the model. TRL hashes the whole model (sha256 over all its bytes) each time a trainer is
    made with `precompute_ref_log_probs`, to reuse cached reference log-probs of the same data and model; every
    onpolicy round has new pairs and a new model, so the cache never hits, and the hash is pure cost: 0.5 s per
    round for the 135M model here, growing with the model (a 7B model is 28 GB of fp32 bytes to hash)."""
    return _replaced("trl.trainer.dpo_trainer", "hash_module", lambda _: lambda module: uuid.uuid4().hex)


@contextlib.contextmanager
def _replaced(module_name: str, attribute: str, replacement: Callable[[Any], Any]) -> Iterator[None]:
    """`module.attribute` set to `replacement(original)` while open (a TRL without it is left as it is: the tests
    that measure each effect then fail)."""
    module = importlib.import_module(module_name)
    original = getattr(module, attribute, None)
    if original is None:
        yield
        return
    setattr(module, attribute, replacement(original))
    try:
        yield
    finally:
        setattr(module, attribute, original)


def _average_logs(history: list[dict[str, float]]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for entry in history:
        for key, name in _TRL_METRICS.items():
            value = entry.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                sums.setdefault(name, []).append(float(value))
    return {name: sum(values) / len(values) for name, values in sums.items()}


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Row order for `train.group_by_length`: each epoch, the rows sorted by length (ties in random order), cut
    into batches, and the full batches shuffled. transformers' `LengthGroupedSampler` sorts only within random
    "megabatches" of a quarter of the data, which at a round's few batches groups little or nothing."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        shuffle = random.Random(self.seed * 1_000_003 + self.epoch)
        ties = [shuffle.random() for _ in self.lengths]
        order = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], ties[i]))
        full = len(order) - len(order) % self.batch_size
        batches = [order[i : i + self.batch_size] for i in range(0, full, self.batch_size)]
        shuffle.shuffle(batches)
        # the loader cuts this order into batches again: a short batch goes last, where it does not shift them
        return iter([i for batch in batches for i in batch] + order[full:])


class _PaddingCounter:
    """TRL's collator, counting how much of the training batches it pads (what `group_by_length` lowers)."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collate = collate
        self.positions = self.padded = 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        mask = batch["attention_mask"]
        self.positions += mask.numel()
        self.padded += mask.numel() - int(mask.sum())
        return batch

    @property
    def share(self) -> float:
        return self.padded / self.positions if self.positions else 0.0


_SIDES = ("chosen_ids", "rejected_ids")
_REF_COLUMNS = ["ref_chosen_logps", "ref_rejected_logps"]


def _tokenized_trainer_class() -> type:
    from trl import DPOTrainer

    class TokenizedDPOTrainer(DPOTrainer):
        """TRL's `DPOTrainer` on rows that arrive tokenized and may carry the engine's reference log-probs: TRL's
        no-grad reference pass runs only on the rows without them, plus `checked_rows`, whose engine values
        are compared with the trainer's (`perf/ref_logp_mismatch`) and kept."""

        def __init__(self, checked_rows: Sequence[int], group_by_length: bool, **kwargs: Any) -> None:
            self.checked_rows = list(checked_rows)
            self.group_by_length = group_by_length
            self.reference_metrics: dict[str, float] = {}
            super().__init__(**kwargs)

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            return dataset  # tokenized by the updater, prompts that fill max_length already left out

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            if "length" not in self._signature_columns:  # kept for the length-grouped sampler
                self._signature_columns.append("length")

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if not self.group_by_length:
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedBatches(dataset["length"], batch, self.args.seed)

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            started = time.perf_counter()
            engine = {side: dataset[side] for side in _REF_COLUMNS}
            missing = [i for i, value in enumerate(engine["ref_chosen_logps"]) if value is None]
            checked = self.checked_rows
            values = {side: list(column) for side, column in engine.items()}
            if missing or checked:
                needed = sorted(set(missing) | set(checked))
                subset = dataset.remove_columns(_REF_COLUMNS).select(needed)
                computed = super()._precompute_ref_logps(subset, name, batch_size)
                trainer = {side: dict(zip(needed, computed[side])) for side in _REF_COLUMNS}
                for side in _REF_COLUMNS:
                    for i in missing:
                        values[side][i] = trainer[side][i]
                if checked:
                    gaps = [abs(engine[side][i] - trainer[side][i]) for i in checked for side in _REF_COLUMNS]
                    self.reference_metrics["perf/ref_logp_mismatch"] = sum(gaps) / len(gaps)
                dataset = dataset.remove_columns(_REF_COLUMNS)
                for side in _REF_COLUMNS:
                    dataset = dataset.add_column(side, values[side])
            self.reference_metrics["perf/ref_from_engine"] = 1 - len(missing) / max(len(dataset), 1)
            self.reference_metrics["perf/ref_logps_s"] = time.perf_counter() - started
            return dataset

    return TokenizedDPOTrainer
