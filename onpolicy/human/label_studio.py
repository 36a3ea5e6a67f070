"""Labelling a round in Label Studio instead of the page: `onpolicy label export` and `onpolicy label import`.

While a job waits for people's labels, the round's groups are on disk (`rounds/NNNN/label_groups.jsonl`).
`export` writes them as Label Studio tasks (JSON, one task per group: the chat turns and the answers as
`Paragraphs`), with the labeling config for them (two single `Choices`, the best and the worst answer, and a
third for "all equally good or bad"). `import` reads Label Studio's JSON export of those tasks and adds each
task's last submitted annotation to the round's labels: a waiting job takes them up at once, and a stopped one
when it resumes the round.
"""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

from onpolicy.errors import OnpolicyError
from onpolicy.human.labels import Label, LabelBook
from onpolicy.run.rundir import LABELS_FILE
from onpolicy.untrusted import parse_json

GROUPS_FILE = "label_groups.jsonl"  # in a round's folder: the groups put up for people, as the page shows them
EQUAL = "All equally good or bad"


def answer_name(index: int) -> str:
    return f"Answer {index + 1}"


def labeling_config(size: int) -> str:
    """The Label Studio labeling config for groups of `size` answers."""
    choices = "\n".join(f"    <Choice value={quoteattr(answer_name(i))}/>" for i in range(size))
    return f"""<View>
  <Header value="Prompt"/>
  <Paragraphs name="prompt" value="$messages" layout="dialogue" nameKey="role" textKey="content"/>
  <Header value="Answers"/>
  <Paragraphs name="answers" value="$answers" nameKey="author" textKey="text"/>
  <Header value="Best answer"/>
  <Choices name="best" toName="answers" choice="single" showInline="true">
{choices}
  </Choices>
  <Header value="Worst answer"/>
  <Choices name="worst" toName="answers" choice="single" showInline="true">
{choices}
  </Choices>
  <Choices name="equal" toName="answers" choice="single">
    <Choice value={quoteattr(EQUAL)}/>
  </Choices>
</View>
"""


def open_round(run_dir: pathlib.Path, round_number: int | None = None) -> int:
    """`round_number`, or the newest round whose groups were put up for people."""
    if round_number is not None:
        return round_number
    rounds = sorted(int(f.parent.name) for f in run_dir.glob(f"rounds/[0-9]*/{GROUPS_FILE}"))
    if not rounds:
        raise OnpolicyError(f"{run_dir}: no round has groups for people to label (is the reward `human`?)")
    return rounds[-1]


def read_groups(run_dir: pathlib.Path, round_number: int) -> list[dict[str, Any]]:
    file = run_dir / f"rounds/{round_number:04d}" / GROUPS_FILE
    if not file.is_file():
        raise OnpolicyError(f"{file} not found: round {round_number} has no groups for people to label")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise OnpolicyError(f"{file} is not UTF-8 text (byte {exc.start}); {_WRITTEN_BY_THE_JOB}") from None
    return [_group(line, f"{file}, line {n}") for n, line in enumerate(lines, start=1) if line.strip()]


_WRITTEN_BY_THE_JOB = "the job writes it as it puts the round up for people: restore it, or resume the job"


def _group(line: str, where: str) -> dict[str, Any]:
    """A line of a round's groups file: the group's key, the digest of its answers, its messages and answers."""
    try:
        group = parse_json(line, where)
    except json.JSONDecodeError as exc:
        raise OnpolicyError(f"{where}: not valid JSON ({exc.msg}); {_WRITTEN_BY_THE_JOB}") from None
    if not (
        isinstance(group, dict)
        and isinstance(group.get("group"), str)
        and isinstance(group.get("digest"), str)
        and isinstance(group.get("answers"), list)
        and all(isinstance(answer, dict) and isinstance(answer.get("text"), str) for answer in group["answers"])
    ):
        raise OnpolicyError(f"{where}: not a group (its group, digest and answers' text); {_WRITTEN_BY_THE_JOB}")
    return group


def export_tasks(run_dir: pathlib.Path, round_number: int | None = None, everything: bool = False) -> tuple[list, str]:
    """The Label Studio tasks of a round's groups still unlabelled (`everything`: all of them), and their
    labeling config."""
    round_number = open_round(run_dir, round_number)
    groups = read_groups(run_dir, round_number)
    labelled = _book(run_dir, round_number).labels({group["group"]: group["digest"] for group in groups})
    tasks = [
        {
            "data": {
                "round": round_number,
                "group": group["group"],
                "digest": group["digest"],
                "messages": group["messages"],
                "answers": [{"author": answer_name(i), "text": a["text"]} for i, a in enumerate(group["answers"])],
            }
        }
        for group in groups
        if everything or group["group"] not in labelled
    ]
    return tasks, labeling_config(max((len(g["answers"]) for g in groups), default=2))


def import_annotations(run_dir: pathlib.Path, exported: Sequence[Mapping[str, Any]]) -> tuple[int, list[str]]:
    """Add the labels of Label Studio's JSON export `exported` to their rounds; returns how many were added and
    why others were not (a task without a submitted annotation, one for answers no longer open, a group labelled
    already...). Every task is read before any label is written."""
    labels: list[tuple[int, Label]] = []
    skipped = []
    groups_of: dict[int, dict[str, dict[str, Any]]] = {}
    labelled_of: dict[int, dict[str, Label]] = {}
    for number, task in enumerate(exported, start=1):
        data = task.get("data", {}) if isinstance(task, Mapping) else {}
        ident = task.get("id") if isinstance(task, Mapping) else None
        where = f"task {ident}" if type(ident) is int else f"task {number} of the file"
        try:
            round_number = int(data["round"])
            group_key, digest = str(data["group"]), str(data["digest"])
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: a round of Infinity
            skipped.append(f"{where}: not a task `onpolicy label export` wrote (no round, group or digest)")
            continue
        if round_number not in groups_of:
            try:
                groups_of[round_number] = {g["group"]: g for g in read_groups(run_dir, round_number)}
            except OnpolicyError as exc:
                skipped.append(f"{where}: {exc}")
                continue
            digests = {key: group["digest"] for key, group in groups_of[round_number].items()}
            labelled_of[round_number] = _book(run_dir, round_number).labels(digests)
        group = groups_of[round_number].get(group_key)
        if group is None or group["digest"] != digest:
            skipped.append(f"{where}: round {round_number} holds other answers for group {group_key!r} now")
            continue
        if group_key in labelled_of[round_number]:
            skipped.append(f"{where}: group {group_key!r} of round {round_number} is labelled already")
            continue
        try:
            annotation = _last_submitted(task.get("annotations") or [])
            if annotation is None:
                skipped.append(f"{where}: no submitted annotation")
                continue
            label = _label(annotation, group_key, len(group["answers"]), digest)
        except ValueError as exc:
            skipped.append(f"{where}: {exc}")
            continue
        labelled_of[round_number][group_key] = label
        labels.append((round_number, label))
    added = 0
    for round_number, label in labels:
        if _book(run_dir, round_number).add(label) is label:
            added += 1
        else:  # given in the job's page since the book was read
            skipped.append(f"group {label.group!r} of round {round_number} was labelled meanwhile")
    return added, skipped


def _book(run_dir: pathlib.Path, round_number: int) -> LabelBook:
    return LabelBook(run_dir / f"rounds/{round_number:04d}" / LABELS_FILE)


def _last_submitted(annotations: Any) -> Mapping[str, Any] | None:
    if not isinstance(annotations, list) or not all(isinstance(a, Mapping) for a in annotations):
        raise ValueError("its annotations are not a list of Label Studio annotations")
    submitted = [a for a in annotations if not a.get("was_cancelled") and a.get("result")]
    return submitted[-1] if submitted else None


def _choices(result: Any) -> dict[str, list[str]]:
    """What an annotation's `result` picked in each Choices control (by its name); other regions are ignored."""
    if not isinstance(result, list) or not all(isinstance(region, Mapping) for region in result):
        raise ValueError("its annotation's result is not a list of Label Studio regions")
    choices = {}
    for region in result:
        if region.get("type") != "choices":
            continue
        value = region.get("value")
        picked = value.get("choices") if isinstance(value, Mapping) else None
        if not isinstance(region.get("from_name"), str) or not (
            isinstance(picked, list) and all(isinstance(choice, str) for choice in picked)
        ):
            raise ValueError("a choices region of its annotation has no control name or no list of choices")
        choices[region["from_name"]] = picked
    return choices


def _label(annotation: Mapping[str, Any], group: str, size: int, digest: str) -> Label:
    choices = _choices(annotation["result"])
    names = [answer_name(i) for i in range(size)]
    if EQUAL in choices.get("equal", []):
        best = worst = None
    else:
        picked = [choices.get(side, []) for side in ("best", "worst")]
        if not all(len(p) == 1 and p[0] in names for p in picked):
            raise ValueError("pick one best and one worst answer, or all equally good or bad")
        best, worst = (names.index(p[0]) for p in picked)
    return Label(group, size, best, worst, _labeller(annotation), _time(annotation), answers=digest)


def _labeller(annotation: Mapping[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("email") or who.get("id")
    return f"label-studio:{who}" if who is not None else "label-studio"


def _time(annotation: Mapping[str, Any]) -> float:
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    try:
        return datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return datetime.datetime.now().timestamp()
