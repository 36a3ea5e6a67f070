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
from reward import Failed, Group, GroupReward, Response, RoundGroups
from reward.base import score_groups as scores_of_groups
from reward.registry import check_score


def guarded_scores(
    reward: GroupReward, prompt: Mapping[str, Any], responses: Sequence[Response | str]
) -> list[float | Failed]:
    """`reward`'s checked score of each response, where a reward that raises or returns the wrong number of
    scores fails them all (kind "error") instead of stopping the job. Every scoring of samples, corrections and
    eval answers goes through here."""
    try:
        scores = list(reward.score_group(prompt, responses))
        if len(scores) != len(responses):
            raise ValueError(f"returned {len(scores)} scores for {len(responses)} responses")
    except Exception as exc:
        scores = [Failed(f"raised {type(exc).__name__}: {bounded(str(exc))}", "error")] * len(responses)
    return [_bounded_failure(check_score(score)) for score in scores]


MAX_REASON_CHARS = 500  # of why a sample has no reward: it is written once per sample


def bounded(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text`, cut to `limit` characters with a note of how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _bounded_failure(score: float | Failed) -> float | Failed:
    if isinstance(score, Failed) and len(score.reason) > MAX_REASON_CHARS:
        return Failed(bounded(score.reason), score.kind)
    return score


SCORING_CHUNK_GROUPS = 64  # groups a reward that batches across groups gets at once; progress moves per chunk


def guarded_batch(reward: GroupReward, groups: Sequence[Group]) -> list[list[float | Failed]]:
    """`guarded_scores` of each group, in one call where `reward` scores many groups at once (`score_groups`).
    When that call raises or answers in the wrong shape, each group is scored on its own, so that a failure
    stays with the group it belongs to."""
    if not callable(getattr(reward, "score_groups", None)) or len(groups) < 2:
        return [guarded_scores(reward, prompt, responses) for prompt, responses in groups]
    try:
        batch = scores_of_groups(reward, groups)
        if any(len(scores) != len(responses) for scores, (_, responses) in zip(batch, groups)):
            raise ValueError("a group's scores do not match its responses")
    except Exception:
        return [guarded_scores(reward, prompt, responses) for prompt, responses in groups]
    return [[_bounded_failure(check_score(score)) for score in scores] for scores in batch]


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
