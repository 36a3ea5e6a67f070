"""A round's pairs as TRL's tokenized preference rows.

Pairs reach TRL as token ids: the prompt as the engine saw it and each side as the policy sampled it, so training
scores exactly the tokens that were sampled (a pair with an edited side is tokenized from its text on both sides:
see `PairTokens`). Where the reference is the policy that sampled, a row carries the engine's log-prob sums as its
reference log-probs, and TRL's reference pass runs only on the rows without them (plus a few checked ones).
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from onpolicy.config import RefConfig, TrainConfig
from onpolicy.tokens import prompt_ids, response_ids
from onpolicy.types import Pair

if TYPE_CHECKING:
    from datasets import Dataset

_SIDES = ("chosen_ids", "rejected_ids")


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


def use_engine_logps(ref: RefConfig, train: TrainConfig, engine_dtype: torch.dtype, train_dtype: torch.dtype) -> bool:
    """Whether the engine's sampling log-probs stand in for the reference's (`ref.logps`; `auto`: when the engine
    computes in the dtype the trainer does, so that the two agree to rounding). Never with LD-DPO
    (`train.extra.ld_alpha`): TRL's reference pass then weighs each side's tokens past the shorter side, which a
    sum of sampling log-probs cannot (the config refuses `ref.logps: engine` with it)."""
    if train.extra.get("ld_alpha") is not None:
        return False
    if ref.logps != "auto":
        return ref.logps == "engine"
    return engine_dtype == train_dtype and not train.bf16


class RowBuilder:
    """Turns pairs into rows for a tokenizer and `max_length` (None: no limit); `engine_logps`: the engine's
    log-probs are the reference's; `check_pairs` rows a round (drawn with `seed` + the round) keep them and are
    also scored by the trainer, to log how far the two are apart."""

    def __init__(
        self, tokenizer: Any, max_length: int | None, engine_logps: bool, check_pairs: int, seed: int
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length if max_length is not None else sys.maxsize
        self.engine_logps = engine_logps
        self.check_pairs = check_pairs
        self.seed = seed

    def rows(self, pairs: Sequence[Pair], round_number: int) -> TrainingRows:
        """The round's pairs as the trainer's rows (what every training process of a job receives)."""
        from datasets import Dataset

        # As TRL does: a prompt that fills max_length leaves no completion to learn from.
        rows = [row for row in map(self.row, pairs) if len(row["prompt_ids"]) < self.max_length]
        checked = [i for i, row in enumerate(rows) if row["ref_chosen_logps"] is not None]
        checked = sorted(random.Random(self.seed + round_number).sample(checked, min(len(checked), self.check_pairs)))
        tokens = sum(min(len(r["prompt_ids"]) + len(r[side]), self.max_length) for r in rows for side in _SIDES)
        return TrainingRows(
            dataset=Dataset.from_list(rows) if rows else None,
            checked=checked,
            dropped_long_prompts=len(pairs) - len(rows),
            tokens=tokens,
        )

    def row(self, pair: Pair) -> dict[str, Any]:
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
            fits = len(prompt) + len(row[f"{side}_ids"]) <= self.max_length
            row[f"ref_{side}_logps"] = logp if self.engine_logps and ids is not None and fits else None
        if row["ref_chosen_logps"] is None or row["ref_rejected_logps"] is None:  # a pair's two sides, one source
            row["ref_chosen_logps"] = row["ref_rejected_logps"] = None
        # what the pair occupies of a padded batch (both sides padded to the longest), for group_by_length
        row["length"] = min(len(prompt) + max(len(row["chosen_ids"]), len(row["rejected_ids"])), self.max_length)
        return row
