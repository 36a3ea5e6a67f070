"""Built-in rule rewards: fixed scores for words or regular expressions present in (or absent from) a response.

Each is a `GroupReward` built by its function's keyword arguments (the `args:` of a reward term in the config).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from reward.base import RewardConfigError, Score
from reward.registry import register


@dataclasses.dataclass(frozen=True)
class _Matcher:
    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def build(cls, words: Sequence[str], patterns: Sequence[str], case_sensitive: bool, who: str) -> _Matcher:
        if isinstance(words, str) or isinstance(patterns, str):
            raise RewardConfigError(f"{who}: words and patterns are lists of strings")
        if not words and not patterns:
            raise RewardConfigError(f"{who}: give at least one of words or patterns")
        flags = 0 if case_sensitive else re.IGNORECASE
        compiled = [re.compile(rf"\b{re.escape(w)}\b", flags) for w in words]
        for p in patterns:
            try:
                compiled.append(re.compile(p, flags))
            except re.error as exc:
                raise RewardConfigError(f"{who}: bad regular expression {p!r}: {exc}") from None
        return cls(tuple(compiled))

    def hits(self, text: str) -> list[bool]:
        return [bool(p.search(text)) for p in self.patterns]


@dataclasses.dataclass(frozen=True)
class ContainsReward:
    name: str
    matcher: _Matcher
    score: float
    match: Literal["any", "all"]

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        test = any if self.match == "any" else all
        return [self.score if test(self.matcher.hits(r)) else 0.0 for r in responses]


@dataclasses.dataclass(frozen=True)
class ForbidsReward:
    name: str
    matcher: _Matcher
    penalty: float

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        return [self.penalty if any(self.matcher.hits(r)) else 0.0 for r in responses]


@register("contains")
def contains(
    words: Sequence[str] = (),
    patterns: Sequence[str] = (),
    score: float = 1.0,
    match: Literal["any", "all"] = "any",
    case_sensitive: bool = False,
) -> ContainsReward:
    """`score` when the response contains any (or all) of the whole words / regexes, else 0."""
    if match not in ("any", "all"):
        raise RewardConfigError(f"contains: match must be 'any' or 'all', not {match!r}")
    return ContainsReward("contains", _Matcher.build(words, patterns, case_sensitive, "contains"), score, match)


@register("forbids")
def forbids(
    words: Sequence[str] = (), patterns: Sequence[str] = (), penalty: float = -1.0, case_sensitive: bool = False
) -> ForbidsReward:
    """`penalty` when the response contains any of the whole words / regexes, else 0."""
    return ForbidsReward("forbids", _Matcher.build(words, patterns, case_sensitive, "forbids"), penalty)


@dataclasses.dataclass(frozen=True)
class LengthReward:
    name: str
    target: int
    unit: Literal["words", "chars"]

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        sizes = [len(r.split()) if self.unit == "words" else len(r) for r in responses]
        return [-abs(n - self.target) / self.target for n in sizes]


@register("length")
def length(target: int, unit: Literal["words", "chars"] = "words") -> LengthReward:
    """Minus the relative distance of the response's length from `target`: 0 on target, -1 at 0 or 2x."""
    if not isinstance(target, int) or target <= 0:
        raise RewardConfigError(f"length: target must be a positive whole number, not {target!r}")
    if unit not in ("words", "chars"):
        raise RewardConfigError(f"length: unit must be 'words' or 'chars', not {unit!r}")
    return LengthReward("length", target, unit)
