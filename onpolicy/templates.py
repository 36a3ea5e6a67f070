"""The policy's prompt format: which chat template turns a prompt's messages into the text the policy continues.

The template is set once, on the tokenizer, where the policy's tokenizer is loaded (`policy_tokenizer`), so that
every place that builds the policy's prompt (engine samples, training rows, evaluation: all through
`onpolicy.tokens.prompt_ids`) renders it the same way, and every checkpoint and the final model (the tokenizer
is saved with them) carries the template it was trained with.

- `model.chat_template` replaces the tokenizer's own template: the one an SFT run (or the reward model) used.
  A policy trained in another format than the one it learnt in starts far from its own samples' style; a
  known way to a loss stuck at ln 2.
- `model.prompt_format: plain` is for base models without a template: the turns' texts joined by blank lines,
  ending with one where the answer begins, after the tokenizer's BOS where it adds one to a text. It is written
  as a template too (`plain_template`), so that the exported model renders prompts as it was trained.
- `auto` takes the chat template where there is one, else the plain layout; `chat` refuses a tokenizer without
  one, before any engine starts.
"""

from __future__ import annotations

import pathlib
from typing import Any

from onpolicy.config.sections import ModelConfig, is_template_text
from onpolicy.errors import ConfigError

# The turns' texts joined by blank lines; with the generation prompt, one more where the answer begins. (The
# newlines are Jinja strings: transformers renders templates with trim_blocks, which eats a newline after a tag.)
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}"
    "{% if not loop.last or add_generation_prompt %}{{ '\\n\\n' }}{% endif %}{% endfor %}"
)


def chat_template_text(value: str) -> str:
    """The template `model.chat_template` gives: itself, or the text of the file it names."""
    if is_template_text(value):
        return value
    path = pathlib.Path(value)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"model.chat_template: template file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"model.chat_template: cannot read the template file {path} as UTF-8 text ({exc})") from None


def plain_template(tokenizer: Any) -> str:
    """The plain layout as a template for `tokenizer`: after its BOS where its `add_special_tokens` puts one
    before a text (Llama's does, GPT-2's and SmolLM2's do not)."""
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]
    return ("{{ bos_token }}" if adds_bos else "") + PLAIN_TEMPLATE


def apply_prompt_format(tokenizer: Any, model: ModelConfig) -> Any:
    """`tokenizer` with the chat template the policy's prompts are rendered with, as `model` says (see the
    module docstring); raises `ConfigError` for `prompt_format: chat` where there is no template."""
    if model.chat_template is not None:
        tokenizer.chat_template = chat_template_text(model.chat_template)
    if model.prompt_format == "plain" or (model.prompt_format == "auto" and not tokenizer.chat_template):
        tokenizer.chat_template = plain_template(tokenizer)
    elif not tokenizer.chat_template:
        raise ConfigError(
            "model.prompt_format is chat, and the policy's tokenizer has no chat template: give one in "
            "model.chat_template (a template file, or the template itself), or set model.prompt_format: plain"
        )
    return tokenizer


def policy_tokenizer(path: str | pathlib.Path, model: ModelConfig) -> Any:
    """The policy's tokenizer, loaded from the model folder `path`, with its prompt format (`apply_prompt_format`)."""
    from transformers import AutoTokenizer

    return apply_prompt_format(AutoTokenizer.from_pretrained(path), model)
