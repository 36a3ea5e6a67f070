"""Everything onpolicy relies on in TRL beyond its public arguments, in one module, for the TRL versions that
`pyproject.toml` admits (and the tests run against):

- `dpo_config`: TRL's `DPOConfig` built from onpolicy's `train.*` through one field table
  (`onpolicy.config.library_fields`, which also checks the config against TRL's fields), with beta and the
  learning rate of the round (`for_round`, from their schedules).
- `make_trainer`: a `DPOTrainer` subclass for rows that arrive tokenized and may carry the engine's reference
  log-probs (TRL's reference pass runs only where they are missing, plus a few checked rows), with an optional
  length-grouped sampler and a collator that counts padding.
- `adjusted_trl`: scoped replacements of TRL internals while a round's trainer lives, each measured and tested:
  the fused LM head scores only completion tokens on a CPU too, the reference cache is keyed without hashing
  every weight, and a policy sharded before the trainer is made computes its own reference log-probs.
- `round_metrics` / `release`: TRL's per-step logs averaged under onpolicy's names, and the model handed back
  as an ordinary transformers model.
- `REFERENCE_ADAPTER`, `selective_log_softmax`: the name of the adapter TRL adds for a LoRA policy's reference,
  and TRL's memory-sparing token log-probs, for the modules that need them.

Every TRL or transformers attribute this module replaces or overrides is looked up first: where the installed
version lacks it, onpolicy stops with an `OnpolicyError` naming the versions it is written against
(`TRL_LINE`, `TRANSFORMERS_LINE`), instead of running with the adjustment silently gone.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from onpolicy.config.library_fields import DPO_FIELDS_FROM_TRAIN
from onpolicy.errors import OnpolicyError
from onpolicy.interfaces import PhaseProgress
from onpolicy.train import sharding

# The versions every replaced or overridden attribute below was checked against: pyproject.toml pins these lines
# (tests/test_trl_compat.py holds the two together).
TRL_LINE = "1.16"
TRANSFORMERS_LINE = "5.16-5.19"

# The adapter TRL's `DPOTrainer` adds beside a PEFT policy's trained one ("default") to compute the reference
# (`model.add_adapter("ref", ...)` in trl/trainer/dpo_trainer.py); `onpolicy.train.lora` prepares and drops it.
REFERENCE_ADAPTER = "ref"

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


def dpo_config(
    train: Any,
    output_dir: str,
    seed: int,
    gradient_checkpointing: bool,
    processes: int = 1,
    round_number: int = 1,
    sharded: bool = False,
) -> Any:
    """TRL's training arguments for round `round_number`, from `train` (a `TrainConfig`, `extra` passed through;
    beta and the learning rate as its schedules give them for the round), for one of `processes` data-parallel
    processes: `train.batch_size` is the batch of all of them together, so that a step trains on the same pairs
    however many processes share it. `sharded`: the job's accelerate state is set up for FSDP already
    (`onpolicy.train.sharding`), and the trainer must take it as it is (transformers would otherwise reset it)."""
    from trl import DPOConfig

    cuda = torch.cuda.is_available()
    # every weight of a causal LM takes part in its loss: DDP's search for unused ones would only cost time
    defaults = {"ddp_find_unused_parameters": False}
    settings = {field: getattr(train, key) for field, key in DPO_FIELDS_FROM_TRAIN.items()}
    settings["beta"] = for_round(train.beta, train.beta_by_round, round_number)
    settings["learning_rate"] = for_round(train.learning_rate, train.learning_rate_by_round, round_number)
    return DPOConfig(
        **settings,
        per_device_train_batch_size=train.batch_size // processes,
        ddp_backend=None if processes == 1 or cuda else "gloo",
        ddp_timeout=train.collective_timeout_s,
        output_dir=output_dir,
        gradient_checkpointing=gradient_checkpointing,
        seed=seed,
        precompute_ref_log_probs=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=not cuda,
        accelerator_config={"use_configured_state": True} if sharded else None,
        **{**defaults, **train.extra},
    )


def for_round(value: float, schedule: Mapping[int, float] | None, round_number: int) -> float:
    """A setting's value in round `round_number` (`train.beta_by_round`, `train.learning_rate_by_round`): the
    schedule's entry for the latest round at or before it, else `value`."""
    started = [n for n in schedule or {} if n <= round_number]
    return schedule[max(started)] if started else value


def check_dpo_config_values(train: Any) -> None:
    """Raise ValueError when trl.DPOConfig refuses the round's settings (a bad `train.extra` value): checked when
    the job starts, not at the first update."""
    if not train.extra:
        return
    with tempfile.TemporaryDirectory() as folder:
        try:
            dpo_config(train, folder, seed=0, gradient_checkpointing=False)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"train.extra: trl.DPOConfig refuses {dict(train.extra)}: {exc}") from None


def make_trainer(
    dataset: Any,
    checked_rows: Sequence[int],
    group_by_length: bool,
    should_stop: Callable[[], bool] | None,
    reference_adapter: Callable[[Any], None] | None = None,
    progress: PhaseProgress | None = None,
    reference_weights: Callable[[Any], contextlib.AbstractContextManager[Any]] | None = None,
    **kwargs: Any,
) -> Any:
    """A round's trainer on a `datasets.Dataset` of tokenized rows (`kwargs`: DPOTrainer's model, ref_model, args, processing_class).
    Training stops after the current step once `should_stop()` is true; each step advances `progress`.
    `reference_adapter` (a LoRA policy): called with the model once TRL has added its `REFERENCE_ADAPTER`, to make
    it the round's reference (None: TRL's copy of the trained adapter, the round's starting policy, is).
    `reference_weights` (a sharded policy): opened around TRL's reference pass, so that the policy computes it
    with the reference's weights (None: the policy's own, the round's starting policy)."""
    from transformers import PrinterCallback, TrainerCallback

    class StopWhenAsked(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if progress is not None:
                progress.total = state.max_steps

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if progress is not None:
                progress.advance()
            if should_stop is not None and should_stop():
                control.should_training_stop = True

    trainer = _tokenized_trainer_class()(
        checked_rows=checked_rows,
        group_by_length=group_by_length,
        reference_adapter=reference_adapter,
        reference_weights=reference_weights,
        train_dataset=dataset,
        callbacks=[StopWhenAsked()],
        **kwargs,
    )
    trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout; onpolicy prints one line per round
    trainer.data_collator = _PaddingCounter(trainer.data_collator)
    return trainer


def round_metrics(trainer: Any) -> dict[str, float]:
    """What a finished round's trainer reports: TRL's logs averaged over its steps, the step count, where the
    reference log-probs came from and what they cost, and the share of padding in its batches."""
    metrics = _average_logs(trainer.state.log_history)
    metrics["train/steps"] = float(trainer.state.global_step)
    metrics.update(trainer.reference_metrics)
    metrics["perf/train_padding"] = trainer.data_collator.share
    return metrics


def release(trainer: Any, models: Sequence[torch.nn.Module | None]) -> None:
    """Hand `models` back as ordinary transformers models: DPOTrainer patches a fused LM head onto a model's
    forward, and those patches would pile up over rounds. (A LoRA policy's `REFERENCE_ADAPTER` stays: the caller
    drops it, `onpolicy.train.lora.drop_reference`.)"""
    for model in models:
        if model is not None:
            model.__dict__.pop("forward", None)
            if hasattr(model, "peft_config"):  # a LoRA policy: its base model was patched
                model.get_base_model().__dict__.pop("forward", None)
    del trainer


@contextlib.contextmanager
def adjusted_trl(sharded: bool = False) -> Iterator[None]:
    """The TRL adjustments, while a round's trainer is made and trains (`sharded`: the policy is sharded)."""
    own_reference = sharded_policy_as_reference() if sharded else contextlib.nullcontext()
    with lm_head_on_completions_only(), unique_model_hash(), own_reference:
        yield


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


def sharded_policy_as_reference() -> contextlib.AbstractContextManager[None]:
    """While open, TRL's `DPOTrainer` under FSDP precomputes the reference log-probs with the policy itself, as it
    does without FSDP, instead of loading a reference model from the path in the policy's config.

    TRL loads that model because, in a TRL job, FSDP shards the policy only when training starts, and a whole
    policy on every process would cost the memory sharding saves. onpolicy shards the policy when it loads it
    (`onpolicy.train.sharding`), so the policy the trainer gets is sharded already and is the round's starting
    policy; the model TRL would load is the *initial* checkpoint (a silent "never refresh"), in full on every
    process, read from disk every round. A reference other than the round's starting policy is swapped into the
    policy around that pass (`make_trainer`'s `reference_weights`). TRL calls `create_model_from_path` there for
    nothing else: the policy is given as a model."""
    return _replaced("trl.trainer.dpo_trainer", "create_model_from_path", lambda _: lambda *args, **kwargs: None)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The log-probs of the tokens `index` under `logits` (`log_softmax` then `gather` on the last dimension),
    by TRL's `selective_log_softmax`, which spares the vocabulary-wide log-softmax tensor."""
    from trl.trainer.utils import selective_log_softmax as trl_selective_log_softmax

    return trl_selective_log_softmax(logits, index)


def version_mismatch(target: str) -> OnpolicyError:
    """The error for a TRL or transformers attribute onpolicy relies on (`target`, its dotted name) that the
    installed versions lack."""
    import transformers
    import trl

    return OnpolicyError(
        f"onpolicy relies on {target}, which the installed TRL {trl.__version__} (transformers "
        f"{transformers.__version__}) does not have: onpolicy is written against TRL {TRL_LINE}.x and transformers "
        f"{TRANSFORMERS_LINE}, the versions pyproject.toml pins; reinstall its dependencies (scripts/setup.sh, or "
        "pip install -e . in the environment)"
    )


@contextlib.contextmanager
def _replaced(module_name: str, attribute: str, replacement: Callable[[Any], Any]) -> Iterator[None]:
    """`module.attribute` set to `replacement(original)` while open; an `OnpolicyError` (`version_mismatch`) when
    the module lacks it, since the adjustment would otherwise be silently gone."""
    module = importlib.import_module(module_name)
    original = getattr(module, attribute, None)
    if not callable(original):
        raise version_mismatch(f"{module_name}.{attribute}")
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


_REF_COLUMNS = ["ref_chosen_logps", "ref_rejected_logps"]


def _tokenized_trainer_class() -> type:
    from trl import DPOTrainer

    class TokenizedDPOTrainer(DPOTrainer):
        """TRL's `DPOTrainer` on rows that arrive tokenized and may carry the engine's reference log-probs: TRL's
        no-grad reference pass runs only on the rows without them, plus `checked_rows`, whose engine values
        are compared with the trainer's (`perf/ref_logp_mismatch`) and kept."""

        def __init__(
            self,
            checked_rows: Sequence[int],
            group_by_length: bool,
            reference_adapter: Callable[[Any], None] | None,
            reference_weights: Callable[[Any], contextlib.AbstractContextManager[Any]] | None,
            **kwargs: Any,
        ) -> None:
            self.checked_rows = list(checked_rows)
            self.group_by_length = group_by_length
            self.reference_adapter = reference_adapter
            self.reference_weights = reference_weights
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
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            return LengthGroupedBatches(dataset["length"], batch, self.args.seed)

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            started = time.perf_counter()
            if self.reference_adapter is not None and REFERENCE_ADAPTER in self.model.peft_config:
                self.reference_adapter(self.model)  # TRL has just added its reference adapter: make it the reference
            engine = {side: dataset[side] for side in _REF_COLUMNS}
            missing = [i for i, value in enumerate(engine["ref_chosen_logps"]) if value is None]
            checked = self.checked_rows
            values = {side: list(column) for side, column in engine.items()}
            if missing or checked:
                needed = sorted(set(missing) | set(checked))
                subset = dataset.remove_columns(_REF_COLUMNS).select(needed)
                with self.reference_weights(self.model) if self.reference_weights else contextlib.nullcontext():
                    computed = super()._precompute_ref_logps(subset, name, batch_size)
                sharding.reshard(self.model)  # the optimizer, made next, must step the shards
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

    # Every method above but __init__ overrides one of DPOTrainer's (or transformers' Trainer's): an override
    # whose target is gone would never be called.
    for name, member in vars(TokenizedDPOTrainer).items():
        if callable(member) and not name.startswith("__") and not callable(getattr(DPOTrainer, name, None)):
            raise version_mismatch(f"trl.DPOTrainer.{name}")
    return TokenizedDPOTrainer
