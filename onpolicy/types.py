"""The typed records that pass between the stages of a round.

Frozen dataclasses of plain values: each serialises to one line of the run directory's JSONL with
`dataclasses.asdict`, as it is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """One training prompt: the chat messages before the response, plus whatever else its source carried
    (a category, a reference answer...), which rewards see too."""

    id: str
    messages: tuple[Mapping[str, str], ...]
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The text of the last user turn."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    def reward_view(self) -> dict[str, Any]:
        """What a reward sees of the prompt: its metadata, its id, messages and prompt text."""
        return {**self.metadata, "id": self.id, "prompt": self.prompt, "messages": [dict(m) for m in self.messages]}


@dataclasses.dataclass(frozen=True)
class Sample:
    """One sampled response. `logprobs` are the sampling policy's log-probs of the sampled tokens."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str  # "stop" (end of sequence or stop string) or "length" (cut at max_new_tokens)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def end(self) -> tuple[int, ...]:
        """The token that ended the response (EOS), or none when it was cut at max_new_tokens."""
        return self.token_ids[-1:] if self.finish_reason == "stop" else ()

    @property
    def logp(self) -> float | None:
        """The sampling policy's log-prob of the whole response (None when the generator gave no log-probs)."""
        return math.fsum(self.logprobs) if self.logprobs else None


@dataclasses.dataclass(frozen=True)
class SampleGroup:
    """The K responses sampled for one prompt."""

    record: PromptRecord
    prompt_token_ids: tuple[int, ...]
    samples: tuple[Sample, ...]


@dataclasses.dataclass(frozen=True)
class ScoredGroup:
    """A group with one reward per sample; `None` marks a sample the reward failed on, `failures` says why."""

    group: SampleGroup
    rewards: tuple[float | None, ...]
    failures: tuple[str | None, ...]

    @property
    def valid(self) -> list[tuple[int, float]]:
        return [(i, r) for i, r in enumerate(self.rewards) if r is not None and math.isfinite(r)]

    def scores(self, length_penalty: float = 0.0) -> dict[int, float]:
        """Each scored sample's index -> its reward − `length_penalty`·(its response tokens): what pairing ranks
        by (the reward itself at the default 0)."""
        samples = self.group.samples
        if not length_penalty:
            return dict(self.valid)
        return {i: r - length_penalty * len(samples[i].token_ids) for i, r in self.valid}

    def best_and_worst(self, length_penalty: float = 0.0) -> tuple[tuple[int, float], tuple[int, float]]:
        """(index, score) of the best and the worst scored sample by `scores(length_penalty)` (the reward at the
        default 0); the first in sampling order among equals. Needs at least one scored sample. The one
        selection of best and worst: pairing and the correction both use it."""
        scores = self.scores(length_penalty)
        best = max(scores, key=lambda i: (scores[i], -i))
        worst = min(scores, key=lambda i: (scores[i], i))
        return (best, scores[best]), (worst, scores[worst])


@dataclasses.dataclass(frozen=True)
class PairTokens:
    """A pair as the policy saw and produced it: the prompt's token ids as the engine got them, and each side's
    sampled token ids with the sampling policy's summed log-prob.

    A pair with an edited side carries no side ids (None): the updater tokenizes both sides' text, so that they
    differ only where the edit does (a sampled response may be a non-canonical tokenization its edit does not
    share, and DPO would learn to prefer canonical tokens), and ends each with `chosen_end` / `rejected_end`:
    the EOS of the response it is or was edited from, or nothing when that one was cut at max_new_tokens (a
    chosen side that alone ended with EOS would teach DPO the EOS, not the edit)."""

    prompt: tuple[int, ...]
    chosen: tuple[int, ...] | None
    rejected: tuple[int, ...] | None
    chosen_logp: float | None
    rejected_logp: float | None
    chosen_end: tuple[int, ...] = ()
    rejected_end: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Pair:
    """A preference pair built from one group: chosen is preferred over rejected. `tokens` (when the sides come
    from a generator that reports them) lets the update train on exactly the sampled tokens."""

    prompt_id: str
    messages: tuple[Mapping[str, str], ...]
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float
    edited: str = "none"  # which side is an edit of the policy's own response: "none", "chosen" or "rejected"
    tokens: PairTokens | None = None

    @property
    def corrected(self) -> bool:
        return self.edited != "none"

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Pair:
        """A pair as `to_json` wrote it (a line of pairs.jsonl)."""
        tokens = row.get("tokens")
        return cls(
            **{**row, "messages": tuple(row["messages"]), "tokens": None if tokens is None else PairTokens(
                **{key: tuple(value) if isinstance(value, list) else value for key, value in tokens.items()}
            )}
        )  # fmt: skip

    @property
    def margin(self) -> float:
        return self.chosen_reward - self.rejected_reward


@dataclasses.dataclass(frozen=True)
class PairingResult:
    """The pairs of a round, per reason how many groups gave none, and what went wrong in building them (one
    example per kind of failure, for the user)."""

    pairs: tuple[Pair, ...]
    dropped: Mapping[str, int]
    problems: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    """What a policy update reports: TRL's training metrics averaged over the round, and whether it ran."""

    skipped: bool
    metrics: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class EngineStart:
    """What the generator starts from, as the policy's storage says (`onpolicy.train.policy_storage`) and the
    generation backend starts it (`onpolicy.generation.backends`), for a run that starts at the initial model or
    continues a checkpoint."""

    model: str  # the model folder it loads (the base model, where the generator serves adapters on top)
    send_policy: bool = False  # the model is not the policy: send the policy before the first round


def to_json(record: Any) -> dict[str, Any]:
    """A dataclass record as a JSON-ready dict (mappings and tuples become objects and lists)."""
    return dataclasses.asdict(record)


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """A complete round: its metrics (its line in rounds.jsonl and its W&B step), its pairs, and what went wrong
    without stopping it."""

    round: int
    metrics: Mapping[str, float]
    pairs: tuple[Pair, ...]
    warnings: tuple[str, ...] = ()

    def line(self) -> dict[str, Any]:
        """The round as rounds.jsonl holds it."""
        return {"round": self.round, **self.metrics}
