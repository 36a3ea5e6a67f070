"""Built-in rule rewards: words or regular expressions present in (or absent from) a response, a length target,
a penalty for responses cut at the token limit, and exact-match answers checked against the prompt record.

Each is a `GroupReward` built by its function's keyword arguments (the `args:` of a reward term in the config).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from reward.base import Failed, RewardConfigError, Score
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


@dataclasses.dataclass(frozen=True)
class MissingEosReward:
    name: str
    penalty: float

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        return [self.penalty if getattr(r, "truncated", False) else 0.0 for r in responses]


@register("missing_eos")
def missing_eos(penalty: float = -1.0) -> MissingEosReward:
    """`penalty` for a response cut at the token limit instead of ending by itself, else 0. Without it, a
    rubric or a length reward can prefer rambling answers that never finish."""
    return MissingEosReward("missing_eos", penalty)


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_EXTRACTORS = {
    # The last number in the response: GSM8K-style answers ("... so she has 42 apples.").
    "last_number": re.compile(rf"({_NUMBER})(?!.*(?:{_NUMBER}))", re.DOTALL),
    # The content of the last \boxed{...} (no nested braces): MATH-style answers.
    "boxed": re.compile(r"\\boxed\{([^{}]*)\}(?!.*\\boxed\{)", re.DOTALL),
    # What follows the last "####": GSM8K's own answer marker.
    "hashes": re.compile(r"####\s*([^\n]+)(?!.*####)", re.DOTALL),
}


@dataclasses.dataclass(frozen=True)
class ExactMatchReward:
    name: str
    field: str
    extractor: re.Pattern[str]
    correct: float
    wrong: float

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        if prompt.get(self.field) is None:
            reason = f"prompt {prompt.get('id')!r} has no reference answer in field {self.field!r}"
            return [Failed(reason, "no_reference")] * len(responses)
        reference = _canonical(str(prompt[self.field]))
        scores: list[Score] = []
        for response in responses:
            found = self.extractor.search(response)
            scores.append(self.correct if found and _canonical(found.group(1)) == reference else self.wrong)
        return scores


def _canonical(answer: str) -> str:
    """An answer in a form where equal answers compare equal: trimmed, lower case, no thousands separators or
    trailing full stop, and numbers written one way (`4.0` -> `4`)."""
    text = answer.strip().rstrip(".").strip().lower().replace("$", "")
    number = text.replace(",", "")
    try:
        value = float(number)
    except ValueError:
        return text
    if not math.isfinite(value):  # "inf", "nan": words, not numbers to write one way
        return text
    return f"{value:g}" if value != int(value) else str(int(value))


@register("exact_match")
def exact_match(
    field: str = "answer",
    extract: Literal["last_number", "boxed", "hashes"] = "last_number",
    pattern: str | None = None,
    correct: float = 1.0,
    wrong: float = 0.0,
) -> ExactMatchReward:
    """`correct` when the answer taken from the response equals the prompt record's reference answer
    (`field`), else `wrong`. The answer is taken by `extract`, or by `pattern`, a regular expression whose
    first group is the answer. Prompts without a reference fail (counted), never score `wrong`."""
    if pattern is not None:
        try:
            extractor = re.compile(pattern, re.DOTALL)
        except re.error as exc:
            raise RewardConfigError(f"exact_match: bad regular expression {pattern!r}: {exc}") from None
        if extractor.groups < 1:
            raise RewardConfigError(f"exact_match: pattern {pattern!r} needs a group around the answer")
    elif extract in _EXTRACTORS:
        extractor = _EXTRACTORS[extract]
    else:
        raise RewardConfigError(f"exact_match: extract must be one of {sorted(_EXTRACTORS)}, not {extract!r}")
    return ExactMatchReward("exact_match", field, extractor, correct, wrong)
