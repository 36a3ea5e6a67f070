"""People's labels: kept as they are given, read back after a crash, turned into the pair they choose."""

import json
import re

import pytest

from onpolicy.errors import OnpolicyError
from onpolicy.human.labels import Label, LabelBook


def test_a_label_scores_its_best_against_its_worst_and_a_tie_makes_no_pair():
    assert Label("p1", 4, best=2, worst=0, labeller="ana").scores() == [0.0, 0.5, 1.0, 0.5]
    assert Label("p1", 3, best=None, worst=None, labeller="ana").scores() == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("best", "worst", "message"),
    [(1, None, "both the best and the worst"), (1, 1, "must differ"), (4, 0, "numbered 0 to 3")],
)
def test_a_label_that_names_no_pair_is_refused(best, worst, message):
    with pytest.raises(ValueError, match=message):
        Label("p1", 4, best=best, worst=worst, labeller="ana")


def test_labels_are_kept_as_given_the_first_counts_and_a_torn_last_line_is_ignored(tmp_path):
    book = LabelBook(tmp_path / "rounds/0001/labels.jsonl")
    assert book.labels() == {}
    book.add(Label("p1", 4, best=0, worst=3, labeller="ana", time=1.0, answers="a1"))
    book.add(Label("p2", 4, best=None, worst=None, labeller="ben", time=2.0, answers="a2"))
    first = book.labels()["p1"]
    assert book.add(Label("p1", 4, best=1, worst=3, labeller="ben", time=3.0, answers="a1")) == first  # not taken
    assert book.add(Label("p1", 4, best=1, worst=3, labeller="ben", time=3.0, answers="b1")).answers == "b1"  # others
    with open(book.path, "a") as f:
        f.write('{"group": "p3", "size": 4, "be')  # a crash while writing
    labels = LabelBook(book.path).labels()  # read back, as a resumed job does
    assert labels["p1"] == Label("p1", 4, best=0, worst=3, labeller="ana", time=1.0, answers="a1")
    assert labels["p2"].tie and labels["p2"].labeller == "ben" and "p3" not in labels
    book.add(
        Label("p3", 4, best=2, worst=1, labeller="ana", time=4.0, answers="a3")
    )  # labelling goes on after the crash
    assert book.path.read_text().count("\n") == 4 and LabelBook(book.path).labels()["p3"].best == 2  # p1 a1, b1
    # only labels of the answers a round holds now: p2 was sampled again, differently
    assert set(book.labels({"p1": "a1", "p2": "other answers", "p3": "a3"})) == {"p1", "p3"}


def test_a_damaged_label_before_the_last_line_stops_with_its_line(tmp_path):
    book = LabelBook(tmp_path / "labels.jsonl")
    book.add(Label("p1", 2, best=0, worst=1, labeller="ana"))
    good = book.path.read_text()
    bad = json.dumps({"group": "p2", "size": 2, "best": 0, "worst": 0, "labeller": "ana", "time": 1.0})
    book.path.write_text(bad + "\n" + good)
    with pytest.raises(OnpolicyError, match=r"labels.jsonl, line 1: not a label \(group p2: .* must differ\)"):
        book.labels()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[" * 3000 + "]" * 3000, r"line 1: not a label \(the line: nested deeper than 100 levels"),
        ('{"group": ["p2"], "size": 2, "best": null, "worst": null, "labeller": "x"}', r"line 1: not a label \(group"),
        ('{"group": "p2", "size": "2", "best": null, "worst": null, "labeller": "x"}', r"its size by number"),
        ('{"group": "p2", "size": 2, "best": null, "worst": null, "labeller": 5}', r"the labeller's name is not text"),
    ],
)
def test_a_label_line_of_another_shape_stops_with_its_line(tmp_path, line, message):
    book = LabelBook(tmp_path / "labels.jsonl")
    book.path.write_text(line + "\n")
    with pytest.raises(OnpolicyError, match=message):
        book.labels({"p2": ""})


def test_a_labeller_name_no_file_can_hold_is_refused_not_written_half():
    with pytest.raises(ValueError, match=r"the labeller's name is not text \('ana\\ud800'\)"):
        Label("p1", 2, best=0, worst=1, labeller="ana\ud800")


# ---- Label Studio exports of another shape ----


def _round_put_up(run_dir):
    """A round waiting for people, as the job writes it: group q1 of three answers."""
    from onpolicy.human.label_studio import GROUPS_FILE

    answers = [{"text": t} for t in ("a", "b", "c")]
    group = {"group": "q1", "digest": "d1", "messages": [{"role": "user", "content": "Q?"}], "answers": answers}
    (run_dir / "rounds/0001").mkdir(parents=True)
    (run_dir / "rounds/0001" / GROUPS_FILE).write_text(json.dumps(group) + "\n")


def _task(annotations, **data):
    return {"id": 7, "data": {"round": 1, "group": "q1", "digest": "d1", **data}, "annotations": annotations}


def _choice(name, *picked):
    return {"from_name": name, "to_name": "answers", "type": "choices", "value": {"choices": list(picked)}}


GOOD = [{"result": [_choice("best", "Answer 1"), _choice("worst", "Answer 2")], "completed_by": 3}]


@pytest.mark.parametrize(
    ("task", "reason"),
    [
        (_task({"result": []}), "its annotations are not a list of Label Studio annotations"),
        (_task(["annotation"]), "its annotations are not a list of Label Studio annotations"),
        (_task([{"result": {"best": "Answer 1"}}]), "its annotation's result is not a list of Label Studio regions"),
        (_task([{"result": ["best"]}]), "its annotation's result is not a list of Label Studio regions"),
        (_task([{"result": [{"from_name": "best", "type": "choices"}]}]), "has no control name or no list of choices"),
        (_task([{"result": [{**_choice("best"), "value": "Answer 1"}]}]), "no control name or no list of choices"),
        (_task([{"result": [{**_choice("best"), "value": {"choices": 5}}]}]), "no list of choices"),
        (_task([{"result": [{**_choice("best"), "value": {"choices": [1]}}]}]), "no list of choices"),
        (_task([{"result": [{**_choice("best", "Answer 1"), "from_name": ["best"]}]}]), "has no control name"),
        (_task(GOOD, round=float("inf")), "not a task `onpolicy label export` wrote"),
        (_task([{**GOOD[0], "completed_by": {"email": "ana\ud800"}}]), "the labeller's name is not text"),
        ({"id": "seven\ud800", "data": [], "annotations": GOOD}, "not a task `onpolicy label export` wrote"),
    ],
)
def test_label_studio_results_of_another_shape_skip_their_task_with_the_reason(tmp_path, task, reason):
    from onpolicy.human.label_studio import import_annotations

    _round_put_up(tmp_path)
    added, skipped = import_annotations(tmp_path, [task])
    assert added == 0 and len(skipped) == 1 and reason in skipped[0]
    assert skipped[0].encode("utf-8")  # printable: an id no terminal can show is not quoted
    assert import_annotations(tmp_path, [_task(GOOD)]) == (1, [])  # the good one still goes in


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 3000 + "]" * 3000, r"export.json: nested deeper than 100 levels"),
        (b"\xff\xfe[]", r"export.json is not JSON \('utf-8' codec can't decode"),
        ("{}", r"expected Label Studio's JSON export, a list of tasks"),
    ],
)
def test_a_label_studio_file_of_another_shape_is_refused_in_one_line(tmp_path, capsys, content, message):
    from onpolicy.cli import main

    _round_put_up(tmp_path)
    file = tmp_path / "export.json"
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["label", "import", str(tmp_path), str(file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err)
    assert main(["label", "import", str(tmp_path), str(tmp_path)]) == 2  # a folder
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "line",
    ["{not json", "[1]", '{"group": "q1", "digest": "d1", "answers": [1]}', '{"group": "q1", "answers": []}'],
)
def test_a_round_s_groups_file_edited_into_something_else_is_named_by_export_and_import(tmp_path, capsys, line):
    from onpolicy.cli import main
    from onpolicy.human.label_studio import GROUPS_FILE, import_annotations

    _round_put_up(tmp_path)
    (tmp_path / "rounds/0001" / GROUPS_FILE).write_text(line + "\n")
    assert main(["label", "export", str(tmp_path)]) == 2
    assert f"{GROUPS_FILE}, line 1: not " in capsys.readouterr().err
    (skipped,) = import_annotations(tmp_path, [_task(GOOD)])[1]
    assert f"{GROUPS_FILE}, line 1: not " in skipped
