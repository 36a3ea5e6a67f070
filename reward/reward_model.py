"""Reward models: a sequence-classification checkpoint (Skywork-Reward, ArmoRM-style, or one trained with TRL's
`RewardTrainer`) scores prompt + response, as the built-in reward `reward_model`.

The conversation is rendered with the reward model's *own* tokenizer and chat template, never the policy's:
a reward model read through another template scores text it was not trained on. Long conversations keep their
last `max_length` tokens (the end of the response is what the model reads its score from) and are counted as
truncated. The model is loaded on first use, apart from the policy, on `device`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from reward.base import Group, Meter, Needs, RewardConfigError, Score, regrouped
from reward.registry import register


class RewardModel:
    def __init__(
        self,
        path: pathlib.Path,
        batch_size: int,
        max_length: int,
        device: str,
        dtype: str,
        label: int,
        batch_tokens: int | None = None,
    ) -> None:
        self.name = f"reward_model:{path.name}"
        self.path = path
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self.label = label
        self.meter = Meter()
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self.dtype if self.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"
        model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=getattr(torch, dtype))
        model.config.pad_token_id = tokenizer.pad_token_id
        self._model = model.to(device).eval()
        self._tokenizer = tokenizer

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        return self.score_groups([(prompt, responses)])[0]

    def score_groups(self, groups: Sequence[Group]) -> list[list[Score]]:
        """Every response of `groups` in batches of `batch_size` (and at most `batch_tokens` tokens, padding
        included), longest first: sorted by length, a batch pads little, whichever groups its responses are
        from."""
        import torch

        if self._model is None:
            with self.meter.timed("load_seconds"):
                self._load()
        conversations = [self.token_ids(prompt, r) for prompt, responses in groups for r in responses]
        order = sorted(range(len(conversations)), key=lambda i: len(conversations[i]), reverse=True)
        flat: list[Score] = [0.0] * len(conversations)
        with self.meter.timed(), torch.inference_mode():
            for batch in self._batches(order, conversations):
                ids = [conversations[i] for i in batch]
                padded = self._tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self._model.device)
                logits = self._model(**padded).logits.float()
                for i, score in zip(batch, logits[:, self.label].tolist()):
                    flat[i] = score
                self.meter.add(calls=1, tokens=sum(map(len, ids)))
        self.meter.add(scored=len(conversations))
        return regrouped(flat, groups)

    def _batches(self, order: Sequence[int], conversations: Sequence[Sequence[int]]) -> list[list[int]]:
        """`order` (longest first) cut into batches of at most `batch_size`, and `batch_tokens` padded tokens."""
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < self.batch_size:
                longest = len(conversations[batches[-1][0]])  # the batch's first is its longest
                if self.batch_tokens is None or longest * (len(batches[-1]) + 1) <= self.batch_tokens:
                    batches[-1].append(i)
                    continue
            batches.append([i])
        return batches

    def token_ids(self, prompt: Mapping[str, Any], response: str) -> list[int]:
        """The conversation as the reward model reads it, in its own chat template, cut to `max_length`."""
        tokenizer = self._tokenizer
        if tokenizer.chat_template:
            messages = [*prompt.get("messages", [{"role": "user", "content": prompt.get("prompt", "")}])]
            text = tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": response}], tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:  # classic reward models (e.g. DeBERTa ones) read (question, answer) as a text pair
            ids = tokenizer(str(prompt.get("prompt", "")), response)["input_ids"]
        if len(ids) > self.max_length:
            self.meter.add(truncated=1)
            ids = ids[-self.max_length :]
        return ids

    def take_stats(self) -> dict[str, float]:
        return self.meter.take()


@register("reward_model", needs=lambda args: Needs(gpu=str(args["device"]).startswith("cuda"), paths=("path",)))
def reward_model(
    path: str,
    batch_size: int = 8,
    max_length: int = 2048,
    device: str = "auto",
    dtype: str = "auto",
    label: int = 0,
    batch_tokens: int | None = None,
) -> RewardModel:
    """A sequence-classification reward model from the local folder `path`; the score is logit `label`. A round's
    responses are scored `batch_size` at a time across its groups (and, with `batch_tokens`, at most that many
    tokens a batch, padding included: a long conversation then goes alone)."""
    folder = pathlib.Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise RewardConfigError(f"reward_model: no model folder at {folder} (config.json not found)")
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise RewardConfigError(
            f"reward_model: {folder} holds {architectures or 'an unknown architecture'}, not a "
            "*ForSequenceClassification reward model"
        )
    if batch_size < 1 or max_length < 8:
        raise RewardConfigError("reward_model: batch_size must be at least 1 and max_length at least 8")
    if batch_tokens is not None and batch_tokens < 1:
        raise RewardConfigError(f"reward_model: batch_tokens must be at least 1, not {batch_tokens}")
    return RewardModel(folder, batch_size, max_length, device, dtype, label, batch_tokens)
