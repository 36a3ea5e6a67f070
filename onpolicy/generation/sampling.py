"""What both generators (the in-process engine and vLLM servers) share: a round's training groups and the
evaluation's samples are one sampling call, with the configured or given counts and lengths, and vLLM's sampling
parameters come from the generation settings in one place (`vllm_sampling`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onpolicy.config import GenerationConfig
from onpolicy.interfaces import PhaseProgress
from onpolicy.types import PromptRecord, SampleGroup


def vllm_sampling(
    config: GenerationConfig, num_samples: int, max_new_tokens: int, greedy: bool = False
) -> dict[str, Any]:
    """vLLM's sampling parameters (`SamplingParams`' fields, which its completions API takes under the same names):
    `num_samples` samples of at most `max_new_tokens` at the configured temperature and top-p, each sampled token
    with its own log-prob; `greedy`: one greedy answer, no log-probs (evaluation)."""
    if greedy:
        return {"n": 1, "temperature": 0.0, "max_tokens": max_new_tokens}
    return {
        "n": num_samples,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_tokens": max_new_tokens,
        "logprobs": 0,  # the sampled token's own log-prob
    }


class GroupSampling:
    """`generate` and `sample` on top of a generator's `_groups`."""

    config: GenerationConfig

    def _groups(
        self,
        records: Sequence[PromptRecord],
        num_samples: int,
        max_new_tokens: int,
        refuse_long: bool,
        progress: PhaseProgress | None,
    ) -> tuple[list[SampleGroup], list[PromptRecord]]:
        """`num_samples` samples of at most `max_new_tokens` per prompt that fits, and the prompts that do not fit
        (refused instead with `refuse_long`)."""
        raise NotImplementedError

    def generate(
        self, records: Sequence[PromptRecord], progress: PhaseProgress | None = None
    ) -> tuple[list[SampleGroup], list[PromptRecord]]:
        """One group of samples per prompt that fits; the prompts that did not fit are returned apart (or refused,
        with `long_prompts: error`)."""
        return self._groups(
            records, self.config.num_samples, self.config.max_new_tokens, self.config.long_prompts == "error", progress
        )

    def sample(
        self,
        records: Sequence[PromptRecord],
        num_samples: int,
        max_new_tokens: int,
        progress: PhaseProgress | None = None,
    ) -> list[SampleGroup]:
        """`num_samples` samples per prompt that fits (prompts too long are left out), at the configured
        temperature and top-p: for evaluation."""
        return self._groups(records, num_samples, max_new_tokens, False, progress)[0]
