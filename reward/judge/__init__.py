"""LLM judges as rewards (the built-in reward `judge`): a language model reads each response, alone with a rubric
(`mode: pointwise`) or beside another response (`mode: pairwise`), and its verdict becomes the score."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from reward.base import GroupReward, Needs, RewardConfigError
from reward.judge.clients import ChatBackend, OpenAIChat, PolicyEngine, RequestLimits, Sampling, VLLMChat
from reward.judge.judges import PairwiseJudge, PointwiseJudge
from reward.judge.templates import build_pairwise, build_rubric
from reward.registry import register

__all__ = ["PairwiseJudge", "PointwiseJudge", "PolicyEngine", "judge"]


def _needs(args: Mapping[str, Any]) -> Needs:
    """Backend `policy` judges with the job's own engine; `vllm` loads the model folder `model`."""
    if args["backend"] == "policy":
        return Needs(
            policy_engine=True, engine_alternative="use backend: openai, base_url: <a server's URL>/v1, model: policy"
        )
    return Needs(paths=("model",)) if args["backend"] == "vllm" else Needs()


@register("judge", needs=_needs)
def judge(
    mode: Literal["pointwise", "pairwise"] = "pointwise",
    backend: Literal["policy", "vllm", "openai"] = "policy",
    model: str | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    rubric: str = "additive5",
    template: str | None = None,
    score_pattern: str | None = None,
    score_range: Sequence[float] | None = None,
    votes: int = 1,
    temperature: float = 0.7,
    max_tokens: int = 256,
    parse_retries: int = 2,
    constrain: bool = False,
    answer_prefix: str = "",
    max_comparisons: int | None = None,
    aggregate: Literal["wins", "bradley_terry"] = "wins",
    timeout: float = 60.0,
    max_retries: int = 3,
    deadline: float | None = None,
    concurrency: int = 8,
    kv_cache_gib: float = 0.5,
    max_model_len: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
    policy_engine: PolicyEngine | None = None,
) -> GroupReward:
    """An LLM judge.

    backend: `policy` (the running policy engine judges its own samples: Self-Rewarding), `vllm` (a separate
    in-process engine for the judge model folder `model`), or `openai` (an OpenAI-compatible endpoint at
    `base_url` serving `model`, e.g. `vllm serve` or a hosted API; the key is read from the environment variable
    `api_key_env`). Pointwise: `rubric` (additive5, scale10) or a custom `template` with `score_pattern` and
    `score_range`; `votes` answers per response, averaged. Pairwise: `template` (optional) with {prompt},
    {response_a}, {response_b}; `max_comparisons` pairs per group; `aggregate` wins or bradley_terry.
    `constrain` restricts answers to the verdict format (vLLM structured outputs; no written justification);
    `answer_prefix` starts the judge's answer (vLLM engines and `vllm serve` only). Backend `openai`: `timeout`
    bounds each read, connect and write, `max_retries` the retries of a failed request, and `deadline` (default
    each try's `timeout` plus 8 s of backoff between tries) one request in all, retries included; an answer over
    8 MiB, compressed, or not a chat completion (a field of the wrong type) fails its samples as `judge_error`.
    `policy_engine` is not a config argument: the job hands it over (see `PolicyEngine`).
    """
    if mode not in ("pointwise", "pairwise"):
        raise RewardConfigError(f"judge: mode must be pointwise or pairwise, not {mode!r}")
    if aggregate not in ("wins", "bradley_terry"):
        raise RewardConfigError(f"judge: aggregate must be wins or bradley_terry, not {aggregate!r}")
    if votes < 1 or parse_retries < 0:
        raise RewardConfigError("judge: votes must be at least 1 and parse_retries at least 0")
    if votes > 1 and temperature == 0:
        raise RewardConfigError("judge: several votes at temperature 0 are the same answer; raise temperature")
    if max_comparisons is not None and max_comparisons < 1:
        raise RewardConfigError(f"judge: max_comparisons must be at least 1, not {max_comparisons}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RewardConfigError(f"judge: max_tokens must be a whole number of at least 1, not {max_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise RewardConfigError(f"judge: temperature must be a number of at least 0, not {temperature!r}")
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens)
    requests = RequestLimits(timeout, max_retries, deadline, concurrency)
    chat = _backend(backend, model, base_url, api_key_env, sampling, requests, kv_cache_gib, max_model_len, dtype,
                    seed, policy_engine)  # fmt: skip
    if mode == "pointwise":
        rubric_ = build_rubric(rubric, template, score_pattern, score_range)
        return PointwiseJudge(chat, rubric_, votes, parse_retries, answer_prefix, constrain)
    pairwise = build_pairwise(template)
    return PairwiseJudge(chat, pairwise, max_comparisons, aggregate, parse_retries, answer_prefix, constrain, seed)


def _backend(
    backend: str,
    model: str | None,
    base_url: str | None,
    api_key_env: str | None,
    sampling: Sampling,
    requests: RequestLimits,
    kv_cache_gib: float,
    max_model_len: int | None,
    dtype: str,
    seed: int,
    policy_engine: PolicyEngine | None,
) -> ChatBackend:
    if backend == "policy":
        if model is not None or base_url is not None:
            raise RewardConfigError("judge: backend 'policy' uses the policy itself; drop model/base_url")
        return VLLMChat(None, sampling, kv_cache_gib, max_model_len, dtype, seed, policy_engine)
    if backend == "vllm":
        if model is None:
            raise RewardConfigError("judge: backend 'vllm' needs model: the judge model's folder")
        return VLLMChat(model, sampling, kv_cache_gib, max_model_len, dtype, seed)
    if backend == "openai":
        if base_url is None or model is None:
            raise RewardConfigError("judge: backend 'openai' needs base_url and model (the served model's name)")
        return OpenAIChat(base_url, model, api_key_env, sampling, requests)
    raise RewardConfigError(f"judge: backend must be policy, vllm or openai, not {backend!r}")
