"""Scores that never raise: a reward that raises, answers in the wrong shape or returns something that is not a
finite number fails the responses concerned (`Failed`) instead of stopping whoever asked.

The job scores through here, and so does a weighted sum for each of its terms: a term that fails stays that
term's failure, and the other terms' scores (people's labels among them) are not asked for again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reward.base import Failed, Group, GroupReward, Response, Score, score_groups
from reward.registry import check_score

MAX_REASON_CHARS = 500  # of why a sample has no reward: it is written once per sample


def bounded(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text`, cut to `limit` characters with a note of how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def guarded_scores(
    reward: GroupReward, prompt: Mapping[str, Any], responses: Sequence[Response | str]
) -> list[Score]:
    """`reward`'s checked score of each response, where a reward that raises or returns the wrong number of
    scores fails them all (kind "error") instead of stopping the job."""
    try:
        scores = list(reward.score_group(prompt, responses))
        if len(scores) != len(responses):
            raise ValueError(f"returned {len(scores)} scores for {len(responses)} responses")
    except Exception as exc:
        scores = [Failed(f"raised {type(exc).__name__}: {bounded(str(exc))}", "error")] * len(responses)
    return [_bounded_failure(check_score(score)) for score in scores]


def guarded_batch(reward: GroupReward, groups: Sequence[Group]) -> list[list[Score]]:
    """`guarded_scores` of each group, in one call where `reward` scores many groups at once (`score_groups`).
    When that call raises or answers in the wrong shape, each group is scored on its own, so that a failure
    stays with the group it belongs to."""
    if not callable(getattr(reward, "score_groups", None)) or len(groups) < 2:
        return [guarded_scores(reward, prompt, responses) for prompt, responses in groups]
    try:
        batch = score_groups(reward, groups)
        if any(len(scores) != len(responses) for scores, (_, responses) in zip(batch, groups)):
            raise ValueError("a group's scores do not match its responses")
    except Exception:
        return [guarded_scores(reward, prompt, responses) for prompt, responses in groups]
    return [[_bounded_failure(check_score(score)) for score in scores] for scores in batch]


def _bounded_failure(score: Score) -> Score:
    if isinstance(score, Failed) and len(score.reason) > MAX_REASON_CHARS:
        return Failed(bounded(score.reason), score.kind)
    return score
