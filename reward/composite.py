"""Combining rewards: a weighted sum of terms, each optionally normalised within its group and applied only to
some prompts.

Each term carries what its reward needs (`Needs`, from its registration): the sum shows the round's groups to
the terms that need people (`prepare`, `finish`) and closes those that hold something open, and no other.

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
    Group,
    GroupReward,
    Needs,
    RewardConfigError,
    RoundGroups,
    Score,
    take_stats,
)
from reward.guarded import guarded_batch

Normalize = Literal["none", "zscore", "rank"]


@dataclasses.dataclass(frozen=True)
class Term:
    """One reward in a sum. `normalize` rescales its scores within each group before weighting: `zscore`
    (mean 0, standard deviation 1) or `rank` (0 for the worst to 1 for the best), so that terms on different
    scales (a reward model's logits, a judge's 1-10, a rule's 0/1) weigh what their weights say. With `when`
    (e.g. `{category: identity}`) it applies only to the prompts matching it: the others score 0 on it without
    calling it. `needs`: what its reward needs from the job (`reward_needs`)."""

    reward: GroupReward
    weight: float = 1.0
    label: str = ""
    normalize: Normalize = "none"
    when: Mapping[str, Any] | None = None
    needs: Needs = Needs()

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
        return self.score_groups([(prompt, responses)])[0]

    def score_groups(self, groups: Sequence[Group]) -> list[list[Score]]:
        """Each group's weighted sum; every term scores all the groups it applies to in one go (`score_groups`),
        so that a term that batches across groups does."""
        by_term = [self._term_scores(term, groups) for term in self.terms]
        return [self._combine([scores[n] for scores in by_term], len(group[1])) for n, group in enumerate(groups)]

    def _term_scores(self, term: Term, groups: Sequence[Group]) -> list[list[Score] | None]:
        """`term`'s checked scores of each group (None where its `when` does not match: it is not called). A term
        that raises fails its own scores (`guarded_batch`): the sum does not raise, so nobody asks the other terms
        again (a human term's labels are given once)."""
        applies = [n for n, (prompt, _) in enumerate(groups) if matches(prompt, term.when)]
        scored = guarded_batch(term.reward, [groups[n] for n in applies]) if applies else []
        found: list[list[Score] | None] = [None] * len(groups)
        for n, scores in zip(applies, scored):
            found[n] = scores
        return found

    def _combine(self, by_term: Sequence[list[Score] | None], size: int) -> list[Score]:
        """One group's weighted sum of its terms' scores (None: the term does not apply, and adds 0)."""
        totals: list[Score] = [0.0] * size
        per_term: dict[str, list[float | None]] = {}
        for term, scores in zip(self.terms, by_term):
            if scores is None:
                continue
            raw = [None if isinstance(s, Failed) else s for s in scores]
            per_term[term.label] = raw  # a term is watched only on the prompts it applies to
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

    @property
    def needs(self) -> Needs:
        """What the sum needs: what any of its terms does (their sub-rewards are built in already)."""
        needs = [term.needs for term in self.terms]
        return Needs(
            people=any(n.people for n in needs),
            shown_only=any(n.shown_only for n in needs),
            policy_engine=any(n.policy_engine for n in needs),
            gpu=any(n.gpu for n in needs),
            close=any(n.close for n in needs),
            servers=any(n.servers for n in needs),
        )

    def prepare(self, round_groups: RoundGroups) -> None:
        """Show the terms that need people the round's groups (a `when` term: only the groups it applies to)."""
        for term in self.terms:
            if term.needs.people:
                matching = [group for group in round_groups.groups if matches(group[0], term.when)]
                term.reward.prepare(dataclasses.replace(round_groups, groups=matching))

    def finish(self) -> None:
        for term in self.terms:
            if term.needs.people:
                term.reward.finish()

    def close(self) -> None:
        for term in self.terms:
            if term.needs.close:
                term.reward.close()

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
