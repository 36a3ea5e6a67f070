"""What both generators (the in-process engine and vLLM servers) share: a round's training groups, the
evaluation's answers and samples are one sampling call each, and vLLM's sampling parameters come from the
configured settings in one place (`vllm_sampling`), so that the engine and servers sample alike.

A generator implements `_sample_ids`: each prompt's samples, given the prompts' token ids and the parameters.
Progress counts samples as they finish; a caller's total counts every prompt's, and the samples of prompts too
long to draw any are taken off it, so that a phase ends at its total."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onpolicy.config import GenerationConfig
from onpolicy.config.sections import Sampling
from onpolicy.interfaces import PhaseProgress
from onpolicy.tokens import fit_prompts
from onpolicy.types import PromptRecord, Sample, SampleGroup


def vllm_sampling(sampling: Sampling, num_samples: int, max_new_tokens: int, logprobs: bool = True) -> dict[str, Any]:
    """vLLM's sampling parameters: `SamplingParams`' fields, which its completions API takes under the same names.
    `num_samples` samples of at most `max_new_tokens`, with each sampled token's own log-prob unless `logprobs` is
    False. Every setting is given, defaults included: a server fills the ones a request leaves out from the model's
    generation_config.json, which the in-process engine does not read."""
    params: dict[str, Any] = {
        "n": num_samples,
        "max_tokens": max_new_tokens,
        **{name: getattr(sampling, name) for name in Sampling.model_fields},
    }
    if logprobs:
        params["logprobs"] = 0  # the sampled token's own log-prob
    return params


class GroupSampling:
    """`generate`, `sample` and `complete` on top of a generator's `_sample_ids`."""

    config: GenerationConfig
    tokenizer: Any

    def _sample_ids(
        self, prompts: list[list[int]], params: dict[str, Any], progress: PhaseProgress | None
    ) -> list[list[Sample]]:
        """Each prompt's `params["n"]` samples (`vllm_sampling`'s parameters), in the prompts' order; `progress`
        advances by one as each sample finishes."""
        raise NotImplementedError

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
        fitting, too_long = fit_prompts(records, self.tokenizer, self.config, max_new_tokens, refuse=refuse_long)
        _leave_out(progress, len(too_long) * num_samples)
        if not fitting:
            return [], too_long
        params = vllm_sampling(self.config.sampling(), num_samples, max_new_tokens)
        samples = self._sample_ids([ids for _, ids in fitting], params, progress)
        groups = [
            SampleGroup(record=record, prompt_token_ids=tuple(ids), samples=tuple(prompt_samples))
            for (record, ids), prompt_samples in zip(fitting, samples)
        ]
        return groups, too_long

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
        """`num_samples` samples per prompt that fits (prompts too long are left out), with the generation's
        sampling settings: for evaluation."""
        return self._groups(records, num_samples, max_new_tokens, False, progress)[0]

    def complete(
        self,
        records: Sequence[PromptRecord],
        max_new_tokens: int,
        progress: PhaseProgress | None = None,
        sampling: Sampling | None = None,
    ) -> list[str | None]:
        """One answer to each prompt (None for a prompt too long for the engine), drawn with `sampling` (default:
        greedy, with the generation's other settings), for evaluation."""
        sampling = sampling or self.config.sampling().model_copy(update={"temperature": 0.0})
        fitting, too_long = fit_prompts(records, self.tokenizer, self.config, max_new_tokens, refuse=False)
        _leave_out(progress, len(too_long))
        params = vllm_sampling(sampling, 1, max_new_tokens, logprobs=False)
        samples = self._sample_ids([ids for _, ids in fitting], params, progress) if fitting else []
        answers = {id(record): prompt_samples[0].text for (record, _), prompt_samples in zip(fitting, samples)}
        return [answers.get(id(record)) for record in records]


def _leave_out(progress: PhaseProgress | None, samples: int) -> None:
    """Take `samples` that will not be drawn (their prompts are too long) off the total of `progress`, if it has one."""
    if progress is not None and progress.total is not None:
        progress.total -= samples
