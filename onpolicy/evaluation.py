"""Evaluation: greedy answers to held-out prompts, scored by pluggable functions, before round 1 and after
every round, through the same engine that generates (so it sees exactly the policy that was synced).

An eval metric is a reward (built-in or import path) applied to each greedy answer of the prompts matching its
`when`; `eval/<name>` is the mean over those prompts. Prompts too long for the engine are left out and counted,
and so are answers the metric fails on (it raises, returns NaN): `eval/<name>_failed`, the reason in eval.jsonl.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from onpolicy.config import EvalConfig
from onpolicy.errors import ConfigError
from onpolicy.progress import PhaseProgress
from onpolicy.prompts import load_prompts
from onpolicy.scoring import guarded_scores
from onpolicy.types import PromptRecord
from reward import Failed, GroupReward, RewardConfigError, build_reward, matches


class GreedyCompleter(Protocol):
    def complete_greedy(
        self, records: Sequence[PromptRecord], max_new_tokens: int, progress: PhaseProgress | None = None
    ) -> list[str | None]: ...


@dataclasses.dataclass(frozen=True)
class _Metric:
    name: str
    function: GroupReward
    when: dict[str, Any] | None


class Evaluator:
    def __init__(self, records: Sequence[PromptRecord], metrics: Sequence[_Metric], max_new_tokens: int) -> None:
        self.records = list(records)
        self.metrics = list(metrics)
        self.max_new_tokens = max_new_tokens

    def run(
        self, engine: GreedyCompleter, progress: PhaseProgress | None = None
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """The eval metrics and one row per prompt (its greedy answer and scores)."""
        answers = engine.complete_greedy(self.records, self.max_new_tokens, progress)
        rows = [
            {"prompt_id": r.id, "prompt": r.prompt, **r.metadata, "answer": a} for r, a in zip(self.records, answers)
        ]
        results: dict[str, float] = {}
        for metric in self.metrics:
            scores, failed = [], 0
            for record, answer, row in zip(self.records, answers, rows):
                if answer is None or not matches(record.reward_view(), metric.when):
                    continue
                (score,) = guarded_scores(metric.function, record.reward_view(), [answer])
                if isinstance(score, Failed):
                    failed += 1
                    row[f"{metric.name}_failure"] = score.reason
                else:
                    scores.append(score)
                    row[metric.name] = score
            results[f"eval/{metric.name}"] = sum(scores) / len(scores) if scores else float("nan")
            if failed:
                results[f"eval/{metric.name}_failed"] = float(failed)
        answered = [a for a in answers if a is not None]
        results["eval/skipped_long_prompts"] = float(len(answers) - len(answered))
        results["eval/mean_chars"] = sum(map(len, answered)) / len(answered) if answered else 0.0
        return results, rows


def build_evaluator(config: EvalConfig, seed: int = 0) -> Evaluator | None:
    """The configured evaluation, checked before any model loads; None without eval prompts."""
    if config.prompts is None:
        return None
    records = load_prompts(config.prompts.model_copy(update={"shuffle": False}), seed=seed)
    metrics = []
    for i, metric in enumerate(config.metrics):
        try:
            function = build_reward(metric.function, metric.args)
        except RewardConfigError as exc:
            raise ConfigError(f"eval.metrics[{i}] ({metric.name}): {exc}") from None
        if not any(matches(r.reward_view(), metric.when) for r in records):
            raise ConfigError(f"eval.metrics[{i}] ({metric.name}): no eval prompt matches when={metric.when}")
        metrics.append(_Metric(metric.name, function, metric.when))
    return Evaluator(records, metrics, config.max_new_tokens)
