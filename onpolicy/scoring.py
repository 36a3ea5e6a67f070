"""Scoring: every sample gets a reward from the configured reward backend.

A reward that raises on a group, returns NaN/inf or marks a response failed does not stop the run: those
samples are excluded from pairing and counted by kind, and the first message of each kind is kept so the round
can say what went wrong.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from onpolicy.interfaces import PhaseProgress, Reward
from onpolicy.types import Sample, SampleGroup, ScoredGroup
from reward import Failed, GroupReward, Response, RoundGroups
from reward.guarded import guarded_batch

SCORING_CHUNK_GROUPS = 64  # groups a reward that batches across groups gets at once; progress moves per chunk


def response_of(sample: Sample) -> Response:
    """A sample as rewards see it: its text, whether it was cut at the token limit, its length in tokens."""
    return Response(sample.text, sample.finish_reason == "length", len(sample.token_ids))


def score_sample_groups(
    reward: GroupReward, groups: Sequence[SampleGroup], progress: PhaseProgress | None = None
) -> tuple[list[ScoredGroup], Counter[str], list[str]]:
    """Scored groups; excluded samples counted by kind ("error", "nonfinite", "invalid", ...); and one line per
    kind with an example reason, for the user. `progress` advances by one per group scored."""
    return _score_views(reward, groups, _views(groups), progress)


def score_round(
    reward: Reward, groups: Sequence[SampleGroup], round_groups: RoundGroups, progress: PhaseProgress | None = None
) -> tuple[list[ScoredGroup], Counter[str], list[str]]:
    """`score_sample_groups` for a round: the reward is shown the round's groups first (`prepare`, with `round_groups`,
    the round, its groups left empty: filled in here) and hears when their scoring is over (`finish`, however it
    ends)."""
    views = _views(groups)
    reward.prepare(dataclasses.replace(round_groups, groups=views))
    try:
        return _score_views(reward, groups, views, progress)
    finally:
        reward.finish()


def _views(groups: Sequence[SampleGroup]) -> list[tuple[Mapping[str, Any], list[Response]]]:
    """Each group's prompt record and responses as rewards see them, built once for prepare and scoring alike."""
    return [(group.record.reward_view(), [response_of(sample) for sample in group.samples]) for group in groups]


def _score_views(
    reward: GroupReward,
    groups: Sequence[SampleGroup],
    views: Sequence[tuple[Mapping[str, Any], Sequence[Response]]],
    progress: PhaseProgress | None,
) -> tuple[list[ScoredGroup], Counter[str], list[str]]:
    scored = []
    excluded: Counter[str] = Counter()
    examples: dict[str, str] = {}
    every_group_scores = (
        group_scores
        for start in range(0, len(views), SCORING_CHUNK_GROUPS)
        for group_scores in guarded_batch(reward, views[start : start + SCORING_CHUNK_GROUPS])
    )
    for group, group_scores in zip(groups, every_group_scores):
        rewards: list[float | None] = []
        failures: list[str | None] = []
        for score in group_scores:
            if isinstance(score, Failed):
                excluded[score.kind] += 1
                examples.setdefault(score.kind, score.reason)
                rewards.append(None)
                failures.append(score.reason)
            else:
                rewards.append(score)
                failures.append(None)
        scored.append(ScoredGroup(group=group, rewards=tuple(rewards), failures=tuple(failures)))
        if progress is not None:
            progress.advance()
    messages = [
        f"reward {reward.name!r}: {n} sample(s) excluded ({kind}), e.g. {examples[kind]}"
        for kind, n in sorted(excluded.items())
    ]
    return scored, excluded, messages
