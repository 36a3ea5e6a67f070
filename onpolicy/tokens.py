"""Token ids as the policy sees them: a chat prompt ready for the assistant's turn, and a response that ends it.

The engine and the trainer share the prompt's ids, so that the trainer learns in the very context the engine
sampled in; responses given as text (the two sides of a pair with an edit) are tokenized here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The chat template applied to `messages`, ending where the assistant's answer begins."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_ids(tokenizer: Any, text: str, end: Sequence[int] | None = None) -> list[int]:
    """A response given as text: its tokens, then `end` (the end of the response it comes from: its EOS, or
    nothing when that one was cut; default EOS, a finished answer)."""
    end = [tokenizer.eos_token_id] if end is None else list(end)
    return tokenizer(text, add_special_tokens=False)["input_ids"] + end
