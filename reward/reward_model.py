"""Reward models: a sequence-classification checkpoint of a transformers architecture (Skywork-Reward, or one
trained with TRL's `RewardTrainer`) scores prompt + response, as the built-in reward `reward_model`. Checkpoints
that bring their own code (ArmoRM) are refused: a model folder's code is never run.

The conversation is rendered with the reward model's *own* tokenizer and chat template, never the policy's:
a reward model read through another template scores text it was not trained on. Long conversations keep their
last `max_length` tokens (the end of the response is what the model reads its score from) and are counted as
truncated. The model is loaded on first use, apart from the policy, by its engine
(`reward.reward_model_engines`): transformers in this process, vLLM's pooling runner in this process, or a vLLM
pooling server; every engine reads the token ids made here.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reward.base import Group, Meter, Needs, RewardConfigError, Score, regrouped
from reward.registry import register
from reward.reward_model_engines import (
    SERVED_NAME,
    Engine,
    ServerEngine,
    TorchEngine,
    VLLMEngine,
    vllm_arguments,
)
from reward.servers import ModelServers, Server, api_key_from_environment
from reward.start_once import StartOnce


class RewardModel:
    """Scores a round's responses through `engine` (see `reward.reward_model_engines`); the conversations are
    rendered and cut here, so that every engine reads the same token ids."""

    def __init__(self, path: pathlib.Path, engine: Engine, max_length: int, label: int) -> None:
        self.name = f"reward_model:{path.name}"
        self.path = path
        self.engine = engine
        self.max_length = max_length
        self.label = label
        self.meter = Meter()
        self._tokenizer: Any = None
        self._started = StartOnce(f"the reward model {path}", self._start)  # a failed start is not retried

    def _start(self) -> Any:
        """The reward model's tokenizer, once its engine has started."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.engine.start(tokenizer)
        return tokenizer

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        return self.score_groups([(prompt, responses)])[0]

    def score_groups(self, groups: Sequence[Group]) -> list[list[Score]]:
        """Every response of `groups` at once: the engine batches them across groups."""
        if self._tokenizer is None:
            with self.meter.timed("load_seconds"):
                self._tokenizer = self._started.get()
        conversations = [self.token_ids(prompt, r) for prompt, responses in groups for r in responses]
        with self.meter.timed():
            rows = self.engine.logits(conversations, self.meter)
        if len(rows) != len(conversations) or any(len(row) <= self.label for row in rows):
            raise RuntimeError(f"the reward model gave no logit {self.label} for some of its {len(rows)} answers")
        self.meter.add(scored=len(conversations))
        return regrouped([row[self.label] for row in rows], groups)

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


ENGINES = ("transformers", "vllm", "server")


def _needs(args: Mapping[str, Any]) -> Needs:
    """A GPU for a CUDA `device`; a server the job starts for `engine: server` without a `url`."""
    return Needs(
        gpu=args["engine"] == "transformers" and str(args["device"]).startswith("cuda"),
        paths=("path",),
        servers=args["engine"] == "server" and args["url"] is None,
    )


@register("reward_model", needs=_needs)
def reward_model(
    path: str,
    batch_size: int = 8,
    max_length: int = 2048,
    device: str = "auto",
    dtype: str = "auto",
    label: int = 0,
    batch_tokens: int | None = None,
    engine: str = "transformers",
    url: str | None = None,
    api_key_env: str | None = None,
    port: int = 8300,
    kv_cache_gib: float = 1.0,
    enforce_eager: bool = True,
    concurrency: int = 4,
    timeout_s: float = 300.0,
    startup_timeout_s: float = 600.0,
    model_servers: ModelServers | None = None,
) -> RewardModel:
    """A sequence-classification reward model from the local folder `path`; the score is logit `label`.

    `engine: transformers` runs it in this process; a round's responses are scored `batch_size` at a time across
    its groups (and, with `batch_tokens`, at most that many tokens a batch, padding included: a long
    conversation then goes alone). `engine: vllm` runs it on vLLM's pooling runner in this process
    (`kv_cache_gib`, `enforce_eager`). `engine: server` sends it to a vLLM pooling server: the one at `url`
    (its key in the environment variable `api_key_env`), or, without a `url`, one the job starts on `port` and
    stops at its end; requests of `batch_size` conversations, `concurrency` in flight, each within `timeout_s`.
    Whatever the engine, the conversation is rendered here, with the reward model's own tokenizer and chat
    template, and sent as token ids: `path` is needed for those even with a `url`."""
    folder = pathlib.Path(path)
    architectures = _architectures(folder)
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise RewardConfigError(
            f"reward_model: {folder} holds {architectures or 'an unknown architecture'}, not a "
            "*ForSequenceClassification reward model"
        )
    if batch_size < 1 or max_length < 8:
        raise RewardConfigError("reward_model: batch_size must be at least 1 and max_length at least 8")
    if batch_tokens is not None and batch_tokens < 1:
        raise RewardConfigError(f"reward_model: batch_tokens must be at least 1, not {batch_tokens}")
    options = EngineOptions(
        batch_size=batch_size, batch_tokens=batch_tokens, max_length=max_length, device=device, dtype=dtype,
        api_key_env=api_key_env, port=port, kv_cache_gib=kv_cache_gib, enforce_eager=enforce_eager,
        concurrency=concurrency, timeout_s=timeout_s, startup_timeout_s=startup_timeout_s,
    )  # fmt: skip
    return RewardModel(folder, _engine(folder, engine, url, options, model_servers), max_length, label)


def _architectures(folder: pathlib.Path) -> list[str]:
    """The architectures a model folder's config.json names; a config.json that is not a Hugging Face model's
    (not JSON, not an object, too deep) is refused here, before transformers or vLLM trip over it."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise RewardConfigError(f"reward_model: no model folder at {folder} (config.json not found)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # ValueError: not JSON, or not UTF-8
        reason = "nested too deep" if isinstance(exc, RecursionError) else " ".join(str(exc).split())
        raise RewardConfigError(f"reward_model: {config_file} is not a model's config.json ({reason})") from None
    if not isinstance(config, dict):
        raise RewardConfigError(
            f"reward_model: {config_file} holds a JSON {type(config).__name__}, not a model's config (an object)"
        )
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise RewardConfigError(f"reward_model: {config_file}: 'architectures' is not a list of names")
    import transformers

    custom = [a for a in architectures if not hasattr(transformers, a)]
    if custom and config.get("auto_map"):
        raise RewardConfigError(
            f"reward_model: {folder} holds {custom[0]}, whose code comes with the checkpoint (auto_map; ArmoRM is "
            "one): onpolicy never runs a model folder's own code; use a checkpoint of a transformers architecture"
        )
    return architectures


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """`reward_model`'s arguments that its engines take."""

    batch_size: int
    batch_tokens: int | None
    max_length: int
    device: str
    dtype: str
    api_key_env: str | None
    port: int
    kv_cache_gib: float
    enforce_eager: bool
    concurrency: int
    timeout_s: float
    startup_timeout_s: float


def _engine(
    folder: pathlib.Path, engine: str, url: str | None, options: EngineOptions, model_servers: ModelServers | None
) -> Engine:
    """The engine `engine` names, its arguments checked."""
    if engine not in ENGINES:
        raise RewardConfigError(f"reward_model: engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine != "transformers":
        for name, default in (("device", "auto"), ("batch_tokens", None)):
            if getattr(options, name) != default:
                raise RewardConfigError(f"reward_model: {name} is for engine: transformers; vLLM places and batches")
    if engine != "server" and (url is not None or options.api_key_env is not None):
        raise RewardConfigError("reward_model: url and api_key_env are for engine: server")
    if engine == "transformers":
        return TorchEngine(str(folder), options.batch_size, options.batch_tokens, options.device, options.dtype)
    if options.kv_cache_gib <= 0:
        raise RewardConfigError(f"reward_model: kv_cache_gib must be positive, not {options.kv_cache_gib}")
    arguments = vllm_arguments(options.dtype, options.max_length, options.kv_cache_gib, options.enforce_eager)
    if engine == "vllm":
        return VLLMEngine(str(folder), arguments)
    if options.concurrency < 1 or options.timeout_s <= 0:
        raise RewardConfigError("reward_model: concurrency must be at least 1 and timeout_s positive")
    if url is not None:
        server = _given_server(url, options.api_key_env)
    else:
        server = _started_server(folder, arguments, options.port, options.startup_timeout_s, model_servers)
    return ServerEngine(server, options.batch_size, options.concurrency, options.timeout_s)


def _given_server(url: str, api_key_env: str | None) -> Callable[[], Server]:
    if not url.startswith(("http://", "https://")):
        raise RewardConfigError(f"reward_model: url must be a base URL (http://host:port), not {url!r}")
    api_key = api_key_from_environment(api_key_env, url, "reward_model")
    server = Server(url.rstrip("/").removesuffix("/v1"), api_key)
    return lambda: server


def _started_server(
    folder: pathlib.Path,
    arguments: Mapping[str, Any],
    port: int,
    startup_timeout_s: float,
    model_servers: ModelServers | None,
) -> Callable[[], Server]:
    if not 1 <= port <= 65535 or startup_timeout_s <= 0:
        raise RewardConfigError("reward_model: port must be in 1..65535 and startup_timeout_s positive")
    served = (model_servers or ModelServers()).serve(str(folder), arguments, SERVED_NAME, port, startup_timeout_s)
    return served.get
