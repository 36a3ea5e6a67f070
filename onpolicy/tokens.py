"""Token ids as the policy sees them: a chat prompt ready for the assistant's turn, and a response that ends it.

The engine and the trainer share these, so that the trainer learns on the very tokens the engine sampled
from, rather than on a re-tokenization of their text (which can differ, and would then score tokens the
policy never produced).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The chat template applied to `messages`, ending where the assistant's answer begins."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_ids(tokenizer: Any, text: str, end: Sequence[int] | None = None) -> list[int]:
    """A response that was not sampled (an edit): its tokens, then `end` (default: EOS, a finished answer)."""
    end = [tokenizer.eos_token_id] if end is None else list(end)
    return tokenizer(text, add_special_tokens=False)["input_ids"] + end
