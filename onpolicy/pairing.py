"""Pairing: each group of scored samples becomes at most one best-vs-worst preference pair.

Chosen is the highest-reward sample, rejected the lowest (the first in sampling order among equals, so the
choice carries no length or position preference of its own). A group gives no pair, counted by reason, when:
- `too_few_scored`: fewer than two of its samples have a usable reward;
- `tie`: best and worst score the same (no signal to learn from);
- `below_margin`: the gap is under `min_margin`;
- `identical`: best and worst are the same text (a noisy reward scored one response twice, differently).

With a correction (see `onpolicy.correction`), a group whose best reward is below the correction's
`min_reward` gets a corrected pair instead, counted in `corrected`; a correction that fails is counted as
`correction_unchanged` (the corrector changed nothing), `correction_not_better` (the edit does not score
above the rejected side) or `correction_error` (the corrector raised); negative pairs beyond
`max_negative_ratio` per other pair are dropped as `negative_cap`. A corrector with nothing to correct
for a prompt leaves the group to the ordinary pairing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from onpolicy.types import Pair, PairingResult, PairTokens, ScoredGroup

DROP_REASONS = ("too_few_scored", "tie", "below_margin", "identical")
CORRECTION_DROP_REASONS = ("correction_unchanged", "correction_not_better", "correction_error", "negative_cap")


class Corrector(Protocol):
    max_negative_ratio: float

    def applies(self, group: ScoredGroup) -> bool: ...

    def pair(self, group: ScoredGroup, min_margin: float) -> tuple[Pair | None, str | None]: ...

    def take_problems(self) -> tuple[str, ...]: ...


def build_pairs(
    groups: Sequence[ScoredGroup], min_margin: float = 0.0, correction: Corrector | None = None
) -> PairingResult:
    pairs = []
    reasons = DROP_REASONS + (CORRECTION_DROP_REASONS if correction else ())
    dropped: Counter[str] = Counter({reason: 0 for reason in reasons})
    for group in groups:
        pair, reason = None, None
        if correction is not None and correction.applies(group):
            pair, reason = correction.pair(group, min_margin)
        if pair is None and reason is None:
            pair, reason = best_vs_worst(group, min_margin)
        if pair is None:
            dropped[reason] += 1
        else:
            pairs.append(pair)
    problems: tuple[str, ...] = ()
    if correction is not None:
        pairs = _cap_negatives(pairs, correction.max_negative_ratio, dropped)
        problems = correction.take_problems()
    return PairingResult(pairs=tuple(pairs), dropped=dict(dropped), problems=problems)


def _cap_negatives(pairs: list[Pair], ratio: float, dropped: Counter[str]) -> list[Pair]:
    """Keep at most `ratio` negative (edited-rejected) pairs per other pair, the first ones in group order."""
    if math.isinf(ratio):
        return pairs
    allowed = int(ratio * sum(p.edited != "rejected" for p in pairs))
    kept = []
    for pair in pairs:
        if pair.edited == "rejected":
            if allowed <= 0:
                dropped["negative_cap"] += 1
                continue
            allowed -= 1
        kept.append(pair)
    return kept


def best_vs_worst(group: ScoredGroup, min_margin: float = 0.0) -> tuple[Pair | None, str | None]:
    """The group's pair, or None and the reason it has none."""
    if len(group.valid) < 2:
        return None, "too_few_scored"
    (best_index, best), (worst_index, worst) = group.best_and_worst()
    gap = best - worst
    if gap <= 0:
        return None, "tie"
    if gap < min_margin:
        return None, "below_margin"
    samples = group.group.samples
    if samples[best_index].text == samples[worst_index].text:
        return None, "identical"
    record = group.group.record
    chosen, rejected = samples[best_index], samples[worst_index]
    pair = Pair(
        prompt_id=record.id,
        messages=record.messages,
        chosen=chosen.text,
        rejected=rejected.text,
        chosen_reward=best,
        rejected_reward=worst,
        tokens=PairTokens(
            group.group.prompt_token_ids, chosen.token_ids, rejected.token_ids, chosen.logp, rejected.logp
        ),
    )
    return pair, None
