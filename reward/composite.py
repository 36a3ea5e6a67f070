"""Combining rewards: a weighted sum of terms (each optionally normalised within its group), and terms that
apply only to some prompts.

The sum also watches its terms: the mean score of each, and how often two terms agree on which of two
responses is better (`agreement/<a>~<b>`, over the response pairs both order strictly), on the prompts each
term applies to. Two scorers that
disagree half the time are measuring different things; that is worth seeing before trusting their sum.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from reward.base import (
    Failed,
    GroupReward,
    RewardConfigError,
    RoundGroups,
    Score,
    close_reward,
    finish_round,
    prepare_round,
    take_stats,
)
from reward.registry import check_score

Normalize = Literal["none", "zscore", "rank"]


@dataclasses.dataclass(frozen=True)
class Term:
    """One reward in a sum. `normalize` rescales its scores within each group before weighting: `zscore`
    (mean 0, standard deviation 1) or `rank` (0 for the worst to 1 for the best), so that terms on different
    scales (a reward model's logits, a judge's 1-10, a rule's 0/1) weigh what their weights say."""

    reward: GroupReward
    weight: float = 1.0
    label: str = ""
    normalize: Normalize = "none"

    def __post_init__(self) -> None:
        if self.normalize not in ("none", "zscore", "rank"):
            raise RewardConfigError(f"normalize must be none, zscore or rank, not {self.normalize!r}")
        if not self.label:
            object.__setattr__(self, "label", self.reward.name)


class WeightedSum:
    """Several rewards summed with weights. A response any term failed on fails with that term's reason."""

    def __init__(self, terms: Sequence[Term | tuple[GroupReward, float]]) -> None:
        if not terms:
            raise RewardConfigError("a weighted sum needs at least one reward term")
        self.terms = [t if isinstance(t, Term) else Term(*t) for t in terms]
        labels = [t.label for t in self.terms]
        if len(set(labels)) != len(labels):
            raise RewardConfigError(f"reward terms need distinct labels, got {labels}")
        self.name = " + ".join(f"{t.weight:g}*{t.label}" for t in self.terms)
        self._sums: Counter[str] = Counter()

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        totals: list[Score] = [0.0] * len(responses)
        per_term: dict[str, list[float | None]] = {}
        for term in self.terms:
            scores = [check_score(s) for s in term.reward.score_group(prompt, responses)]
            if len(scores) != len(responses):
                raise ValueError(f"reward {term.label!r} returned {len(scores)} scores for {len(responses)} responses")
            raw = [None if isinstance(s, Failed) else s for s in scores]
            if not isinstance(term.reward, Conditional) or matches(prompt, term.reward.when):
                per_term[term.label] = raw  # a term that does not apply to this prompt is not watched on it
            for i, value in enumerate(normalized(raw, term.normalize)):
                if isinstance(totals[i], Failed):
                    continue
                if value is None:
                    failure = scores[i]
                    totals[i] = Failed(f"{term.label}: {failure.reason}", failure.kind)
                else:
                    totals[i] += term.weight * value
        self._watch(per_term)
        return totals

    def _watch(self, per_term: Mapping[str, Sequence[float | None]]) -> None:
        for label, raw in per_term.items():
            valid = [x for x in raw if x is not None]
            self._sums.update({f"{label}/sum": sum(valid), f"{label}/count": len(valid)})
        for (a, xs), (b, ys) in itertools.combinations(per_term.items(), 2):
            agree, ordered = _order_agreement(xs, ys)
            self._sums.update({f"agreement/{a}~{b}/agree": agree, f"agreement/{a}~{b}/ordered": ordered})

    def prepare(self, round_groups: RoundGroups) -> None:
        for term in self.terms:
            prepare_round(term.reward, round_groups)

    def finish(self) -> None:
        for term in self.terms:
            finish_round(term.reward)

    def close(self) -> None:
        for term in self.terms:
            close_reward(term.reward)

    def take_stats(self) -> dict[str, float]:
        """Per term: its mean score and its own counters; per two terms: their agreement rate."""
        sums, self._sums = self._sums, Counter()
        stats: dict[str, float] = {}
        for term in self.terms:
            if sums[f"{term.label}/count"]:
                stats[f"{term.label}/mean"] = sums[f"{term.label}/sum"] / sums[f"{term.label}/count"]
            stats.update({f"{term.label}/{k}": v for k, v in take_stats(term.reward).items()})
        for a, b in itertools.combinations([t.label for t in self.terms], 2):
            if sums[f"agreement/{a}~{b}/ordered"]:
                stats[f"agreement/{a}~{b}"] = sums[f"agreement/{a}~{b}/agree"] / sums[f"agreement/{a}~{b}/ordered"]
        return stats


def normalized(scores: Sequence[float | None], how: Normalize) -> list[float | None]:
    """`scores` rescaled within their group (failed entries stay None)."""
    valid = [x for x in scores if x is not None]
    if how == "none" or not valid:
        return list(scores)
    if how == "zscore":
        mean = sum(valid) / len(valid)
        std = math.sqrt(sum((x - mean) ** 2 for x in valid) / len(valid))
        return [None if x is None else (x - mean) / std if std > 0 else 0.0 for x in scores]
    if len(valid) == 1:
        return [None if x is None else 0.5 for x in scores]
    ordered = sorted(valid)
    # The average rank of tied values, scaled to [0, 1].
    rank = {x: (ordered.index(x) + len(ordered) - 1 - ordered[::-1].index(x)) / 2 for x in valid}
    return [None if x is None else rank[x] / (len(valid) - 1) for x in scores]


def _order_agreement(xs: Sequence[float | None], ys: Sequence[float | None]) -> tuple[int, int]:
    """Of the response pairs both scorers order strictly, how many they order the same way, and how many."""
    agree = ordered = 0
    for i, j in itertools.combinations(range(len(xs)), 2):
        if None in (xs[i], xs[j], ys[i], ys[j]) or xs[i] == xs[j] or ys[i] == ys[j]:
            continue
        ordered += 1
        agree += (xs[i] > xs[j]) == (ys[i] > ys[j])
    return agree, ordered


def matches(prompt: Mapping[str, Any], when: Mapping[str, Any] | None) -> bool:
    """Whether a prompt record's fields match `when`: each key equal to the value, or to one of a list of values."""
    for key, wanted in (when or {}).items():
        value = prompt.get(key)
        if isinstance(wanted, (list, tuple)) and not isinstance(value, (list, tuple)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


class Conditional:
    """A reward that applies only to prompts matching `when` (e.g. `{category: identity}`); others score
    `otherwise` without calling it."""

    def __init__(self, reward: GroupReward, when: Mapping[str, Any], otherwise: float = 0.0) -> None:
        self.reward = reward
        self.when = dict(when)
        self.otherwise = otherwise
        self.name = f"{reward.name}[{', '.join(f'{k}={v}' for k, v in self.when.items())}]"

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        if not matches(prompt, self.when):
            return [self.otherwise] * len(responses)
        return self.reward.score_group(prompt, responses)

    def prepare(self, round_groups: RoundGroups) -> None:
        """Only the groups whose prompts match reach the reward."""
        matching = [group for group in round_groups.groups if matches(group[0], self.when)]
        prepare_round(self.reward, dataclasses.replace(round_groups, groups=matching))

    def finish(self) -> None:
        finish_round(self.reward)

    def close(self) -> None:
        close_reward(self.reward)

    def take_stats(self) -> dict[str, float]:
        return take_stats(self.reward)
