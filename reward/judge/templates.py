"""What a judge is asked, and how its answer is read.

Answers are parsed strictly: the score must appear in the stated format and range, else the answer is
unparsable (retried, then the sample fails and is counted) - never read as 0. `answer_regex` is the form a
*constrained* answer takes: with `constrain: true` the judge engine may only produce text matching it
(vLLM structured outputs), which skips the written justification but makes even a small judge parsable.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from reward.base import RewardConfigError

# The additive 5-point rubric of Self-Rewarding Language Models (Yuan et al., 2024, figure 2).
ADDITIVE_5 = """Review the user's question and the corresponding response using the additive 5-point scoring \
system described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if \
it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not \
completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way, \
regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in \
blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the \
user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room for \
improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, \
without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and \
insightful answer.

User: {prompt}
<response>{response}</response>

After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"
Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the \
response in alignment with this additive scoring model, we'll systematically attribute points based on the \
outlined criteria."""

# MT-Bench's single-answer grading prompt (Zheng et al., 2023).
SCALE_10 = """Please act as an impartial judge and evaluate the quality of the response provided by an AI \
assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, \
relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by providing a \
short explanation. Be as objective as possible. After providing your explanation, you must rate the response on a \
scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".

[Question]
{prompt}

[The Start of Assistant's Answer]
{response}
[The End of Assistant's Answer]"""

# MT-Bench's pairwise comparison prompt.
PAIRWISE = """Please act as an impartial judge and evaluate the quality of the responses provided by two AI \
assistants to the user question displayed below. You should choose the assistant that follows the user's \
instructions and answers the user's question better. Your evaluation should consider factors such as the \
helpfulness, relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation \
by comparing the two responses and provide a short explanation. Avoid any position biases and ensure that the \
order in which the responses were presented does not influence your decision. Do not allow the length of the \
responses to influence your evaluation. Be as objective as possible. After providing your explanation, output your \
final verdict by strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is \
better, and "[[C]]" for a tie.

[User Question]
{prompt}

[The Start of Assistant A's Answer]
{response_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{response_b}
[The End of Assistant B's Answer]"""


@dataclasses.dataclass(frozen=True)
class Rubric:
    """A pointwise prompt (`{prompt}`, `{response}`) and the score format its answer must end with."""

    name: str
    template: str
    pattern: re.Pattern[str]  # group 1 is the score
    answer_regex: str
    low: float
    high: float

    def messages(self, prompt: str, response: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.template.format(prompt=prompt, response=response)}]

    def parse(self, answer: str) -> float | None:
        """The score of the last score statement in `answer`, or None when there is none or it is out of range."""
        found = self.pattern.findall(answer)
        if not found:
            return None
        score = float(found[-1])
        return score if self.low <= score <= self.high else None


@dataclasses.dataclass(frozen=True)
class PairwisePrompt:
    """A comparison prompt (`{prompt}`, `{response_a}`, `{response_b}`) answered with [[A]], [[B]] or [[C]] (tie)."""

    template: str
    pattern: re.Pattern[str] = re.compile(r"\[\[([ABC])\]\]")
    answer_regex: str = r"\[\[[ABC]\]\]"

    def messages(self, prompt: str, response_a: str, response_b: str) -> list[dict[str, str]]:
        text = self.template.format(prompt=prompt, response_a=response_a, response_b=response_b)
        return [{"role": "user", "content": text}]

    def parse(self, answer: str) -> str | None:
        """Verdict "A", "B" or "tie" from the last verdict in `answer`, or None."""
        found = self.pattern.findall(answer)
        if not found:
            return None
        return {"A": "A", "B": "B", "C": "tie"}[found[-1]]


_NUMBER = r"(\d+(?:\.\d+)?)"
RUBRICS: dict[str, Rubric] = {
    "additive5": Rubric("additive5", ADDITIVE_5, re.compile(rf"Score:\s*{_NUMBER}"), r"Score: [0-5]", 0.0, 5.0),
    "scale10": Rubric("scale10", SCALE_10, re.compile(rf"\[\[{_NUMBER}\]\]"), r"Rating: \[\[([1-9]|10)\]\]", 1.0, 10.0),
}


def build_rubric(
    rubric: str, template: str | None, score_pattern: str | None, score_range: Sequence[float] | None
) -> Rubric:
    """A built-in rubric by name, or a custom one from `template` + `score_pattern` (+ `score_range`)."""
    if template is None:
        if rubric not in RUBRICS:
            raise RewardConfigError(f"judge: unknown rubric {rubric!r}; built-ins: {sorted(RUBRICS)}, or give template")
        return RUBRICS[rubric]
    _check_fields(template, ("prompt", "response"))
    if score_pattern is None or score_range is None:
        raise RewardConfigError("judge: a custom template needs score_pattern (group 1 = the score) and score_range")
    pattern = _compile(score_pattern)
    low, high = _range(score_range)
    return Rubric("custom", template, pattern, pattern.pattern, low, high)


def build_pairwise(template: str | None) -> PairwisePrompt:
    if template is None:
        return PairwisePrompt(PAIRWISE)
    _check_fields(template, ("prompt", "response_a", "response_b"))
    return PairwisePrompt(template)


def _check_fields(template: str, needed: Sequence[str]) -> None:
    try:
        template.format(**{name: "" for name in needed})
    except (KeyError, IndexError, ValueError) as exc:
        raise RewardConfigError(
            f"judge: the template may use only the fields {{{'}, {'.join(needed)}}} (double other braces): {exc!r}"
        ) from None
    missing = [name for name in needed if "{" + name + "}" not in template]
    if missing:
        raise RewardConfigError(f"judge: the template does not use {missing}")


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise RewardConfigError(f"judge: bad score_pattern {pattern!r}: {exc}") from None
    if compiled.groups != 1:
        raise RewardConfigError(f"judge: score_pattern {pattern!r} needs exactly one group around the score")
    return compiled


def _range(bounds: Sequence[Any]) -> tuple[float, float]:
    if len(bounds) != 2 or not all(isinstance(b, (int, float)) for b in bounds) or bounds[0] >= bounds[1]:
        raise RewardConfigError(f"judge: score_range must be [low, high] with low < high, not {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def record_text(prompt: Mapping[str, Any]) -> str:
    """The user's request as the judge sees it: the prompt record's last user turn."""
    return str(prompt.get("prompt", ""))
