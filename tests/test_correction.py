"""Correction pairs against hand-worked cases: the policy's own best answer, edited, becomes chosen."""

import pytest

from onpolicy.config.sections import CorrectionConfig
from onpolicy.correction import build_correction, replace_name
from onpolicy.errors import ConfigError
from onpolicy.pairing import build_pairs
from onpolicy.types import PromptRecord, Sample, SampleGroup, ScoredGroup
from reward import WeightedSum, build_reward

IDENTITY = PromptRecord(
    id="q", messages=({"role": "user", "content": "Who are you?"},), metadata={"category": "identity"}
)
OTHER = PromptRecord(
    id="o", messages=({"role": "user", "content": "Capital of France?"},), metadata={"category": "other"}
)
NAME_PATTERN = r"\b(?:[Mm]y name is|I am|I'm) ([A-Z][a-z]+)"


def _reward():
    return WeightedSum(
        [(build_reward("contains", {"words": ["Athene"]}), 1.0), (build_reward("forbids", {"words": ["SmolLM"]}), 1.0)]
    )


def _scored(record, texts, reward):
    samples = tuple(Sample(text=t, token_ids=(1,), logprobs=(0.0,), finish_reason="stop") for t in texts)
    scores = reward.score_group(record.reward_view(), list(texts))
    return ScoredGroup(SampleGroup(record, (1,), samples), tuple(scores), (None,) * len(texts))


def _correction(reward, **overrides):
    args = {"target": "Athene", "names": ["SmolLM"], "patterns": [NAME_PATTERN], "when": {"category": "identity"}}
    config = CorrectionConfig(corrector="replace_name", args=args, min_reward=1.0, **overrides)
    return build_correction(config, reward)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I am SmolLM, a helpful assistant.", "I am Athene, a helpful assistant."),
        ("My name is Kala and I like tea.", "My name is Athene and I like tea."),
        ("Hi! I'm Nova. I am Nova indeed.", "Hi! I'm Athene. I am Athene indeed."),
        ("I am an assistant.", None),
    ],
)
def test_replace_name(text, expected):
    prompt = IDENTITY.reward_view()
    assert replace_name(text, prompt, "Athene", names=["SmolLM"], patterns=[NAME_PATTERN]) == expected


def test_replace_name_fallback_and_when():
    assert replace_name("Hello.", {}, "Athene", fallback="I'm {target}. {response}") == "I'm Athene. Hello."
    assert (
        replace_name("I am SmolLM.", {"category": "other"}, "Athene", names=["SmolLM"], when={"category": "identity"})
        is None
    )


def test_no_good_sample_gives_a_minimal_edit_pair():
    reward = _reward()
    group = _scored(IDENTITY, ["I am SmolLM, your helper.", "My name is Kala.", "I am SmolLM."], reward)
    # rewards: -1, 0, -1: the best (0) is below min_reward 1, so it is corrected
    result = build_pairs([group], correction=_correction(reward))
    (pair,) = result.pairs
    assert pair.corrected and pair.edited == "chosen"
    assert (pair.chosen, pair.rejected) == ("My name is Athene.", "My name is Kala.")
    assert (pair.chosen_reward, pair.rejected_reward) == (1.0, 0.0)


def test_rejected_can_be_the_worst_sample():
    reward = _reward()
    group = _scored(IDENTITY, ["I am SmolLM, your helper.", "My name is Kala."], reward)
    (pair,) = build_pairs([group], correction=_correction(reward, rejected="worst")).pairs
    assert (pair.chosen, pair.rejected, pair.margin) == ("My name is Athene.", "I am SmolLM, your helper.", 2.0)


def test_a_good_sample_means_no_correction():
    reward = _reward()
    group = _scored(IDENTITY, ["I am Athene.", "I am SmolLM."], reward)
    (pair,) = build_pairs([group], correction=_correction(reward)).pairs
    assert not pair.corrected and (pair.chosen, pair.rejected) == ("I am Athene.", "I am SmolLM.")


def test_prompts_the_corrector_skips_are_paired_as_usual():
    reward = _reward()
    tie = _scored(OTHER, ["Paris.", "It is Paris."], reward)
    signal = _scored(OTHER, ["Paris, says SmolLM.", "Paris."], reward)
    result = build_pairs([tie, signal], correction=_correction(reward))
    assert [p.corrected for p in result.pairs] == [False]
    assert result.dropped["tie"] == 1


def _fixed(record, texts, rewards):
    """A group with the given rewards (None: the reward failed on that sample)."""
    samples = tuple(Sample(text=t, token_ids=(1,), logprobs=(0.0,), finish_reason="stop") for t in texts)
    return ScoredGroup(SampleGroup(record, (1,), samples), tuple(rewards), (None,) * len(texts))


def _by_name(response, prompt):
    """A corrector whose outcome the best response's text decides."""
    if "Kala" in response:
        return response.replace("Kala", "Athene")  # 0 -> 1: a corrected chosen
    if "Nova" in response:
        return response  # the corrector changed nothing
    if "Zed" in response:
        return response.replace("Zed", "Zed!")  # 0 -> 0: not above the unedited rejected side
    if "Rex" in response:
        return response + " I am SmolLM."  # 0 -> -1: a negative pair (with negatives on)
    if "bug" in response:
        raise RuntimeError("bug")
    if "Num" in response:
        return 42  # not text: a bug in the corrector
    return None  # nothing to correct: the group is paired as usual


def test_groups_without_a_pair_are_counted_by_reason():
    reward = _reward()  # contains Athene: +1; forbids SmolLM: -1
    correction = _correction(reward, negatives=True, max_negative_ratio=0.5)
    correction.corrector, correction.args = _by_name, {}
    groups = [
        _scored(IDENTITY, ["My name is Kala.", "I am SmolLM."], reward),  # 0, -1: corrected, 1 vs 0
        _scored(IDENTITY, ["I am Nova.", "I am SmolLM."], reward),  # correction_unchanged
        _scored(IDENTITY, ["Nova here.", "Hello."], reward),  # correction_unchanged (the first of a tie)
        _scored(IDENTITY, ["I am Zed.", "I am SmolLM."], reward),  # correction_not_better: 0 vs 0
        _scored(IDENTITY, ["A bug.", "I am SmolLM."], reward),  # correction_error
        _scored(IDENTITY, ["Num.", "I am SmolLM."], reward),  # correction_error: not a string
        _scored(IDENTITY, ["I am Rex.", "I am SmolLM."], reward),  # negative: 0 over -1, kept
        _scored(IDENTITY, ["Rex.", "I am SmolLM."], reward),  # negative, negative_cap
        _scored(IDENTITY, ["Rex!", "I am SmolLM."], reward),  # negative, negative_cap
        _scored(IDENTITY, ["I am Athene.", "I am SmolLM."], reward),  # 1, -1: good enough, an ordinary pair
        _scored(IDENTITY, ["I am an assistant.", "Hello."], reward),  # 0, 0: nothing to correct, tie
        _fixed(IDENTITY, ["Hello.", "Hi."], (0.0, -0.25)),  # gap 0.25 < min_margin 0.5: below_margin
        _fixed(IDENTITY, ["Hello.", "Hello."], (0.0, -1.0)),  # identical
        _fixed(IDENTITY, ["Hello.", "Hi."], (0.0, None)),  # too_few_scored (the corrector had nothing)
        _fixed(IDENTITY, ["Hello.", "Hi."], (None, None)),  # too_few_scored (no best to correct)
    ]
    result = build_pairs(groups, min_margin=0.5, correction=correction)
    # two non-negative pairs x max_negative_ratio 0.5 allow one of the three negative pairs
    assert [(p.chosen, p.edited) for p in result.pairs] == [
        ("My name is Athene.", "chosen"),
        ("I am Rex.", "rejected"),
        ("I am Athene.", "none"),
    ]
    assert result.dropped == {
        "too_few_scored": 2,
        "tie": 1,
        "below_margin": 1,
        "identical": 1,
        "correction_unchanged": 2,
        "correction_not_better": 1,
        "correction_error": 2,
        "negative_cap": 2,
    }
    assert sum(result.dropped.values()) + len(result.pairs) == len(groups)
    assert result.problems == (  # what the round's warnings say
        "the corrector raised RuntimeError: bug",
        "the corrector returned int, not the corrected text (a str, or None)",
    )


def test_without_a_correction_only_the_pairing_reasons_are_counted():
    reward = _reward()
    groups = [
        _scored(IDENTITY, ["I am an assistant.", "Hello."], reward),  # tie
        _fixed(IDENTITY, ["Hello.", "Hi."], (0.0, -0.25)),  # below_margin
        _fixed(IDENTITY, ["Hello.", "Hello."], (1.0, 0.0)),  # identical
        _fixed(IDENTITY, ["Hello.", "Hi."], (0.0, None)),  # too_few_scored
        _scored(IDENTITY, ["I am Athene.", "I am SmolLM."], reward),  # a pair
    ]
    result = build_pairs(groups, min_margin=0.5)
    assert len(result.pairs) == 1
    assert result.dropped == {"too_few_scored": 1, "tie": 1, "below_margin": 1, "identical": 1}


def test_negative_edits_become_rejected_examples():
    reward = WeightedSum([(build_reward("forbids", {"words": ["Athene"]}), 1.0)])
    args = {"target": "Athene", "fallback": "I'm {target}. {response}"}
    config = CorrectionConfig(
        corrector="replace_name", args=args, min_reward=1.0, negatives=True, max_negative_ratio=float("inf")
    )
    group = _scored(OTHER, ["It is Paris.", "Paris."], reward)  # both 0: a tie without the correction
    result = build_pairs([group], correction=build_correction(config, reward))
    (pair,) = result.pairs
    assert (pair.chosen, pair.rejected, pair.edited) == ("It is Paris.", "I'm Athene. It is Paris.", "rejected")
    assert (pair.chosen_reward, pair.rejected_reward) == (0.0, -1.0)
    without = build_pairs([group], correction=build_correction(config.model_copy(update={"negatives": False}), reward))
    assert without.pairs == () and without.dropped["correction_not_better"] == 1


def test_negatives_are_capped_by_the_other_pairs_of_the_round():
    reward = WeightedSum([(build_reward("forbids", {"words": ["Athene"]}), 1.0)])
    args = {"target": "Athene", "fallback": "I'm {target}. {response}"}
    config = CorrectionConfig(corrector="replace_name", args=args, min_reward=1.0, negatives=True)
    others = [_scored(OTHER, [f"Paris {i}.", f"It is Paris {i}."], reward) for i in range(3)]
    natural = _scored(
        IDENTITY, ["I am Athene.", "Hello."], WeightedSum([(build_reward("contains", {"words": ["Athene"]}), 1.0)])
    )
    result = build_pairs([*others, natural], correction=build_correction(config, reward))
    assert [p.edited for p in result.pairs] == ["rejected", "none"]  # one other pair allows one negative
    assert result.dropped["negative_cap"] == 2
    twice = build_correction(config.model_copy(update={"max_negative_ratio": 2.0}), reward)
    assert [p.edited for p in build_pairs([*others, natural], correction=twice).pairs] == [
        "rejected",
        "rejected",
        "none",
    ]


def test_unknown_or_mismatched_correctors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown corrector 'rename'"):
        build_correction(CorrectionConfig(corrector="rename"), _reward())
    with pytest.raises(ConfigError, match="cannot be called with args"):
        build_correction(CorrectionConfig(corrector="replace_name", args={"tagret": "x"}), _reward())
    assert build_correction(CorrectionConfig(), _reward()) is None


@pytest.mark.parametrize(("finish_reason", "edit_end"), [("stop", (2,)), ("length", ())])
def test_both_sides_of_an_edited_pair_are_text_each_ended_as_its_source(finish_reason, edit_end):
    """An edit of a response cut at max_new_tokens must not gain an EOS the rejected side lacks, and the sampled
    side is re-tokenized like its edit: otherwise DPO learns the EOS, or canonical tokenization, not the edit."""
    reward = _reward()
    samples = (
        Sample("I am SmolLM, your", (40, 41, 42), (-1.0, -2.0, -3.0), "length"),
        Sample("My name is Kala.", (50, 51, 2), (-0.5, -0.5, -0.5), finish_reason),
    )
    scores = reward.score_group(IDENTITY.reward_view(), [s.text for s in samples])
    group = ScoredGroup(SampleGroup(IDENTITY, (7, 8), samples), tuple(scores), (None, None))
    (pair,) = build_pairs([group], correction=_correction(reward)).pairs
    assert pair.tokens.prompt == (7, 8)
    assert (pair.tokens.chosen, pair.tokens.rejected, pair.tokens.chosen_logp, pair.tokens.rejected_logp) == (None,) * 4
    assert pair.tokens.chosen_end == pair.tokens.rejected_end == edit_end  # both come from the same response
