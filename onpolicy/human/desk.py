"""The label desk: the groups of the round people are labelling, shared by the page's request threads (any
number of labellers at once) and the job's scoring thread (which waits for each group's label).

A labeller claims one group at a time and holds it for `lease_s`: two people never get the same group while
the lease runs, and a group whose labeller walked away goes back to the others when it runs out. Labels go to
the round's `LabelBook` as they are given, so a resumed round opens with only the groups still unlabelled.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from onpolicy.human.labels import Label, LabelBook, answers_digest
from reward import Response


class LabelRefused(ValueError):
    """A label or claim the desk cannot take; `status` is the HTTP status the page answers with."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Task:
    """One group to label: its key in the round, its prompt record and its answers."""

    group: str
    prompt: Mapping[str, Any]
    answers: tuple[Response, ...]

    @functools.cached_property
    def digest(self) -> str:
        return answers_digest(self.answers)

    def view(self) -> dict[str, Any]:
        """What the page shows of it."""
        return {
            "group": self.group,
            "digest": self.digest,
            "messages": list(self.prompt.get("messages", [])),
            "answers": [
                {
                    "text": str(a),
                    "truncated": bool(getattr(a, "truncated", False)),
                    "tokens": getattr(a, "num_tokens", None),
                }
                for a in self.answers
            ],
        }


class LabelDesk:
    """The open round's groups, their leases and labels; every method is safe to call from any thread."""

    def __init__(self, lease_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_s = lease_s
        self._clock = clock
        self._changed = threading.Condition()
        self._round: int | None = None
        self._tasks: dict[str, Task] = {}
        self._book: LabelBook | None = None
        self._labels: dict[str, Label] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # group -> (labeller, expiry)
        self._skipped: dict[str, set[str]] = {}  # labeller -> groups they gave back
        self._deadline: float | None = None
        self._book_stamp: tuple[int, int] | None = None  # the book file's (size, mtime) when last read

    def open_round(self, round_number: int, book: LabelBook, tasks: Sequence[Task], timeout_s: float | None) -> int:
        """Put up `tasks` for labelling, with the labels `book` already holds for these very answers (a resumed
        round); returns how many are left to label."""
        with self._changed:
            self._round = round_number
            self._tasks = {task.group: task for task in tasks}
            self._book = book
            self._labels = book.labels(self._digests())
            self._leases, self._skipped = {}, {}
            self._deadline = None if timeout_s is None else self._clock() + timeout_s
            self._changed.notify_all()
            return len(self._tasks) - len(self._labels)

    def close_round(self) -> None:
        """Nothing to label until the next round opens."""
        with self._changed:
            self._round, self._tasks, self._book, self._labels, self._leases = None, {}, None, {}, {}
            self._skipped = {}
            self._deadline = None
            self._changed.notify_all()

    def state(self, labeller: str = "") -> dict[str, Any]:
        """The round's progress, as the page shows it."""
        labeller = labeller.strip()
        with self._changed:
            now = self._clock()
            being_labelled = sum(1 for g, (_, expiry) in self._leases.items() if expiry > now and g not in self._labels)
            return {
                "round": self._round,
                "total": len(self._tasks),
                "labelled": len(self._labels),
                "left": len(self._tasks) - len(self._labels),
                "being_labelled": being_labelled,
                "mine": sum(1 for label in self._labels.values() if label.labeller == labeller),
                "deadline_in_s": None if self._deadline is None else max(0.0, self._deadline - now),
            }

    def claim(self, labeller: str) -> Task | None:
        """The group `labeller` holds, or the next one no one holds (leased to them); None when none is left."""
        labeller = checked_name(labeller)
        with self._changed:
            self._take_labels_added_elsewhere()
            if self._past_deadline():
                return None
            now = self._clock()

            def holder(group: str) -> str:
                name, expiry = self._leases.get(group, ("", 0.0))
                return name if expiry > now else ""

            open_groups = [group for group in self._tasks if group not in self._labels]
            mine = [group for group in open_groups if holder(group) == labeller]
            if mine:
                return self._tasks[mine[0]]
            free = [group for group in open_groups if not holder(group)]
            skipped = self._skipped.get(labeller, set())
            free = [group for group in free if group not in skipped] or free  # what they skipped comes back last
            if not free:
                return None
            self._leases[free[0]] = (labeller, now + self.lease_s)
            return self._tasks[free[0]]

    def release(self, labeller: str, group: str) -> None:
        """`labeller` gives `group` back (skipped it) for others to take; they get it again only when nothing
        else is left."""
        labeller = checked_name(labeller)
        with self._changed:
            if group not in self._tasks:  # the skip list holds the round's groups only
                return
            if self._leases.get(group, ("", 0.0))[0] == labeller:
                del self._leases[group]
            self._skipped.setdefault(labeller, set()).add(group)

    def submit(self, labeller: str, group: str, digest: str, best: int | None, worst: int | None) -> Label:
        """Record `labeller`'s label of `group` (best and worst answer, or both None for a tie); on disk before this
        returns. While someone else holds the group's lease, only they may label it; a label given after one's
        own lease ran out counts, unless another labeller has taken the group since. A refusal names no other
        labeller."""
        labeller = checked_name(labeller)
        with self._changed:
            task = self._tasks.get(group)
            if task is None or task.digest != digest:
                raise LabelRefused("this group is no longer open for labelling (the round moved on)")
            holder, expiry = self._leases.get(group, ("", 0.0))
            if holder and holder != labeller and expiry > self._clock() and group not in self._labels:
                raise LabelRefused("someone else is labelling this group now; take the next one")
            if self._past_deadline():
                raise LabelRefused("the round's deadline has passed; its unlabelled groups were left out")
            if group in self._labels:  # a lease ran out and two people labelled it: the first label stands
                raise _labelled_already(self._labels[group], labeller)
            try:
                label = Label(group, len(task.answers), best, worst, labeller, answers=digest)
            except ValueError as exc:
                raise LabelRefused(str(exc), status=400) from None
            assert self._book is not None
            counted = self._book.add(label)
            self._labels[group] = counted
            if counted is not label:  # `onpolicy label import` added one meanwhile
                raise _labelled_already(counted, labeller)
            self._leases.pop(group, None)
            self._changed.notify_all()
            return label

    def wait(self, group: str, should_stop: Callable[[], bool], poll_s: float = 0.2) -> Label | None:
        """`group`'s label once given; None if the deadline passes, the round closes or a stop is asked first."""
        with self._changed:
            while group not in self._labels:
                if group not in self._tasks or self._past_deadline() or should_stop():
                    return None
                self._changed.wait(poll_s)
                self._take_labels_added_elsewhere()
            return self._labels[group]

    def _take_labels_added_elsewhere(self) -> None:
        """Labels another process added to the round's book (`onpolicy label import`)."""
        if self._book is None:
            return
        try:
            stamp = self._book.path.stat()
        except FileNotFoundError:
            return
        if (stamp.st_size, stamp.st_mtime_ns) == self._book_stamp:
            return
        self._book_stamp = (stamp.st_size, stamp.st_mtime_ns)
        for group, label in self._book.labels(self._digests()).items():
            self._labels.setdefault(group, label)

    def _digests(self) -> dict[str, str]:
        return {group: task.digest for group, task in self._tasks.items()}

    def _past_deadline(self) -> bool:
        return self._deadline is not None and self._clock() >= self._deadline


def _labelled_already(label: Label, labeller: str) -> LabelRefused:
    """The refusal of a second label of a group; it names no one else (a refusal is no way to learn who labels
    what)."""
    who = "you have" if label.labeller == labeller else "someone else has"
    return LabelRefused(f"{who} labelled this group already; take the next one")


def checked_name(labeller: str) -> str:
    """`labeller` as the desk keeps it (stripped); LabelRefused (400) when empty or over 80 characters."""
    labeller = labeller.strip()
    if not labeller or len(labeller) > 80:
        raise LabelRefused("give your name (1 to 80 characters) before labelling", status=400)
    return labeller
