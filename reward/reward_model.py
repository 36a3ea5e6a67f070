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

from reward.base import Meter, Needs, RewardConfigError, Score
from reward.registry import register


class RewardModel:
    def __init__(
        self, path: pathlib.Path, batch_size: int, max_length: int, device: str, dtype: str, label: int
    ) -> None:
        self.name = f"reward_model:{path.name}"
        self.path = path
        self.batch_size = batch_size
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
        import torch

        if self._model is None:
            with self.meter.timed("load_seconds"):
                self._load()
        scores: list[Score] = []
        with self.meter.timed(), torch.inference_mode():
            for start in range(0, len(responses), self.batch_size):
                batch = [self.token_ids(prompt, r) for r in responses[start : start + self.batch_size]]
                padded = self._tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(self._model.device)
                logits = self._model(**padded).logits.float()
                scores.extend(logits[:, self.label].tolist())
                self.meter.add(calls=1, tokens=sum(map(len, batch)))
        self.meter.add(scored=len(responses))
        return scores

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
    path: str, batch_size: int = 8, max_length: int = 2048, device: str = "auto", dtype: str = "auto", label: int = 0
) -> RewardModel:
    """A sequence-classification reward model from the local folder `path`; the score is logit `label`."""
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
    return RewardModel(folder, batch_size, max_length, device, dtype, label)
