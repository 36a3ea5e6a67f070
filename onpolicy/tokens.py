"""Token ids as the policy sees them: a chat prompt ready for the assistant's turn, and a response that ends it.

The engine and the trainer share the prompt's ids, so that the trainer learns in the very context the engine
sampled in; responses given as text (the two sides of a pair with an edit) are tokenized here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from onpolicy.config import GenerationConfig
from onpolicy.errors import OnpolicyError
from onpolicy.types import PromptRecord


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The policy's chat template (`onpolicy.templates`: its own, model.chat_template, or the plain layout)
    applied to `messages`, ending where the assistant's answer begins: the one way the policy's prompts are built."""
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    except TemplateError as exc:  # a Jinja error, or the template's own raise_exception (e.g. "no system role")
        shown = str(messages[-1]["content"])
        raise OnpolicyError(
            f"the policy's chat template cannot render the prompt {shown[:40]!r}{'...' if len(shown) > 40 else ''} "
            f"({type(exc).__name__}: {exc}); fix model.chat_template, or set model.prompt_format: plain"
        ) from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_prompts_render(records: Sequence[PromptRecord], tokenizer: Any, sample: int = 256) -> None:
    """Refuse prompts the policy's chat template cannot render (`prompt_ids`' error), judged on up to `sample`
    of them, before any model loads: a template that refuses a system turn would otherwise stop round 1."""
    for record in records[:sample]:
        prompt_ids(tokenizer, record.messages)


def check_prompts_leave_room_to_train(
    records: Sequence[PromptRecord], tokenizer: Any, max_length: int | None, sample: int = 256
) -> None:
    """Refuse a `train.max_length` that no prompt fits under (a prompt that fills it leaves no response to learn
    from, so every pair would be dropped), judged on up to `sample` prompts, before any engine starts."""
    if max_length is None:
        return
    checked = records[:sample]
    shortest = min(len(prompt_ids(tokenizer, record.messages)) for record in checked)
    if shortest >= max_length:
        raise OnpolicyError(
            f"train.max_length is {max_length} tokens, and the shortest of {len(checked)} prompts takes {shortest}: "
            "no pair would leave room for a response to learn from. Raise train.max_length (or shorten the prompts)"
        )


def response_ids(tokenizer: Any, text: str, end: Sequence[int] | None = None) -> list[int]:
    """A response given as text: its tokens, then `end` (the end of the response it comes from: its EOS, or
    nothing when that one was cut; default EOS, a finished answer)."""
    end = [tokenizer.eos_token_id] if end is None else list(end)
    return tokenizer(text, add_special_tokens=False)["input_ids"] + end


def fit_prompts(
    records: Sequence[PromptRecord], tokenizer: Any, config: GenerationConfig, max_new_tokens: int, refuse: bool
) -> tuple[list[tuple[PromptRecord, list[int]]], list[PromptRecord]]:
    """The prompts (with their token ids) that leave the engine room for `max_new_tokens`, and those that do not
    (or, with `refuse`, an error naming the first that does not)."""
    budget = config.max_model_len - max_new_tokens
    fitting, too_long = [], []
    for record in records:
        ids = prompt_ids(tokenizer, record.messages)
        if len(ids) <= budget:
            fitting.append((record, ids))
        elif refuse:
            raise OnpolicyError(
                f"prompt {record.id!r} is {len(ids)} tokens long; with max_new_tokens={max_new_tokens} the "
                f"engine (max_model_len={config.max_model_len}) takes at most {budget}. Shorten it, raise "
                "generation.max_model_len, or set generation.long_prompts=skip"
            )
        else:
            too_long.append(record)
    return fitting, too_long
