"""Evaluation: answers to held-out prompts, scored by pluggable functions, before round 1 and after every round,
through the same engine that generates (so it sees exactly the policy that was synced). The answers are greedy,
with generation's other sampling settings, unless `eval.sampling` says otherwise; "greedy answer" below means
whatever these settings draw.

An eval metric is a reward (built-in or import path) applied to each greedy answer of the prompts matching its
`when`; `eval/<name>` is the mean over those prompts. Prompts too long for the engine are left out and counted,
and so are answers the metric fails on (it raises, returns NaN): `eval/<name>_failed`, the reason in eval.jsonl.

Each answer is also compared with the initial policy's greedy answer to the same prompt (`eval.reward`): the two
are scored as one group, so any reward serves, a pairwise judge included (it sees them in both orders). The
initial answers are round 0's (the loop's `run(..., initial=True)`); a resumed job reads them back from round 0's
eval.jsonl (`remember_initial`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from onpolicy.config import EvalConfig, GenerationConfig
from onpolicy.config.sections import Sampling, eval_sampling
from onpolicy.errors import ConfigError
from onpolicy.interfaces import PhaseProgress
from onpolicy.prompts import load_prompts
from onpolicy.types import PromptRecord, SampleGroup
from reward import Failed, GroupReward, RewardConfigError, build_reward, matches
from reward.guarded import guarded_scores

if TYPE_CHECKING:
    from onpolicy.interfaces import Generator, Reward


@dataclasses.dataclass(frozen=True)
class _Metric:
    name: str
    function: GroupReward
    when: dict[str, Any] | None


class Evaluator:
    """The `onpolicy.interfaces.Evaluation` of a job: `metrics` on each greedy answer to `records`, and `reward`
    (`eval.reward`; None: no comparison) comparing it with the initial policy's."""

    def __init__(
        self,
        records: Sequence[PromptRecord],
        metrics: Sequence[_Metric],
        max_new_tokens: int,
        reward: Reward | None = None,
        sampling: Sampling | None = None,
    ) -> None:
        """`sampling`: how the answers are drawn (`eval.sampling` over the generation's; None: the generator's
        greedy default)."""
        self.records = list(records)
        self.metrics = list(metrics)
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.reward = reward
        self.initial_answers: dict[str, str] | None = None  # prompt id -> the initial policy's greedy answer

    def remember_initial(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """The initial policy's answers, from round 0's eval rows (a resumed job's first evaluation compares with
        them)."""
        self.initial_answers = {str(row["prompt_id"]): row["answer"] for row in rows if row.get("answer") is not None}

    def run(
        self, engine: Generator, progress: PhaseProgress | None = None, initial: bool = False
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """The eval metrics and one row per prompt (its greedy answer and scores). `initial`: the answers are the
        initial policy's (round 0), remembered for later runs to compare with (and compared with themselves: the
        initial reward, a win rate of 0.5); a later run compares with the answers remembered, if any."""
        started = time.perf_counter()
        answers = engine.complete(self.records, self.max_new_tokens, progress, self.sampling)
        results: dict[str, float] = {"perf/eval_generate_s": time.perf_counter() - started}
        started = time.perf_counter()
        if initial:
            self.initial_answers = {r.id: a for r, a in zip(self.records, answers) if a is not None}
        rows = [
            {"prompt_id": r.id, "prompt": r.prompt, **r.metadata, "answer": a} for r, a in zip(self.records, answers)
        ]
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
            results[f"eval/{metric.name}"] = _mean(scores)
            if failed:
                results[f"eval/{metric.name}_failed"] = float(failed)
        if self.reward is not None and self.initial_answers is not None:
            results.update(self._against_initial(answers, rows))
        answered = [a for a in answers if a is not None]
        results["eval/skipped_long_prompts"] = float(len(answers) - len(answered))
        results["eval/mean_chars"] = _mean(list(map(len, answered))) if answered else 0.0
        results["perf/eval_score_s"] = time.perf_counter() - started
        return results, rows

    def _against_initial(self, answers: Sequence[str | None], rows: list[dict[str, Any]]) -> dict[str, float]:
        """eval/reward and eval/win_rate: each answer and the initial policy's, scored as a group of two. An answer
        the same as the initial one is a tie whatever the scores (it is still scored, for eval/reward)."""
        assert self.reward is not None and self.initial_answers is not None
        rewards, wins, failed = [], [], 0
        for record, answer, row in zip(self.records, answers, rows):
            initial = self.initial_answers.get(record.id)
            if answer is None or initial is None:
                continue
            scores = guarded_scores(self.reward, record.reward_view(), [answer, initial])
            problem = next((s for s in scores if isinstance(s, Failed)), None)
            if problem is not None:
                failed += 1
                row["reward_failure"] = problem.reason
                continue
            mine, theirs = scores
            win = 0.5 if answer == initial or mine == theirs else float(mine > theirs)
            row.update(reward=mine, initial_reward=theirs, win=win)
            rewards.append(mine)
            wins.append(win)
        results = {"eval/reward": _mean(rewards), "eval/win_rate": _mean(wins)}
        if failed:
            results["eval/reward_failed"] = float(failed)
        # The reward's own statistics would mix the two answers of each group: left out, and kept out of the next
        # round's reward/* (the job's reward may be this one). Their cost is perf/eval_score_s.
        self.reward.take_stats()
        return results

    def sample(
        self, generator: Generator, num_samples: int, progress: PhaseProgress | None = None
    ) -> list[SampleGroup]:
        """`num_samples` samples per eval prompt from the generator's current policy, as long as the answers."""
        return generator.sample(self.records, num_samples, self.max_new_tokens, progress)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def load_eval_prompts(config: EvalConfig, seed: int = 0) -> list[PromptRecord] | None:
    """The held-out prompts, in their file's order; None without `eval.prompts`."""
    if config.prompts is None:
        return None
    return load_prompts(config.prompts.model_copy(update={"shuffle": False}), seed=seed)


def build_evaluator(
    config: EvalConfig,
    records: Sequence[PromptRecord],
    reward: Reward | None = None,
    generation: GenerationConfig | None = None,
) -> Evaluator:
    """The configured evaluation of `records` (`load_eval_prompts`), checked before any model loads; `reward`:
    what compares each answer with the initial policy's (`eval.reward`, built by the caller: it may be the job's
    own), or None; `generation`: the settings `eval.sampling` falls back on (None: the generator's greedy
    default)."""
    metrics = []
    for i, metric in enumerate(config.metrics):
        try:
            function = build_reward(metric.function, metric.args)
        except RewardConfigError as exc:
            raise ConfigError(f"eval.metrics[{i}] ({metric.name}): {exc}") from None
        if not any(matches(r.reward_view(), metric.when) for r in records):
            raise ConfigError(f"eval.metrics[{i}] ({metric.name}): no eval prompt matches when={metric.when}")
        metrics.append(_Metric(metric.name, function, metric.when))
    sampling = eval_sampling(generation, config.sampling) if generation is not None else None
    return Evaluator(records, metrics, config.max_new_tokens, reward, sampling)
