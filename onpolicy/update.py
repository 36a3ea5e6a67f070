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
- `mix: a`: the frozen copy moves toward the policy at the start of every round after the first,
  `ref = a * policy + (1 - a) * ref` (TR-DPO's soft update, per round rather than per step). A mix is no
  model saved anywhere else, so each round's checkpoint keeps it in `reference/` for a resumed run.

Everything that relies on TRL beyond its public arguments (the trainer subclass for tokenized rows with engine
log-probs, two scoped adjustments of its internals, the mapping of its logs) lives in `onpolicy.trl_compat`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import pathlib
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from onpolicy import lora, trl_compat
from onpolicy.config import RefConfig, TrainConfig
from onpolicy.devices import choose_gradient_checkpointing
from onpolicy.errors import OnpolicyError
from onpolicy.progress import PhaseProgress
from onpolicy.rundir import REFERENCE_FOLDER
from onpolicy.tokens import prompt_ids, response_ids
from onpolicy.types import Pair, SampleGroup, UpdateResult

if TYPE_CHECKING:
    from datasets import Dataset


@dataclasses.dataclass(frozen=True)
class TrainingRows:
    """A round's pairs as TRL's tokenized preference rows (`dataset`, None when no pair is left), with the rows
    whose engine log-probs are checked against the trainer's, and what was left out."""

    dataset: Dataset | None
    checked: list[int]
    dropped_long_prompts: int  # pairs whose prompt alone fills train.max_length
    tokens: int  # prompt + response tokens of one pass over the rows

    def on_disk(self, folder: pathlib.Path) -> TrainingRows:
        """These rows saved in `folder` and read back from there. Several training processes need their round's
        dataset in a folder they all see: TRL's main process writes the reference log-probs it computes next to
        the dataset's files, and the others read them from there. Such a dataset pickles as its path."""
        from datasets import load_from_disk

        if self.dataset is None:
            return self
        self.dataset.save_to_disk(str(folder))
        return dataclasses.replace(self, dataset=load_from_disk(str(folder)))


def reference_round(round_number: int, ref: RefConfig) -> int:
    """The round (1-based) whose starting policy is the reference of round `round_number` (with `mix`: the
    newest round whose starting policy went into it; the mixed reference is saved in its round checkpoints)."""
    if ref.refresh in ("every_round", "mix"):
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
        adapter_path: str | pathlib.Path | None = None,
        processes: int = 1,
        initial_path: str | None = None,
        kl: bool = False,
    ) -> None:
        """`model_path`: the policy (with `train.lora`: its base model, the initial policy); `adapter_path`: with
        `train.lora`, a saved adapter to continue training (a resumed run's checkpoint's adapter/); `processes`:
        how many data-parallel training processes run this update together (`onpolicy.distributed`);
        `initial_path`: the initial policy, when `model_path` is a resumed run's checkpoint; `kl`: keep what
        `kl_from_samples` compares with."""
        from transformers import AutoModelForCausalLM

        self.train_config = train
        self.ref_config = ref
        self.tokenizer = tokenizer
        # TRL wants an output folder; with save_strategy="no" it stays empty, so keep it out of the run directory.
        self._output_dir = tempfile.TemporaryDirectory(prefix="onpolicy-trainer-")
        self.seed = seed
        self.processes = processes
        self.policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        if train.lora is not None:
            self.policy = (
                lora.load_adapter(self.policy, str(adapter_path))
                if adapter_path is not None
                else lora.add_adapter(self.policy, train.lora, seed)
            )
        self.reference: torch.nn.Module | None = None
        self.kl = kl
        self._initial_path = initial_path or model_path
        self._initial: torch.nn.Module | None = None  # full fine-tuning: loaded at the first `kl_from_samples`
        self._round_start: torch.nn.Module | dict[str, torch.Tensor] | None = None  # with `kl` and every_round
        # with LoRA, the reference is an adapter state ("base": the adapter off; "round_start": TRL's copy)
        self._lora_reference: str | dict[str, torch.Tensor] = "round_start" if ref.is_round_start_policy else "base"
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
        """Whether a second model is kept: only when the reference is not the round's starting policy, and never
        with LoRA (the reference is then an adapter state)."""
        return not self.ref_config.is_round_start_policy and self.train_config.lora is None

    def restore_reference(self, folder: str | pathlib.Path, from_round: int) -> None:
        """On resume: the reference as it stood after round `from_round` (0: the initial model), from `folder`:
        the policy saved after that round, or with `mix` the reference saved in the next round's checkpoint."""
        from transformers import AutoModelForCausalLM

        self._reference_round = from_round + 1
        if self.train_config.lora is not None:  # the adapter of that checkpoint (round 0: the adapter off)
            if from_round > 0:
                self._lora_reference = lora.saved_adapter_state(pathlib.Path(folder) / lora.ADAPTER_FOLDER)
            return
        dtype = next(self.policy.parameters()).dtype
        self.reference = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval().requires_grad_(False)

    def start_round(self, round_number: int) -> bool:
        """Refresh the reference if round `round_number` needs a newer one; True when it was refreshed."""
        if self.ref_config.is_round_start_policy:
            if self.kl:  # TRL keeps no copy of the round's starting policy: `kl_from_samples` needs one
                if self.train_config.lora is not None:
                    self._round_start = lora.adapter_state(self.policy)
                elif isinstance(self._round_start, torch.nn.Module):
                    mix_into(self._round_start, self.policy, 1.0)
                else:
                    self._round_start = copy.deepcopy(self.policy).eval().requires_grad_(False)
            return True
        due = reference_round(round_number, self.ref_config)
        if due == self._reference_round:
            return False
        if self.train_config.lora is not None:  # `never` keeps the base model; `every: N` snapshots the adapter
            self._lora_reference = "base" if due == 1 else lora.adapter_state(self.policy)
        elif self.ref_config.refresh == "mix" and self.reference is not None:
            mix_into(self.reference, self.policy, self.ref_config.mix)
        else:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self._reference_round = due
        return True

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
        from datasets import Dataset

        # As TRL does: a prompt that fills max_length leaves no completion to learn from.
        rows = [row for row in map(self._row, pairs) if len(row["prompt_ids"]) < self._max_length]
        checked = [i for i, row in enumerate(rows) if row["ref_chosen_logps"] is not None]
        checked = sorted(
            random.Random(self.seed + round_number).sample(checked, min(len(checked), self.ref_config.check_pairs))
        )
        tokens = sum(min(len(r["prompt_ids"]) + len(r[side]), self._max_length) for r in rows for side in _SIDES)
        return TrainingRows(
            dataset=Dataset.from_list(rows) if rows else None,
            checked=checked,
            dropped_long_prompts=len(pairs) - len(rows),
            tokens=tokens,
        )

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
        with trl_compat.adjusted_trl():
            started = time.perf_counter()
            trainer = trl_compat.make_trainer(
                data.dataset,
                checked_rows=data.checked,
                group_by_length=cfg.group_by_length,
                should_stop=should_stop,
                progress=progress,
                lora_reference=self._lora_reference if cfg.lora is not None else None,
                model=self.policy,
                ref_model=self.reference,
                args=trl_compat.dpo_config(
                    cfg,
                    self._output_dir.name,
                    self.seed + round_number,
                    self.gradient_checkpointing,
                    self.processes,
                    round_number,
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
                check_finite(round_number, metrics, self.policy)
            finally:
                trl_compat.release(trainer, (self.policy, self.reference))
                self.policy.eval()
        return UpdateResult(skipped=False, metrics=metrics)

    @property
    def gradient_checkpointing(self) -> bool:
        """train.gradient_checkpointing, `auto` resolved: on with a GPU, off on a CPU."""
        return choose_gradient_checkpointing(self.train_config.gradient_checkpointing, torch.cuda.is_available())

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

    @torch.no_grad()
    def kl_from_samples(self, groups: Sequence[SampleGroup]) -> dict[str, float]:
        """eval/kl_initial and eval/kl_reference, with their _per_token: the mean over the policy's own samples
        (`groups`) of sum_t [log pi(y_t) - log q(y_t)], an unbiased estimate of KL(pi || q), where q is the
        initial policy or the reference the last round trained against. Every log-prob is the trainer's, so a
        q equal to the policy gives exactly 0."""
        sequences = [(group.prompt_token_ids, s.token_ids) for group in groups for s in group.samples if s.token_ids]
        if not sequences:
            return {}
        tokens = sum(len(completion) for _, completion in sequences)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        policy = sequence_log_probs(self.policy, sequences, pad)
        results = {}
        for name, other in (("initial", self._initial_policy()), ("reference", self._last_reference())):
            if other is None:
                continue
            with self._as_model(other) as model:
                gaps = [mine - theirs for mine, theirs in zip(policy, sequence_log_probs(model, sequences, pad))]
            results[f"eval/kl_{name}"] = sum(gaps) / len(gaps)
            results[f"eval/kl_{name}_per_token"] = sum(gaps) / tokens
        return results

    def _initial_policy(self) -> torch.nn.Module | str:
        """The initial policy: with LoRA the base model ("base": the adapter off, which LoRA starts as); else
        the reference while it is the initial model, or a frozen copy loaded once."""
        from transformers import AutoModelForCausalLM

        if self.train_config.lora is not None:
            return "base"
        if self.ref_config.refresh == "never" and self.reference is not None:
            return self.reference
        if self._initial is None:
            parameter = next(self.policy.parameters())
            self._initial = (
                AutoModelForCausalLM.from_pretrained(self._initial_path, dtype=parameter.dtype)
                .to(parameter.device)
                .eval()
                .requires_grad_(False)
            )
        return self._initial

    def _last_reference(self) -> torch.nn.Module | str | dict[str, torch.Tensor] | None:
        """The reference the last round trained against (None before the first round)."""
        if self.ref_config.is_round_start_policy:
            return self._round_start
        if self.train_config.lora is not None:
            return self._lora_reference if self._reference_round else None
        return self.reference

    @contextlib.contextmanager
    def _as_model(self, other: torch.nn.Module | str | dict[str, torch.Tensor]) -> Iterator[torch.nn.Module]:
        """A model computing `other`: a model itself (moved to the policy's device: a copy taken before the trainer
        moved the policy stays behind, and the log-probs must come from the same kernels), the base model under the
        LoRA policy ("base"), or the policy with its adapter's weights swapped for an adapter state."""
        if isinstance(other, torch.nn.Module):
            yield other.to(next(self.policy.parameters()).device)
        elif other == "base":
            with self.policy.disable_adapter():
                yield self.policy
        else:
            assert isinstance(other, dict)
            with lora.adapter_swapped(self.policy, other) as model:
                yield model

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their HF names, for the engine (with LoRA: merged)."""
        if self.train_config.lora is not None:
            return lora.merged_weights(self.policy)
        return iter(self.policy.state_dict().items())

    def save_adapter(self, folder: pathlib.Path) -> None:
        """The LoRA adapter alone, as PEFT saves it (what `generation.lora_sync: adapter` sends the engine)."""
        self.policy.save_pretrained(folder)

    def save(self, folder: pathlib.Path) -> None:
        """The policy as an ordinary HF folder (config, safetensors, tokenizer with its chat template); with LoRA
        the merged policy, and the adapter alone in adapter/ (what a resumed run continues)."""
        if self.train_config.lora is not None:
            lora.save_merged(self.policy, folder)
        else:
            self.policy.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def save_checkpoint(self, folder: pathlib.Path) -> None:
        """What a resumed run continues from: the policy (`save`) and, with `ref.refresh: mix`, the reference of
        the round just trained in `reference/` (no other folder holds a mix)."""
        self.save(folder)
        if self.ref_config.refresh == "mix" and self.reference is not None:
            self.reference.save_pretrained(folder / REFERENCE_FOLDER)


_SIDES = ("chosen_ids", "rejected_ids")


@torch.no_grad()
def mix_into(reference: torch.nn.Module, policy: torch.nn.Module, share: float) -> None:
    """reference <- share * policy + (1 - share) * reference, weight by weight, in place (parameters, not the
    state dict: a tied embedding is one parameter under two state-dict names, and must move once); share 1
    copies the policy exactly."""
    policy_weights = dict(policy.named_parameters())
    for name, weight in reference.named_parameters():
        if share == 1.0:
            weight.copy_(policy_weights[name])
        else:
            weight.lerp_(policy_weights[name].to(weight.device, weight.dtype), share)


@torch.no_grad()
def sequence_log_probs(
    model: torch.nn.Module,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    batch_size: int = 8,
) -> list[float]:
    """log p(completion | prompt) under `model` for each (prompt ids, completion ids), in batches padded on the
    right (token log-probs by TRL's `selective_log_softmax`, which spares a vocabulary-wide log-softmax tensor)."""
    from trl.trainer.utils import selective_log_softmax

    device = next(model.parameters()).device
    sums = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        rows = [list(prompt) + list(completion) for prompt, completion in chunk]
        width = max(map(len, rows))
        ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token_logps = selective_log_softmax(logits, ids[:, 1:])
        for row, (prompt, completion) in enumerate(chunk):
            sums.append(token_logps[row, len(prompt) - 1 : len(prompt) - 1 + len(completion)].sum().item())
    return sums


class Diverged(OnpolicyError):
    """An update left a non-finite training metric or non-finite weights."""


def check_finite(round_number: int, metrics: Mapping[str, float], policy: torch.nn.Module) -> None:
    """Stop the job when round `round_number`'s update diverged: a training metric or a trained weight that is
    NaN or infinite. Raised before the weights reach the engine or a checkpoint, so the last complete round
    stays the last good one."""
    bad_metrics = [f"{key} = {value}" for key, value in metrics.items() if not math.isfinite(value)]
    bad_weights = [
        f"{int((~torch.isfinite(weight)).sum())} of {weight.numel()} in {name}"
        for name, weight in policy.named_parameters()
        if weight.requires_grad and not bool(torch.isfinite(weight).all())
    ]
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
