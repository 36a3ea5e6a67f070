"""LLM judges: pointwise (a rubric score per response, averaged over votes) and pairwise (two responses at a
time, in both orders, aggregated into a ranking).

An answer that does not parse is asked again (`parse_retries` times); a response still without a parsable
verdict fails with kind "unparsable", and one whose request failed (timeout, HTTP error) with "judge_error".
Neither is ever scored 0.
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from reward.base import Failed, Group, Meter, Score, regrouped
from reward.judge.clients import ChatAnswer, ChatBackend, ChatRequest
from reward.judge.templates import PairwisePrompt, Rubric, record_text


class _Asker:
    """Sends requests, counts their cost, and asks again for the answers that did not parse."""

    def __init__(self, backend: ChatBackend, meter: Meter, parse_retries: int, answer_prefix: str) -> None:
        self.backend = backend
        self.meter = meter
        self.parse_retries = parse_retries
        self.answer_prefix = answer_prefix

    def ask(
        self,
        conversations: Sequence[list[dict[str, str]]],
        wanted: int,
        parse: Callable[[str], Any],
        regex: str | None,
    ) -> tuple[list[list[Any]], list[Failed]]:
        """For each conversation, up to `wanted` parsed verdicts, and what to fail it with if it has none."""
        verdicts: list[list[Any]] = [[] for _ in conversations]
        problems = [Failed("no verdict", "unparsable")] * len(conversations)
        pending = list(range(len(conversations)))
        for attempt in range(1 + self.parse_retries):
            if not pending:
                break
            if attempt:
                self.meter.add(retries=len(pending))
            requests = [
                ChatRequest(conversations[i], wanted - len(verdicts[i]), self.answer_prefix, regex) for i in pending
            ]
            with self.meter.timed():
                answers = self.backend.complete(requests)
            self._count(answers)
            for i, answer in zip(pending, answers):
                if answer.error is not None:
                    problems[i] = Failed(f"judge request failed: {answer.error}", "judge_error")
                for text in answer.texts:
                    verdict = parse(text)
                    if verdict is None:
                        self.meter.add(parse_failures=1)
                        problems[i] = Failed(f"unparsable judge answer {text[-120:]!r}", "unparsable")
                    else:
                        verdicts[i].append(verdict)
            # Transport errors were retried by the client already; only unparsable answers are asked again.
            pending = [i for i in pending if len(verdicts[i]) < wanted and problems[i].kind != "judge_error"]
        return verdicts, problems

    def _count(self, answers: Sequence[ChatAnswer]) -> None:
        self.meter.add(
            calls=len(answers),
            answers=sum(len(a.texts) for a in answers),
            request_errors=sum(a.error is not None for a in answers),
            prompt_tokens=sum(a.prompt_tokens for a in answers),
            completion_tokens=sum(a.completion_tokens for a in answers),
        )


class PointwiseJudge:
    """Each response scored on its own with a rubric; the score is the mean of `votes` sampled verdicts (the
    parsable ones, when retries could not make up every vote)."""

    def __init__(
        self, backend: ChatBackend, rubric: Rubric, votes: int, parse_retries: int, answer_prefix: str, constrain: bool
    ) -> None:
        self.name = f"judge:{rubric.name}"
        self.rubric = rubric
        self.votes = votes
        self.regex = rubric.answer_regex if constrain else None
        self.meter = Meter()
        self.asker = _Asker(backend, self.meter, parse_retries, answer_prefix)

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        return self.score_groups([(prompt, responses)])[0]

    def score_groups(self, groups: Sequence[Group]) -> list[list[Score]]:
        """Every response of `groups` asked at once: one pool of `concurrency` requests for them all."""
        conversations = [self.rubric.messages(record_text(p), r) for p, responses in groups for r in responses]
        verdicts, problems = self.asker.ask(conversations, self.votes, self.rubric.parse, self.regex)
        flat: list[Score] = [sum(votes) / len(votes) if votes else why for votes, why in zip(verdicts, problems)]
        self.meter.add(failed=sum(isinstance(s, Failed) for s in flat), scored=len(flat))
        return regrouped(flat, groups)

    def take_stats(self) -> dict[str, float]:
        return _with_rates(self.meter.take())


class PairwiseJudge:
    """Responses compared two at a time, each pair in both orders so that a judge that favours a position
    cancels out: a pair whose two verdicts disagree counts as a tie, and as a position flip. Wins are aggregated
    into a score per response: its share of wins (`wins`) or its Bradley-Terry log-strength (`bradley_terry`).
    `max_comparisons` bounds the pairs per group: a random cycle through all responses first (so each is
    compared), then random extra pairs."""

    def __init__(
        self,
        backend: ChatBackend,
        template: PairwisePrompt,
        max_comparisons: int | None,
        aggregate: Literal["wins", "bradley_terry"],
        parse_retries: int,
        answer_prefix: str,
        constrain: bool,
        seed: int,
    ) -> None:
        self.name = f"judge:pairwise-{aggregate}"
        self.template = template
        self.max_comparisons = max_comparisons
        self.aggregate = aggregate
        self.seed = seed
        self.regex = template.answer_regex if constrain else None
        self.meter = Meter()
        self.asker = _Asker(backend, self.meter, parse_retries, answer_prefix)

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        return self.score_groups([(prompt, responses)])[0]

    def score_groups(self, groups: Sequence[Group]) -> list[list[Score]]:
        """Every comparison of `groups` asked at once (both orders of each pair): one pool of `concurrency`
        requests for them all."""
        plans = [self._pairs(prompt, len(responses)) for prompt, responses in groups]
        conversations = []
        for (prompt, responses), pairs in zip(groups, plans):
            text = record_text(prompt)
            for i, j in pairs:
                conversations.append(self.template.messages(text, responses[i], responses[j]))
                conversations.append(self.template.messages(text, responses[j], responses[i]))
        verdicts, problems = self.asker.ask(conversations, 1, self.template.parse, self.regex)
        scores = []
        start = 0
        for (_, responses), pairs in zip(groups, plans):
            end = start + 2 * len(pairs)
            scores.append(self._ranked(len(responses), pairs, verdicts[start:end], problems[start:end]))
            start = end
        return scores

    def _pairs(self, prompt: Mapping[str, Any], k: int) -> list[tuple[int, int]]:
        """The pairs of a group's k responses to compare, drawn the same way for the same prompt."""
        rng = random.Random(self.seed ^ zlib.crc32(str(prompt.get("id")).encode()))
        return choose_pairs(k, self.max_comparisons, rng)

    def _ranked(
        self, k: int, pairs: Sequence[tuple[int, int]], verdicts: Sequence[list[Any]], problems: Sequence[Failed]
    ) -> list[Score]:
        """A group's scores from its comparisons' verdicts (two per pair, one per order)."""
        wins = np.zeros((k, k))
        games = np.zeros(k)
        for n, (i, j) in enumerate(pairs):
            first, second = verdicts[2 * n], verdicts[2 * n + 1]
            # Verdicts in terms of content (which response won, whatever position it was shown in), averaged
            # over the orders: a win in one order and a loss in the other is a tie.
            outcomes = []
            if first:
                outcomes.append(_winner(first[0], i, j))
            if second:
                outcomes.append(_winner(second[0], j, i))
            if not outcomes:
                continue
            if len(outcomes) == 2:
                self.meter.add(both_orders=1, position_flips=int(outcomes[0] != outcomes[1]))
            for outcome in outcomes:
                share = 1.0 / len(outcomes)
                if outcome is None:
                    wins[i, j] += share / 2
                    wins[j, i] += share / 2
                else:
                    wins[outcome, j if outcome == i else i] += share
            games[[i, j]] += 1
        self.meter.add(comparisons=len(pairs))
        strengths = bradley_terry(wins) if self.aggregate == "bradley_terry" else None
        scores: list[Score] = []
        for r in range(k):
            if not games[r]:
                asked = [problems[2 * n + o] for n, pair in enumerate(pairs) if r in pair for o in (0, 1)]
                scores.append(asked[-1] if asked else Failed("not compared (max_comparisons)", "unparsable"))
            elif strengths is not None:
                scores.append(float(strengths[r]))
            else:
                scores.append(float(wins[r].sum() / games[r]))
        self.meter.add(failed=sum(isinstance(s, Failed) for s in scores), scored=k)
        return scores

    def take_stats(self) -> dict[str, float]:
        stats = _with_rates(self.meter.take())
        if stats.get("both_orders"):
            stats["position_bias"] = stats.get("position_flips", 0.0) / stats["both_orders"]
        return stats


def _winner(verdict: str, a: int, b: int) -> int | None:
    """The response that won when `a` was shown as A and `b` as B; None for a tie."""
    return {"A": a, "B": b}.get(verdict)


def _with_rates(stats: dict[str, float]) -> dict[str, float]:
    if stats.get("answers"):
        stats["parse_failure_rate"] = stats.get("parse_failures", 0.0) / stats["answers"]
    return stats


def choose_pairs(k: int, max_comparisons: int | None, rng: random.Random) -> list[tuple[int, int]]:
    """Every pair of the k responses, or at most `max_comparisons` of them: a random cycle through all
    responses (so each is compared at least once) and then random further pairs."""
    every = list(itertools.combinations(range(k), 2))
    if max_comparisons is None or max_comparisons >= len(every):
        return every
    order = list(range(k))
    rng.shuffle(order)
    cycle = [tuple(sorted((order[n], order[(n + 1) % k]))) for n in range(k if k > 2 else 1)]
    chosen = list(dict.fromkeys(cycle))[:max_comparisons]
    rest = [p for p in every if p not in set(chosen)]
    rng.shuffle(rest)
    return chosen + rest[: max_comparisons - len(chosen)]


def bradley_terry(wins: np.ndarray, prior: float = 0.5, iterations: int = 200) -> np.ndarray:
    """Bradley-Terry log-strengths (mean 0) from a matrix of (fractional) wins, wins[i, j] = times i beat j, by
    Hunter's MM updates. `prior` adds that many tied games to every compared pair, so that a response that won
    every game gets a large but finite strength."""
    games = wins + wins.T
    compared = games > 0
    wins = wins + compared * prior / 2
    games = games + compared * prior
    strength = np.ones(len(wins))
    for _ in range(iterations):
        denominator = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated = np.where(denominator > 0, wins.sum(axis=1) / np.maximum(denominator, 1e-12), strength)
        updated = np.maximum(updated, 1e-12)
        updated /= np.exp(np.log(updated).mean())
        if np.allclose(updated, strength, rtol=1e-9, atol=1e-12):
            break
        strength = updated
    logs = np.log(strength)
    return logs - logs.mean()
