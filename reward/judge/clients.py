"""Where a judge's answers come from: a vLLM engine in this process, or any OpenAI-compatible HTTP endpoint.

Both take a batch of chat requests and return, per request, its answers (or the error that stopped it) and its
token counts; neither parses anything. Transport failures are retried by the OpenAI client itself (exponential
backoff on timeouts, connection errors, 429 and 5xx); what is still failing after `max_retries` comes back as
that request's error, and the judge marks those samples failed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from reward.base import RewardConfigError
from reward.servers import api_key_from_environment
from reward.start_once import StartOnce


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """One judge prompt. `n` answers are sampled; `answer_prefix` starts the judge's answer (the model
    continues it); `regex` constrains the answer's form (vLLM structured outputs)."""

    messages: list[dict[str, str]]
    n: int = 1
    answer_prefix: str = ""
    regex: str | None = None


@dataclasses.dataclass
class ChatAnswer:
    texts: list[str]  # the answers, each with `answer_prefix` put back in front
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatBackend(Protocol):
    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatAnswer]: ...


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    max_tokens: int = 256


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """How an HTTP judge's requests are bounded: `timeout` each read, connect and write; `max_retries` the
    retries of a failed request (the OpenAI client's, with backoff); `deadline` one request in all, retries
    included (default: each try's `timeout`, and the client's longest backoff between tries); `concurrency`
    requests at a time."""

    timeout: float = 60.0
    max_retries: int = 3
    deadline: float | None = None
    concurrency: int = 8

    def __post_init__(self) -> None:
        _check_whole("concurrency", self.concurrency, 1, 10_000)
        _check_whole("max_retries", self.max_retries, 0, 20)
        _check_seconds("timeout", self.timeout)
        if self.deadline is not None:
            _check_seconds("deadline", self.deadline)

    @property
    def total_s(self) -> float:
        if self.deadline is not None:
            return self.deadline
        return self.timeout * (self.max_retries + 1) + LONGEST_BACKOFF_S * self.max_retries


def _messages(request: ChatRequest) -> list[dict[str, str]]:
    if not request.answer_prefix:
        return list(request.messages)
    return [*request.messages, {"role": "assistant", "content": request.answer_prefix}]


class PolicyEngine:
    """The job's running policy engine (a `vllm.LLM`), for judges with `backend: policy`: the Self-Rewarding
    setup, where the policy judges its own samples with no second model loaded. Rewards are built (and checked)
    before any model loads, so the judge is handed this holder then, and the job attaches the engine once it
    runs."""

    def __init__(self) -> None:
        self._engine: Any = None
        self.chat_template: str | None = None

    def attach(self, engine: Any, chat_template: str | None = None) -> None:
        """`chat_template`: the one the policy's prompts are rendered with (`model.chat_template` or the plain
        layout of a base model), which its judge prompts then follow too; None: the model folder's own."""
        self._engine = engine
        self.chat_template = chat_template

    def get(self) -> Any:
        if self._engine is None:
            raise RuntimeError("judge backend 'policy' needs the running policy engine, and none is attached")
        return self._engine


class VLLMChat:
    """Judge answers from a vLLM engine in this process: the policy's own (`model=None`), or a separate engine
    for the judge model at `model`, started on first use with its KV cache bounded."""

    def __init__(
        self,
        model: str | None,
        sampling: Sampling,
        kv_cache_gib: float,
        max_model_len: int | None,
        dtype: str,
        seed: int,
        policy_engine: PolicyEngine | None = None,
    ) -> None:
        if model is not None and not pathlib.Path(model).is_dir():
            raise RewardConfigError(f"judge: model folder not found: {model}")
        self.model = model
        self.policy_engine = policy_engine if policy_engine is not None else PolicyEngine()  # a job attaches one
        self.sampling = sampling
        self.engine_args = {
            "kv_cache_memory_bytes": int(kv_cache_gib * 1024**3),
            "max_model_len": max_model_len,
            "dtype": dtype,
            "seed": seed,
            "enforce_eager": True,
        }
        self._engine = StartOnce(f"the judge engine for {model}", self._start)  # a failed start is not retried

    @property
    def engine(self) -> Any:
        if self.model is None:
            return self.policy_engine.get()
        return self._engine.get()

    def _start(self) -> Any:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # its thread swaps sys.stdout while probing the CPU
        from vllm import LLM

        return LLM(model=self.model, **self.engine_args)

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatAnswer]:
        if not requests:
            return []
        self.engine  # noqa: B018  (started here, so that a judge that cannot start is not a per-request failure)
        try:
            return self._complete(requests)
        except _request_errors():
            # One bad request (e.g. too long for the judge) fails the whole batch: answer one at a time.
            return [self._one(request) for request in requests]

    def _one(self, request: ChatRequest) -> ChatAnswer:
        try:
            return self._complete([request])[0]
        except _request_errors() as exc:
            return ChatAnswer([], error=f"{type(exc).__name__}: {exc}")

    def _complete(self, requests: Sequence[ChatRequest]) -> list[ChatAnswer]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = [
            SamplingParams(
                n=r.n,
                temperature=self.sampling.temperature,
                max_tokens=self.sampling.max_tokens,
                structured_outputs=StructuredOutputsParams(regex=r.regex) if r.regex else None,
            )
            for r in requests
        ]
        prefixed = any(r.answer_prefix for r in requests)
        outputs = self.engine.chat(
            [_messages(r) for r in requests],
            params,
            use_tqdm=False,
            chat_template=self.policy_engine.chat_template if self.model is None else None,
            add_generation_prompt=not prefixed,
            continue_final_message=prefixed,
        )
        return [
            ChatAnswer(
                texts=[request.answer_prefix + c.text for c in out.outputs],
                prompt_tokens=len(out.prompt_token_ids or ()),
                completion_tokens=sum(len(c.token_ids) for c in out.outputs),
            )
            for request, out in zip(requests, outputs)
        ]


def _request_errors() -> tuple[type[Exception], ...]:
    """What vLLM raises for a request it refuses (too long, bad parameters), as opposed to an engine failure."""
    from vllm.exceptions import VLLMClientError

    return (ValueError, VLLMClientError)


class OpenAIChat:
    """Judge answers from an OpenAI-compatible endpoint (`vllm serve`, a hosted API), `concurrency` requests at a
    time. The API key is read from the environment variable `api_key_env` and kept only in the client: it is
    never part of the config, the run directory or the logs."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None,
        sampling: Sampling,
        requests: RequestLimits,
    ) -> None:
        from openai import DefaultHttpxClient, OpenAI

        from reward.judge.bounded_http import bounded_transport  # httpx2: imported with the client that needs it

        self._api_key = api_key_from_environment(api_key_env, base_url, "judge")  # a real key: kept out of messages
        api_key = self._api_key or "EMPTY"  # a local `vllm serve` without --api-key accepts any key
        self.model = model
        self.sampling = sampling
        self.requests = requests
        transport = bounded_transport(requests.concurrency)
        self.client = OpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=requests.max_retries,
            http_client=DefaultHttpxClient(transport=transport, timeout=requests.timeout),
        )

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatAnswer]:
        with ThreadPoolExecutor(max_workers=self.requests.concurrency) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: ChatRequest) -> ChatAnswer:
        import openai

        from reward.judge.bounded_http import limits

        extra: dict[str, Any] = {}
        if request.regex:
            extra["structured_outputs"] = {"regex": request.regex}
        if request.answer_prefix:
            extra.update(continue_final_message=True, add_generation_prompt=False)
        with limits(self.requests.total_s, MAX_ANSWER_BYTES) as bound:
            try:
                body = self.client.chat.completions.with_raw_response.create(
                    model=self.model,
                    messages=_messages(request),
                    n=request.n,
                    temperature=self.sampling.temperature,
                    max_tokens=self.sampling.max_tokens,
                    extra_body=extra or None,
                ).content  # parsed here: the client's own parsing checks no field's type
            except openai.APIError as exc:
                return self._failed(f"{type(exc).__name__}: {bound.exceeded or _first_line(exc)}")
        try:
            return _chat_answer(body, request.answer_prefix)
        except ValueError as exc:  # a 200 that is no chat completion
            return self._failed(str(exc))


    def _failed(self, error: str) -> ChatAnswer:
        # an endpoint may echo the request, its Authorization header included: the key never leaves here
        return ChatAnswer([], error=error.replace(self._api_key, "***") if self._api_key else error)


def _chat_answer(body: bytes, prefix: str) -> ChatAnswer:
    """The answers (each after `prefix`) and token counts of the chat completion in the JSON `body`; a body that
    is none (not JSON, or a field of the wrong type) raises ValueError, saying which field and quoting it."""
    quoted = f": {_first_line(body.decode(errors='replace'))!r}"
    try:
        completion = json.loads(body)
    except ValueError:
        raise ValueError(f"{NO_COMPLETION}{quoted}") from None
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list):
        raise ValueError(f"{NO_COMPLETION} (choices is {_json_kind(choices)}, not a list){quoted}")
    texts = []
    for n, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            kind = _json_kind(content)
            raise ValueError(f"{NO_COMPLETION} (choices[{n}].message.content is {kind}, not text){quoted}")
        texts.append(prefix + content)
    usage = completion.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return ChatAnswer(texts, None, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))


def _json_kind(value: object) -> str:
    return "missing or null" if value is None else type(value).__name__


def _count(value: object) -> int:
    """A token count as an endpoint reports it; 0 where it reports none (or not a whole number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


NO_COMPLETION = "the endpoint answered with no chat completion"
LONGEST_BACKOFF_S = 8.0  # the OpenAI client's longest wait between two tries of a request
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # of one judge answer, headers and JSON body: a verdict is a few kilobytes


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise RewardConfigError(f"judge: {name} must be a positive number of seconds, not {value!r}")


def _check_whole(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RewardConfigError(f"judge: {name} must be a whole number from {low} to {high}, not {value!r}")


def _first_line(message: object) -> str:
    return (str(message).strip().splitlines() or [""])[0][:300]
