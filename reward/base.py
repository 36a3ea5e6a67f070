"""The reward interface: a backend scores the K responses to one prompt at once (so judges can compare them).

`score_group(prompt, responses)` returns one entry per response: a float, or `Failed(reason)` when that
response could not be scored. `prompt` is the prompt record as a plain dict: `prompt` (the last user turn's
text), `messages` (the chat turns), `id`, and whatever metadata the prompt source carried (a category, a
reference answer...). This package knows nothing of the training loop: it only scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


class RewardConfigError(ValueError):
    """A reward cannot be built: unknown name, bad import path, arguments its signature does not take."""


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
