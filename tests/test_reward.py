"""Built-in rule rewards, the import-path loader and weighted sums."""

import math
import textwrap

import pytest

from reward import Failed, RewardConfigError, WeightedSum, build_reward, builtin_names, register

PROMPT = {"id": "0", "prompt": "Who are you?", "category": "identity", "answer": "42"}


def test_builtins_are_registered():
    assert {"contains", "forbids", "length"} <= set(builtin_names())


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(RewardConfigError, match="registered already"):
        register("contains")(lambda: None)


def test_contains_matches_whole_words_case_insensitively_or_regexes():
    reward = build_reward("contains", {"words": ["Athene"], "score": 2.0})
    assert reward.score_group(PROMPT, ["I am athene.", "I am Atheneum.", "no"]) == [2.0, 0.0, 0.0]
    both = build_reward("contains", {"words": ["cat"], "patterns": [r"\d+"], "match": "all"})
    assert both.score_group(PROMPT, ["cat 3", "cat", "3"]) == [1.0, 0.0, 0.0]


def test_forbids_penalises_any_match():
    reward = build_reward("forbids", {"words": ["SmolLM", "Hugging Face"], "penalty": -0.5})
    assert reward.score_group(PROMPT, ["I am SmolLM", "made by hugging face", "I am Athene"]) == [-0.5, -0.5, 0.0]


def test_length_is_zero_on_target_and_minus_one_at_zero_or_double():
    reward = build_reward("length", {"target": 4})
    assert reward.score_group(PROMPT, ["a b c d", "", "a b c d e f g h", "a b"]) == [0.0, -1.0, -1.0, -0.5]


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("contain", {}, "unknown reward 'contain'"),
        ("contains", {}, "give at least one of words or patterns"),
        ("contains", {"words": "Athene"}, "lists of strings"),
        ("contains", {"wrods": ["x"]}, "bad arguments"),
        ("forbids", {"patterns": ["("]}, "bad regular expression"),
        ("length", {"target": 0}, "positive whole number"),
        ("no_such_module_xyz:f", {}, "cannot import module 'no_such_module_xyz'"),
        ("math:no_such_function", {}, "has no attribute 'no_such_function'"),
        ("/nowhere/rewards.py:f", {}, "reward file not found"),
    ],
)
def test_bad_reward_specs_say_what_is_wrong(name, args, message):
    with pytest.raises(RewardConfigError, match=message):
        build_reward(name, args)


def test_user_function_from_a_file_sees_completion_prompt_and_args(tmp_path):
    file = tmp_path / "my_rewards.py"
    file.write_text(
        textwrap.dedent(
            """
            def exact(completion, prompt, bonus=1.0):
                if completion == "boom":
                    raise ValueError("cannot score")
                if completion == "nan":
                    return float("nan")
                return bonus if completion.strip() == prompt["answer"] else 0.0
            """
        )
    )
    reward = build_reward(f"{file}:exact", {"bonus": 3.0})
    scores = reward.score_group(PROMPT, ["42", "41", "boom", "nan"])
    assert scores[:2] == [3.0, 0.0]
    assert scores[2] == Failed("raised ValueError: cannot score", "error")
    assert scores[3].kind == "nonfinite"


def test_user_function_with_the_wrong_signature_is_refused_before_any_run(tmp_path):
    file = tmp_path / "bad.py"
    file.write_text("def one_arg(completion):\n    return 1.0\n")
    with pytest.raises(RewardConfigError, match=r"cannot be called as one_arg\(completion, prompt\)"):
        build_reward(f"{file}:one_arg")


def test_user_class_is_a_group_reward(tmp_path):
    file = tmp_path / "ranker.py"
    file.write_text(
        textwrap.dedent(
            """
            class ByLength:
                name = "by_length"
                def __init__(self, sign=1):
                    self.sign = sign
                def score_group(self, prompt, responses):
                    return [self.sign * len(r) for r in responses]
            """
        )
    )
    reward = build_reward(f"{file}:ByLength", {"sign": -1})
    assert reward.score_group(PROMPT, ["ab", "abcd"]) == [-2, -4]


def test_weighted_sum_adds_weighted_terms_and_propagates_failures():
    contains = build_reward("contains", {"words": ["Athene"]})
    forbids = build_reward("forbids", {"words": ["SmolLM"]})

    class Flaky:
        name = "flaky"

        def score_group(self, prompt, responses):
            return [math.nan if r == "bad" else 0.5 for r in responses]

    total = WeightedSum([(contains, 2.0), (forbids, 1.0), (Flaky(), 0.5)])
    scores = total.score_group(PROMPT, ["I am Athene", "I am SmolLM", "Athene, not SmolLM", "bad"])
    assert scores[:3] == [2.25, -0.75, 1.25]
    assert scores[3].kind == "nonfinite" and scores[3].reason.startswith("flaky:")
