"""The reward interface: a backend scores the K responses to one prompt at once (so judges can compare them).

`score_group(prompt, responses)` returns one entry per response: a float, or `Failed(reason)` when that
response could not be scored. `prompt` is the prompt record as a plain dict: `prompt` (the last user turn's
text), `messages` (the chat turns), `id`, and whatever metadata the prompt source carried (a category, a
reference answer...). Each response is a `str`; the loop passes `Response`s, which also say whether
generation was cut at the token limit. This package knows nothing of the training loop: it only scores.

A backend that scores faster many groups at once (a reward model batching across prompts, a judge keeping one
pool of requests busy) also has `score_groups(groups)`: a list of (prompt, responses), one list of scores per
group, each as `score_group` would return it. The loop gives it a round's groups in chunks (`score_groups`
below); a backend without it is called group by group.

A backend that costs something (model calls, tokens, seconds) also has `take_stats()`, returning its counters
since the last call; the loop logs them per round. What else a backend needs from the job it declares in a
`Needs` record where it is registered: one that people score (in a page) is shown a round's groups before they
are scored one by one (`prepare(round_groups)`) and told once they are scored or scoring stopped (`finish()`);
one that holds something open (a server) is closed when the job ends (`close()`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable


class RewardConfigError(ValueError):
    """A reward cannot be built: unknown name, bad import path, arguments its signature does not take."""


@dataclasses.dataclass(frozen=True)
class Needs:
    """What a reward needs from the job that runs it, besides its arguments: declared where its factory is
    registered (`register(name, needs=...)`, or a `needs` attribute on a factory named by import path), so that the
    job asks this record, never the reward's name. The default needs nothing."""

    people: bool = False
    """People score its answers in a page it serves: the job shows it each round's groups before they are scored
    (`prepare`) and tells it when their scoring ends (`finish`); people judge no eval answers."""
    shown_only: bool = False
    """It scores only the answers of the round's groups it was shown: an answer made afterwards (a corrected one)
    fails."""
    policy_engine: bool = False
    """It generates with the job's in-process policy engine, which its factory is handed as `policy_engine`."""
    engine_alternative: str = ""
    """With `policy_engine`: the arguments with which it does without that engine, for the message that refuses
    it where the job runs none (generation on servers)."""
    gpu: bool = False
    """It runs a model of its own on a CUDA device."""
    close: bool = False
    """It holds something open (a page, a server) until its `close()`, which the job calls when it ends."""
    servers: bool = False
    """It runs a model on a vLLM server the job starts for it: its factory is handed `model_servers`, the job's
    `reward.servers.ModelServers`, to ask for one; the job starts it once its run is open and stops it at its
    end."""
    rewards: tuple[str, ...] = ()
    """Its arguments that are reward terms as a config lists them: the job checks and builds each into one reward,
    and hands that over in their place."""
    paths: tuple[str, ...] = ()
    """Its arguments that name local files or folders: relative ones in a config file are read against that
    file's folder."""


@dataclasses.dataclass(frozen=True)
class Failed:
    """A response the reward could not score; it is left out of pairing and counted by `kind`: "error" (the
    reward raised), "nonfinite" (NaN or inf), "invalid" (not a number), or a backend's own (e.g. "unparsable")."""

    reason: str
    kind: str = "error"


Score = float | Failed


@runtime_checkable
class GroupReward(Protocol):
    """Scores the responses to one prompt."""

    name: str

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]: ...


Group = tuple[Mapping[str, Any], Sequence[str]]  # a prompt record and the responses to it


@runtime_checkable
class BatchReward(Protocol):
    """Scores many groups at once: for each group, what `score_group` would return."""

    def score_groups(self, groups: Sequence[Group]) -> list[list[Score]]: ...


def score_groups(reward: GroupReward, groups: Sequence[Group]) -> list[list[Score]]:
    """Each group's scores from `reward`: in one call where it scores many groups at once (`score_groups`), else
    one `score_group` call per group. Raises what the reward raises, and when a batch's shape is wrong."""
    batched = getattr(reward, "score_groups", None)
    if not callable(batched):
        return [list(reward.score_group(prompt, responses)) for prompt, responses in groups]
    scores = [list(group_scores) for group_scores in batched(groups)]
    if len(scores) != len(groups):
        raise ValueError(f"score_groups returned scores for {len(scores)} groups, given {len(groups)}")
    return scores


def regrouped(flat: Sequence[Score], groups: Sequence[Group]) -> list[list[Score]]:
    """Scores of all the responses of `groups`, in order (`flat`), cut back into one list per group."""
    scores, start = [], 0
    for _, responses in groups:
        scores.append(list(flat[start : start + len(responses)]))
        start += len(responses)
    return scores


class Response(str):
    """A sampled response's text, with how generation ended: `truncated` when it stopped at the token limit
    instead of at end-of-sequence, and its length in tokens when known. Plain strings work wherever a
    `Response` is expected (not truncated, length unknown)."""

    truncated: bool
    num_tokens: int | None

    def __new__(cls, text: str, truncated: bool = False, num_tokens: int | None = None) -> Response:
        response = super().__new__(cls, text)
        response.truncated = truncated
        response.num_tokens = num_tokens
        return response


class Meter:
    """Counters a backend keeps between two `take_stats()` calls: calls, tokens, seconds, failures..."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, **amounts: float) -> None:
        self._counts.update(amounts)

    @contextmanager
    def timed(self, key: str = "seconds") -> Any:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._counts[key] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The counters since the last take, and a fresh start."""
        counts, self._counts = dict(self._counts), Counter()
        return {key: float(value) for key, value in counts.items()}


def take_stats(reward: object) -> dict[str, float]:
    """A reward's counters since the last call, or nothing for rewards that keep none."""
    take = getattr(reward, "take_stats", None)
    return dict(take()) if callable(take) else {}


@dataclasses.dataclass(frozen=True)
class RoundGroups:
    """A round's groups, handed to a reward's `prepare` before they are scored: `groups` holds each group's prompt
    record and responses, in the order `score_group` will see them. `folder` is the round's folder in the run
    directory, for what the reward keeps of the round; `echo` prints a line for the user; `should_stop` turns
    true when the job is asked to stop (a reward that waits returns then)."""

    round: int
    folder: pathlib.Path
    groups: Sequence[tuple[Mapping[str, Any], Sequence[Response]]]
    echo: Callable[[str], None] = print
    should_stop: Callable[[], bool] = lambda: False
