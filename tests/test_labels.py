"""People's labels: kept as they are given, read back after a crash, turned into the pair they choose."""

import json

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
