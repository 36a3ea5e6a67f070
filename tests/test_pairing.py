"""Pairing and scoring against hand-worked numbers: ties, margins, failed and NaN rewards, an empty round."""

import math

import pytest

from onpolicy.pairing import build_pairs, group_pairs
from onpolicy.scoring import score_sample_groups
from onpolicy.types import PromptRecord, Sample, SampleGroup, ScoredGroup
from reward import Failed

RECORD = PromptRecord(id="p1", messages=({"role": "user", "content": "Who are you?"},), metadata={"category": "id"})


def _group(texts):
    samples = tuple(Sample(text=t, token_ids=(1,), logprobs=(-0.5,), finish_reason="stop") for t in texts)
    return SampleGroup(record=RECORD, prompt_token_ids=(1, 2), samples=samples)


def _scored(rewards, texts=None):
    texts = texts or [f"answer {i}" for i in range(len(rewards))]
    return ScoredGroup(group=_group(texts), rewards=tuple(rewards), failures=(None,) * len(rewards))


def test_best_is_chosen_and_worst_rejected():
    (pair,), reason = group_pairs(_scored([0.2, 1.5, -0.7, 0.9]))
    assert reason is None
    assert (pair.chosen, pair.rejected) == ("answer 1", "answer 2")
    assert (pair.chosen_reward, pair.rejected_reward) == (1.5, -0.7)
    assert pair.margin == pytest.approx(2.2)
    assert pair.prompt_id == "p1" and pair.messages == RECORD.messages


def test_first_of_equal_rewards_wins_on_both_sides():
    (pair,), _ = group_pairs(_scored([1.0, 0.0, 1.0, 0.0]))
    assert (pair.chosen, pair.rejected) == ("answer 0", "answer 1")


@pytest.mark.parametrize(
    ("rewards", "min_margin", "reason"),
    [
        ([0.5, 0.5, 0.5], 0.0, "tie"),
        ([1.0, 1.0], 0.5, "tie"),
        ([0.0, 0.4], 0.5, "below_margin"),
        ([None, 1.0, None], 0.0, "too_few_scored"),
        ([None, None], 0.0, "too_few_scored"),
    ],
)
def test_groups_without_a_usable_gap_are_dropped_with_their_reason(rewards, min_margin, reason):
    assert group_pairs(_scored(rewards), min_margin) == ([], reason)


def test_a_gap_equal_to_the_margin_is_kept():
    (pair,), reason = group_pairs(_scored([0.0, 0.5]), min_margin=0.5)
    assert reason is None and pair.margin == 0.5


def test_failed_samples_are_left_out_of_the_ranking():
    # the NaN-scored sample would be "best" or "worst" if it were not excluded
    (pair,), _ = group_pairs(_scored([None, 0.3, 0.1, None]))
    assert (pair.chosen, pair.rejected) == ("answer 1", "answer 2")


def test_same_text_scored_differently_gives_no_pair():
    assert group_pairs(_scored([1.0, 0.0], texts=["same", "same"])) == ([], "identical")


def test_build_pairs_counts_every_drop_reason():
    groups = [_scored([1.0, 0.0]), _scored([0.3, 0.3]), _scored([0.1, 0.2]), _scored([None, 2.0]), _scored([3.0, 0.0])]
    result = build_pairs(groups, min_margin=0.5)
    assert [p.margin for p in result.pairs] == [1.0, 3.0]
    assert result.dropped == {"too_few_scored": 1, "tie": 1, "below_margin": 1, "identical": 0}


def test_an_empty_round_has_no_pairs_and_no_drops():
    result = build_pairs([])
    assert result.pairs == () and sum(result.dropped.values()) == 0


class _Table:
    """A reward that returns fixed values per response text (or raises on a given prompt)."""

    name = "table"

    def __init__(self, values, raise_on=None):
        self.values, self.raise_on = values, raise_on

    def score_group(self, prompt, responses):
        if prompt["id"] == self.raise_on:
            raise RuntimeError("judge unreachable")
        return [self.values[r] for r in responses]


def test_scoring_excludes_and_counts_nan_inf_failed_and_non_numbers():
    values = {"a": 1.0, "b": math.nan, "c": math.inf, "d": Failed("unparsable answer", "unparsable"), "e": "7", "f": 2}
    scored, excluded, messages = score_sample_groups(_Table(values), [_group(list(values))])
    assert scored[0].rewards == (1.0, None, None, None, None, 2.0)
    assert dict(excluded) == {"nonfinite": 2, "unparsable": 1, "invalid": 1}
    assert scored[0].failures[3] == "unparsable answer"
    assert any("nonfinite" in m and "returned nan" in m for m in messages)


def test_a_reward_that_raises_excludes_that_group_only():
    other = PromptRecord(id="p2", messages=RECORD.messages)
    groups = [_group(["a", "f"]), SampleGroup(record=other, prompt_token_ids=(1,), samples=_group(["a", "f"]).samples)]
    scored, excluded, messages = score_sample_groups(_Table({"a": 1.0, "f": 0.0}, raise_on="p1"), groups)
    assert scored[0].rewards == (None, None) and scored[1].rewards == (1.0, 0.0)
    assert dict(excluded) == {"error": 2}
    assert "RuntimeError: judge unreachable" in messages[0]


def test_rewards_see_the_prompt_record_with_its_metadata():
    seen = []

    class Spy:
        name = "spy"

        def score_group(self, prompt, responses):
            seen.append(prompt)
            return [0.0] * len(responses)

    score_sample_groups(Spy(), [_group(["x"])])
    assert seen[0]["category"] == "id" and seen[0]["prompt"] == "Who are you?" and seen[0]["id"] == "p1"


def _scored_lengths(rewards, lengths):
    samples = tuple(
        Sample(text=f"answer {i}", token_ids=(1,) * n, logprobs=(-0.5,) * n, finish_reason="stop")
        for i, n in enumerate(lengths)
    )
    group = SampleGroup(record=RECORD, prompt_token_ids=(1, 2), samples=samples)
    return ScoredGroup(group=group, rewards=tuple(rewards), failures=(None,) * len(rewards))


def test_max_random_faces_the_best_with_a_seeded_sample_below_it_by_the_margin():
    from onpolicy.pairing import Selection, group_pairs

    group = _scored([0.2, 1.5, -0.7, 0.9, 1.4])
    drawn = set()
    for seed in range(40):
        (pair,), reason = group_pairs(group, min_margin=0.5, selection=Selection("max_random", seed=seed))
        assert reason is None and pair.chosen == "answer 1"
        drawn.add(pair.rejected)
        again, _ = group_pairs(group, min_margin=0.5, selection=Selection("max_random", seed=seed))
        assert again[0].rejected == pair.rejected  # the same round draws the same (a resumed run too)
    assert drawn == {"answer 0", "answer 2", "answer 3"}  # 1.4 is within the margin of 1.5


def test_all_above_margin_pairs_every_two_samples_far_enough_apart():
    from onpolicy.pairing import Selection, group_pairs

    pairs, reason = group_pairs(_scored([0.0, 1.0, 2.0, 2.2]), 1.0, Selection("all_above_margin"))
    assert reason is None
    assert sorted((p.chosen, p.rejected) for p in pairs) == [
        ("answer 1", "answer 0"),
        ("answer 2", "answer 0"),
        ("answer 2", "answer 1"),
        ("answer 3", "answer 0"),
        ("answer 3", "answer 1"),
    ]
    result = build_pairs(
        [_scored([0.0, 1.0, 2.0, 2.2]), _scored([1.0, 1.0])], 1.0, selection=Selection("all_above_margin")
    )
    assert len(result.pairs) == 5 and result.dropped["tie"] == 1


def test_a_length_penalty_chooses_the_sides_by_reward_minus_length_and_keeps_the_true_rewards():
    from onpolicy.pairing import Selection, group_pairs

    group = _scored_lengths([1.0, 0.9, 0.0], lengths=[50, 10, 12])
    (plain,), _ = group_pairs(group)
    assert (plain.chosen, plain.rejected) == ("answer 0", "answer 2")
    (penalised,), _ = group_pairs(group, selection=Selection(length_penalty=0.01))  # 0.5, 0.8, -0.12
    assert (penalised.chosen, penalised.rejected) == ("answer 1", "answer 2")
    assert (penalised.chosen_reward, penalised.rejected_reward) == (0.9, 0.0)


def test_best_and_worst_is_the_selection_pairing_uses():
    group = _scored([0.3, None, 1.0, 0.3, 1.0, -0.2])
    assert group.best_and_worst() == ((2, 1.0), (5, -0.2))  # the first of equals, the failed sample left out
    (pair,), _ = group_pairs(group)
    assert (pair.chosen, pair.rejected) == ("answer 2", "answer 5")
    penalised = _scored_lengths([1.0, 0.9, 0.0], lengths=[50, 10, 12])
    (best, best_score), (worst, worst_score) = penalised.best_and_worst(length_penalty=0.01)
    assert (best, worst) == (1, 2) and (best_score, worst_score) == pytest.approx((0.8, -0.12))
