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

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Sequence

from onpolicy.interfaces import Correction
from onpolicy.types import Pair, PairingResult, PairTokens, ScoredGroup

DROP_REASONS = ("too_few_scored", "tie", "below_margin", "identical")
CORRECTION_DROP_REASONS = ("correction_unchanged", "correction_not_better", "correction_error", "negative_cap")


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which of a group's samples face each other (`pairs.strategy`, `pairs.length_penalty`; `seed`: the round's,
    for `max_random`):

    - `max_min`: the best against the worst (one pair);
    - `max_random`: the best against a random sample below it by the margin (one pair; seeded by round and
      prompt, so a resumed run draws the same);
    - `all_above_margin`: every two samples whose gap reaches the margin (up to K(K-1)/2 pairs).

    With `length_penalty` λ the sides are chosen by reward − λ·(response tokens), as in the RLHF-Workflow recipe
    against length exploitation; the pair keeps the true rewards."""

    strategy: str = "max_min"
    length_penalty: float = 0.0
    seed: int = 0


def build_pairs(
    groups: Sequence[ScoredGroup],
    min_margin: float = 0.0,
    correction: Correction | None = None,
    selection: Selection = Selection(),
) -> PairingResult:
    pairs = []
    reasons = DROP_REASONS + (CORRECTION_DROP_REASONS if correction else ())
    dropped: Counter[str] = Counter({reason: 0 for reason in reasons})
    for group in groups:
        pair, reason = None, None
        if correction is not None and correction.applies(group):
            pair, reason = correction.pair(group, min_margin)
        if pair is not None:
            pairs.append(pair)
        elif reason is not None:
            dropped[reason] += 1
        else:
            group_result, reason = group_pairs(group, min_margin, selection)
            pairs += group_result
            if reason is not None:
                dropped[reason] += 1
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


def group_pairs(
    group: ScoredGroup, min_margin: float = 0.0, selection: Selection = Selection()
) -> tuple[list[Pair], str | None]:
    """The group's pairs, or none and the reason (`too_few_scored`, `tie`, `below_margin`, `identical`)."""
    samples = group.group.samples
    scores = group.scores(selection.length_penalty)
    if len(scores) < 2:
        return [], "too_few_scored"
    (best, _), (worst, _) = group.best_and_worst(selection.length_penalty)  # the first in sampling order among equals
    gap = scores[best] - scores[worst]
    if gap <= 0:
        return [], "tie"
    if gap < min_margin:
        return [], "below_margin"

    def apart(i: int, j: int) -> bool:
        return scores[i] - scores[j] > 0 and scores[i] - scores[j] >= min_margin

    if selection.strategy == "max_random":
        below = [j for j in scores if apart(best, j)]
        sides = [(best, random.Random(f"{selection.seed}:{group.group.record.id}").choice(below))]
    elif selection.strategy == "all_above_margin":
        sides = [(i, j) for i in scores for j in scores if apart(i, j)]
    else:
        sides = [(best, worst)]
    pairs = [_pair(group, i, j) for i, j in sides if samples[i].text != samples[j].text]
    return pairs, None if pairs else "identical"


def _pair(group: ScoredGroup, chosen_index: int, rejected_index: int) -> Pair:
    samples, record = group.group.samples, group.group.record
    chosen, rejected = samples[chosen_index], samples[rejected_index]
    return Pair(
        prompt_id=record.id,
        messages=record.messages,
        chosen=chosen.text,
        rejected=rejected.text,
        chosen_reward=group.rewards[chosen_index],
        rejected_reward=group.rewards[rejected_index],
        tokens=PairTokens(
            group.group.prompt_token_ids, chosen.token_ids, rejected.token_ids, chosen.logp, rejected.logp
        ),
    )
