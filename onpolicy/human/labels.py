"""People's labels of a round's groups: which answer is the best and which the worst, or "all equally good or
bad", with who gave it and when.

A round's labels live in `rounds/NNNN/labels.jsonl`, one line per label, appended and fsynced as it is given: a
crash or SIGTERM while people label loses none of them. The first label of a group's answers counts (as in the
page, which refuses a second); a label of other answers to the same prompt (a round sampled again after a
crash, differently) is not theirs. A torn last line (a crash while writing it) is ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Mapping, Sequence

from onpolicy.errors import OnpolicyError
from onpolicy.jsonable import lone_surrogate
from onpolicy.run.files import append_line
from onpolicy.run.lock import lock_file
from onpolicy.untrusted import UnreadableData, parse_json


@dataclasses.dataclass(frozen=True)
class Label:
    """A person's verdict on one group (`group`: its key in the round) of `size` answers: the indices of the best
    and the worst answer, or both None when the answers are all equally good or bad. `answers` is the digest of
    the answers labelled (`answers_digest`): a label is only ever applied to those very answers."""

    group: str
    size: int
    best: int | None
    worst: int | None
    labeller: str
    time: float = dataclasses.field(default_factory=time.time)
    answers: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.group, str) and type(self.size) is int and isinstance(self.answers, str)):
            raise ValueError(
                f"group {self.group!r:.40}: a label names its group and answers by text, its size by number"
            )
        if (self.best is None) != (self.worst is None):
            raise ValueError(f"group {self.group}: give both the best and the worst answer, or neither (a tie)")
        if self.best is not None and not (0 <= self.best < self.size and 0 <= self.worst < self.size):
            raise ValueError(f"group {self.group}: answers are numbered 0 to {self.size - 1}")
        if self.best is not None and self.best == self.worst:
            raise ValueError(f"group {self.group}: the best and the worst answer must differ")
        if not isinstance(self.labeller, str) or lone_surrogate(self.labeller) is not None:
            raise ValueError(f"group {self.group}: the labeller's name is not text ({self.labeller!r:.40})")

    @property
    def tie(self) -> bool:
        return self.best is None

    def scores(self) -> list[float]:
        """The label as rewards: 1 for the best, 0 for the worst, 0.5 for the others, so that the best and the
        worst become the pair; a tie scores every answer 0.5 (no pair)."""
        scores = [0.5] * self.size
        if not self.tie:
            scores[self.best] = 1.0
            scores[self.worst] = 0.0
        return scores


def answers_digest(answers: Sequence[str]) -> str:
    """A short fingerprint of a group's answers, in order."""
    return hashlib.sha256(json.dumps(list(answers), ensure_ascii=False).encode()).hexdigest()[:16]


class LabelBook:
    """The labels of one round, in `path` (`rounds/NNNN/labels.jsonl`)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def add(self, label: Label) -> Label:
        """Append `label` unless the book holds a label of the same answers already; returns the label that
        counts (the one given, or the earlier one). On disk before this returns. The book is locked meanwhile
        (flock on its file), so that the job's page and `onpolicy label import` beside it never interleave,
        and a torn last line is cut only by the one writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            lock_file(descriptor, self.path, wait=True)
            earlier = self.labels({label.group: label.answers}).get(label.group)
            if earlier is not None:
                return earlier
            append_line(self.path, json.dumps(dataclasses.asdict(label), ensure_ascii=False))
            return label
        finally:
            os.close(descriptor)  # and with it the lock

    def labels(self, answers: Mapping[str, str] | None = None) -> dict[str, Label]:
        """Each labelled group's first label; with `answers` (group -> digest of its answers), only labels of
        those very answers."""
        if not self.path.is_file():
            return {}
        found: dict[str, Label] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as exc:
            raise OnpolicyError(f"{self.path} is not UTF-8 text (byte {exc.start}): restore it as it was") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                label = Label(**parse_json(line, "the line"))
            except (ValueError, TypeError, UnreadableData) as exc:
                if number == len(lines):  # no newline after it: torn by a crash while it was written
                    break
                raise OnpolicyError(f"{self.path}, line {number}: not a label ({exc})") from None
            if answers is None or answers.get(label.group) == label.answers:
                found.setdefault(label.group, label)
        return found
