"""The run's configuration: one typed tree, defaults in code, YAML holding only what differs.

Precedence is default < YAML < command-line overrides (`key.path=value`, the value read as YAML). Everything is
validated once, before any model is loaded; an unknown key, a wrong type or a missing file becomes one
`ConfigError` naming the key and where it came from, with the nearest valid key suggested for typos.

Relative paths inside a YAML file are resolved against that file's folder (so a config can ship its prompt file
beside it); relative paths given on the command line are resolved against the working directory. The resolved
config, saved in the run directory, holds absolute paths only.

This module is the tree and its entry point `load_config`; its sections are in `onpolicy.config.sections`, and
the reading, overriding, path resolution and error messages behind it in `onpolicy.config.loading`.
"""

from __future__ import annotations

import pathlib
import types
from collections.abc import Iterator, Sequence
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from onpolicy.config import loading, redaction
from onpolicy.config.sections import (
    CheckpointConfig,
    EvalConfig,
    GenerationConfig,
    ModelConfig,
    PairsConfig,
    PromptsConfig,
    RefConfig,
    RewardTerm,
    Section,
    TrainConfig,
    WandbConfig,
    is_template_text,
)
from onpolicy.errors import ConfigError


class Config(Section):
    rounds: int = Field(3, ge=1, description="Rounds of generate -> score -> pair -> update -> sync -> log.")
    seed: int = Field(0, ge=0, description="Seed for prompt order and training.")
    progress_every_s: float = Field(
        30.0,
        ge=0,
        description="When the output is not a terminal (a log, CI): a progress line every this many seconds during "
        "a long phase (generate, score, train, evaluate). On a terminal a progress bar shows instead. 0: no lines.",
    )
    stop_after_unscored_rounds: int = Field(
        3,
        ge=0,
        description="Stop the job with an error after this many rounds in a row in which no sample got a reward "
        "(every score failed: a reward server down, a judge answering garbage). 0: never.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    prompts: PromptsConfig
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    reward: list[RewardTerm] = Field(..., min_length=1, description="Reward terms, summed with their weights.")
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ref: RefConfig = Field(default_factory=RefConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @model_validator(mode="after")
    def _room_to_generate(self) -> Config:
        if self.generation.max_new_tokens >= self.generation.max_model_len:
            raise ValueError(
                f"generation.max_new_tokens ({self.generation.max_new_tokens}) must be below "
                f"generation.max_model_len ({self.generation.max_model_len})"
            )
        return self

    @model_validator(mode="after")
    def _adapter_sync_needs_an_adapter(self) -> Config:
        if self.generation.lora_sync == "adapter" and self.train.lora is None:
            raise ValueError("generation.lora_sync: adapter needs train.lora (the adapter to send)")
        return self

    @model_validator(mode="after")
    def _mixed_reference_needs_full_weights(self) -> Config:
        if self.ref.refresh == "mix" and self.train.lora is not None:
            raise ValueError(
                "ref.refresh: mix needs full fine-tuning: a mix of two LoRA policies is no adapter of the same rank "
                "(its change is the sum of two low-rank products); with train.lora use every_round, every or never"
            )
        return self

    @model_validator(mode="after")
    def _engine_logps_are_plain_sums(self) -> Config:
        if self.ref.logps == "engine" and self.train.extra.get("ld_alpha") is not None:
            raise ValueError(
                "ref.logps: engine gives the reference's log-probs as plain sums over each response, while "
                "train.extra.ld_alpha (LD-DPO) weighs the tokens past the shorter side on the policy's side: the "
                "ratio would compare two different things; use ref.logps: trainer (or auto), or drop ld_alpha"
            )
        return self

    @model_validator(mode="after")
    def _eval_needs_prompts(self) -> Config:
        if self.eval.metrics and self.eval.prompts is None:
            raise ValueError("eval.metrics needs eval.prompts (a file or a list of held-out prompts)")
        return self

    def to_yaml(self) -> str:
        """The config as YAML, secrets masked (`onpolicy.config.redaction`): what the run directory keeps and prints."""
        return yaml.safe_dump(redaction.redact(self.model_dump(mode="json")), sort_keys=False, allow_unicode=True)

    def secrets(self) -> list[str]:
        """The secret values this config holds (what `to_yaml` masks: a key-like argument, a URL's password), for
        masking messages that might quote one (`redaction.redact_text`, `redaction.masking`)."""
        return redaction.secrets_in(self.model_dump(mode="json"))


def load_config(path: str | pathlib.Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or none: defaults only), apply `key.path=value` overrides, validate, resolve paths."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = pathlib.Path(path)
        source = str(path)
        data = loading.read_yaml(path)
    override_keys = loading.apply_overrides(data, overrides)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        keys = [key for key, _, _ in walk_fields()]
        message = loading.explain(exc, source, override_keys, keys)
        raise ConfigError(redaction.redact_text(message, redaction.secrets_in(data))) from None  # it quotes values
    _check_files(config, source)
    return config


def walk_fields(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, FieldInfo, bool]]:
    """(key, field, is_section) for every field of `model`, depth first, nested sections included: a section's
    keys are spelled `section.key`, whether the section is required, defaulted or optional, and a list of
    sections' keys `section[].key`. `is_section`: the field is a plain section (no value of its own to set)."""
    for name, field in model.model_fields.items():
        key = prefix + name
        nested = _nested_section(field.annotation)
        yield key, field, nested is not None and nested[0] is field.annotation
        if nested is not None:
            section, joint = nested
            yield from walk_fields(section, key + joint)


def _nested_section(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The section model a field holds and how keys below it are joined ('.', or '[].' for a list of them)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "."
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):  # Optional[Section] and the like
        found = [n for n in map(_nested_section, args) if n is not None]
        return found[0] if len(found) == 1 else None
    if origin in (list, tuple, Sequence) and args:
        inner = _nested_section(args[0])
        return (inner[0], "[]" + inner[1]) if inner is not None else None
    return None


def describe_fields(model: type[BaseModel] = Config) -> list[tuple[str, str, str]]:
    """(key, default, description) for every config key, nested ones included, for `onpolicy config --docs`.
    Plain sections have no row of their own (only their keys); optional sections and lists of sections have one
    (their default and what they are for), then their keys."""
    rows = []
    for key, field, is_section in walk_fields(model):
        if is_section:
            continue
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((key, default, field.description or ""))
    return rows


def _check_files(config: Config, source: str) -> None:
    """The files the config names are there (the prompts, the model folder, the chat template)."""
    for key, prompts in (("prompts", config.prompts), ("eval.prompts", config.eval.prompts)):
        if prompts is not None and prompts.path is not None and not pathlib.Path(prompts.path).exists():
            raise ConfigError(f"{key}.path in {source}: prompt file not found: {prompts.path}")
    if config.model.path is not None and not (pathlib.Path(config.model.path) / "config.json").is_file():
        raise ConfigError(
            f"model.path in {source}: {config.model.path} is not a model folder (no config.json there). "
            "Give a local Hugging Face model folder, or leave model.path empty for the embedded SmolLM2."
        )
    template = config.model.chat_template
    if template is not None and not is_template_text(template) and not pathlib.Path(template).is_file():
        raise ConfigError(
            f"model.chat_template in {source}: template file not found: {template} (give a Jinja template file, "
            "or the template itself)"
        )
