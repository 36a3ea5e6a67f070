"""Built-in rule rewards, the import-path loader and weighted sums."""

import math
import textwrap

import pytest

from reward import (
    Failed,
    Needs,
    Response,
    RewardConfigError,
    RoundGroups,
    Term,
    WeightedSum,
    build_reward,
    builtin_names,
    register,
    reward_needs,
)
from reward.composite import normalized

PROMPT = {"id": "0", "prompt": "Who are you?", "category": "identity", "answer": "42"}


def test_builtins_are_registered():
    assert {"contains", "forbids", "length", "missing_eos", "exact_match", "reward_model", "judge"} <= set(
        builtin_names()
    )


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
        ("exact_match", {"extract": "first"}, "extract must be one of"),
        ("exact_match", {"pattern": "answer: .*"}, "needs a group"),
        ("reward_model", {"path": "/nowhere"}, "config.json not found"),
        ("judge", {"backend": "vllm"}, "needs model"),
        ("judge", {"backend": "openai", "model": "m"}, "needs base_url"),
        ("judge", {"rubric": "stars"}, "unknown rubric 'stars'"),
        ("judge", {"template": "Rate {response}", "score_pattern": "(\\d)", "score_range": [1, 5]}, "does not use"),
        ("judge", {"votes": 3, "temperature": 0}, "same answer"),
        ("judge", {"mode": "listwise"}, "pointwise or pairwise"),
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


def test_missing_eos_penalises_responses_cut_at_the_token_limit():
    reward = build_reward("missing_eos", {"penalty": -2.0})
    responses = [Response("It ends.", truncated=False), Response("It goes on and on", truncated=True), "plain"]
    assert reward.score_group(PROMPT, responses) == [0.0, -2.0, 0.0]


@pytest.mark.parametrize(
    ("args", "reference", "responses", "expected"),
    [
        ({}, "1,200", ["So it is 1200.", "First 3, then 1,200.0", "12", "no number"], [1, 1, 0, 0]),
        ({}, "-0.5", ["x = -.5", "x = 0.5"], [1, 0]),
        ({"extract": "boxed"}, "x^2", [r"\boxed{1} so \boxed{X^2}", r"\boxed{x}"], [1, 0]),
        ({"extract": "hashes"}, "7", ["8 apples\n#### 7", "#### 7\n#### 9"], [1, 0]),
        ({"pattern": r"Answer: (\w+)", "correct": 2.0, "wrong": -1.0}, "Paris", ["Answer: paris", "Paris"], [2, -1]),
        ({"pattern": r"is (\S+)"}, "inf", ["It is inf", "It is nan", "It is 1e999"], [1, 0, 0]),  # not numbers
        ({"pattern": r"is (\S+)"}, "4", ["It is inf", "It is nan"], [0, 0]),
    ],
)
def test_exact_match_compares_the_extracted_answer_with_the_reference(args, reference, responses, expected):
    reward = build_reward("exact_match", args)
    assert reward.score_group({**PROMPT, "answer": reference}, responses) == expected


def test_exact_match_without_a_reference_fails_instead_of_scoring_wrong():
    scores = build_reward("exact_match", {"field": "solution"}).score_group(PROMPT, ["42"])
    assert isinstance(scores[0], Failed) and scores[0].kind == "no_reference" and "solution" in scores[0].reason


def test_group_normalisation_rescales_each_term_before_weighting():
    assert normalized([1.0, 3.0, None, 5.0], "zscore") == pytest.approx([-1.2247449, 0.0, None, 1.2247449])
    assert normalized([2.0, 2.0, 9.0, None, 0.0], "rank") == [0.5, 0.5, 1.0, None, 0.0]
    assert normalized([4.0, 4.0], "zscore") == [0.0, 0.0]
    big = build_reward("length", {"target": 1, "unit": "chars"})  # scores in the hundreds
    small = build_reward("contains", {"words": ["yes"]})  # 0 or 1
    total = WeightedSum([Term(big, 1.0, "len", "rank"), Term(small, 1.0, "yes", "rank")])
    # Ranked, the two terms weigh the same: the short "yes" wins over the long one, the long "no" loses.
    scores = total.score_group(PROMPT, ["yes", "no" * 50, "yes " * 40])
    assert scores[0] > scores[2] > scores[1]


def test_weighted_sum_reports_term_means_and_agreement_between_terms():
    likes_yes = build_reward("contains", {"words": ["yes"]})
    likes_short = build_reward("length", {"target": 1})
    dislikes_yes = build_reward("forbids", {"words": ["yes"]})
    total = WeightedSum([Term(likes_yes, 1.0, "yes"), Term(likes_short, 1.0, "short"), Term(dislikes_yes, 1.0, "no")])
    total.score_group(PROMPT, ["yes", "no no no", "yes yes yes"])
    stats = total.take_stats()
    assert stats["yes/mean"] == pytest.approx(2 / 3)
    assert stats["agreement/yes~no"] == 0.0  # always opposite
    # "yes" vs "no no no": both prefer the first; "no no no" vs "yes yes yes": the yes term prefers the second,
    # the length term neither (tie, not counted); "yes" vs "yes yes yes": yes-term tie.
    assert stats["agreement/yes~short"] == 1.0
    assert total.take_stats() == {}  # taken: counters start again


def test_a_conditional_term_is_watched_only_on_the_prompts_it_applies_to():
    identity = Term(build_reward("contains", {"words": ["Athene"]}), 1.0, "name", when={"category": "identity"})
    total = WeightedSum([identity, Term(build_reward("length", {"target": 1}), 1.0, "short")])
    total.score_group(PROMPT, ["Athene", "I am someone"])  # an identity prompt
    total.score_group({**PROMPT, "category": "other"}, ["a", "b c"])  # the name term does not apply
    stats = total.take_stats()
    assert stats["name/mean"] == 0.5 and stats["short/mean"] == pytest.approx((0 - 2 + 0 - 1) / 4)
    assert stats["agreement/name~short"] == 1.0


def test_terms_with_the_same_label_are_refused():
    reward = build_reward("contains", {"words": ["a"]})
    with pytest.raises(RewardConfigError, match="distinct labels"):
        WeightedSum([(reward, 1.0), (reward, 2.0)])


def test_rewards_declare_what_they_need_from_the_job():
    assert reward_needs("contains", {"words": ["x"]}) == Needs()
    judge = reward_needs("judge", {})  # backend policy by default: the job's own engine
    assert judge.policy_engine and "backend: openai" in judge.engine_alternative
    assert reward_needs("judge", {"backend": "vllm", "model": "/m"}) == Needs(paths=("model",))
    assert reward_needs("reward_model", {"path": "/rm"}) == Needs(paths=("path",))
    assert reward_needs("reward_model", {"path": "/rm", "device": "cuda:1"}).gpu
    assert reward_needs("reward_model", {"path": "/rm", "engine": "server"}).servers  # one the job starts
    assert not reward_needs("reward_model", {"path": "/rm", "engine": "server", "url": "http://h:1"}).servers
    with pytest.raises(RewardConfigError, match="bad arguments"):
        reward_needs("judge", {"bakend": "policy"})


def test_user_code_declares_its_needs_and_gets_the_policy_engine_only_when_it_does(tmp_path):
    file = tmp_path / "engine_user.py"
    file.write_text(
        textwrap.dedent(
            """
            from reward import Needs

            class SelfJudge:
                name = "self_judge"
                needs = Needs(policy_engine=True)
                def __init__(self, policy_engine=None):
                    self.policy_engine = policy_engine
                def score_group(self, prompt, responses):
                    return [0.0] * len(responses)

            class Plain:
                name = "plain"
                def __init__(self, policy_engine="not handed"):
                    self.policy_engine = policy_engine
                def score_group(self, prompt, responses):
                    return [0.0] * len(responses)
            """
        )
    )
    engine = object()
    assert reward_needs(f"{file}:SelfJudge").policy_engine
    assert build_reward(f"{file}:SelfJudge", policy_engine=engine).policy_engine is engine
    assert build_reward(f"{file}:Plain", policy_engine=engine).policy_engine == "not handed"


def test_a_sum_shows_the_round_to_the_terms_that_need_people_and_closes_those_that_hold_something_open(tmp_path):
    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def score_group(self, prompt, responses):
            return [0.0] * len(responses)

        def prepare(self, round_groups):
            calls.append((self.name, "prepare", [group[0]["category"] for group in round_groups.groups]))

        def finish(self):
            calls.append((self.name, "finish"))

        def close(self):
            calls.append((self.name, "close"))

    people = Needs(people=True, close=True)
    total = WeightedSum(
        [
            Term(Recorder("page"), label="page", when={"category": "identity"}, needs=people),
            Term(Recorder("open"), label="open", needs=Needs(close=True)),
            Term(Recorder("plain"), label="plain"),  # has the methods, needs nothing: never called
        ]
    )
    groups = [({**PROMPT, "category": "identity"}, ["a"]), ({**PROMPT, "category": "other"}, ["b"])]
    total.prepare(RoundGroups(1, tmp_path, groups))
    total.finish()
    total.close()
    assert calls == [
        ("page", "prepare", ["identity"]),  # only the groups its `when` applies to
        ("page", "finish"),
        ("page", "close"),
        ("open", "close"),
    ]
    assert total.needs == Needs(people=True, close=True)


BATCHED = """
calls = []

def by_length(completions, prompts, unit=1):
    calls.append(len(completions))
    if "boom" in completions:
        raise ValueError("cannot score this batch")
    return [len(c) * unit if c != "odd" else "not a number" for c in completions]

by_length.batched = True
"""


def _groups(*answers):
    return [({**PROMPT, "id": str(n)}, list(responses)) for n, responses in enumerate(answers)]


def test_a_batched_user_function_scores_many_groups_in_one_call_and_its_failures_stay_per_response(tmp_path):
    import sys

    from reward import score_groups

    (tmp_path / "batched.py").write_text(BATCHED)
    reward = build_reward(f"{tmp_path / 'batched.py'}:by_length", {"unit": 2})
    groups = _groups(["a", "abc"], ["ab", "odd", "abcd"])
    scores = score_groups(reward, groups)
    assert scores[0] == [2.0, 6.0] and scores[1][0] == 4.0 and scores[1][2] == 8.0
    assert scores[1][1].kind == "invalid"
    assert sys.modules["reward_user_batched"].calls == [5]  # one call for both groups
    assert reward.score_group(PROMPT, ["abc"]) == [6.0]
    (tmp_path / "wrong.py").write_text("def f(completion):\n    return 1.0\nf.batched = True\n")
    with pytest.raises(RewardConfigError, match=r"marked batched, and cannot be called as f\(completions, prompts\)"):
        build_reward(f"{tmp_path / 'wrong.py'}:f")


def test_a_sum_of_terms_that_batch_scores_each_term_across_groups_as_it_would_one_group_at_a_time(tmp_path):
    from reward import score_groups

    class Counting:
        name = "counting"

        def __init__(self):
            self.batches = []

        def score_group(self, prompt, responses):
            return self.score_groups([(prompt, responses)])[0]

        def score_groups(self, groups):
            self.batches.append(len(groups))
            return [[float(len(r)) for r in responses] for _, responses in groups]

    groups = _groups(["I am Athene", "no"], ["x", "I am SmolLM"], ["Athene", "SmolLM", "both"])
    terms = lambda counting: [  # noqa: E731
        Term(build_reward("contains", {"words": ["Athene"]}), 2.0, normalize="rank"),
        Term(counting, 0.5, label="counting", normalize="zscore"),
        Term(build_reward("forbids", {"words": ["SmolLM"]}), 1.0, when={"id": "1"}),
    ]
    one_at_a_time = WeightedSum(terms(Counting()))
    expected = [one_at_a_time.score_group(prompt, responses) for prompt, responses in groups]
    counting = Counting()
    batched = WeightedSum(terms(counting))
    assert score_groups(batched, groups) == expected
    assert counting.batches == [3]
    assert batched.take_stats() == one_at_a_time.take_stats()


def test_the_loop_scores_a_round_in_chunks_and_a_batch_that_raises_is_scored_group_by_group(tmp_path):
    from onpolicy.scoring import SCORING_CHUNK_GROUPS
    from reward.guarded import guarded_batch

    class Picky:
        name = "picky"

        def __init__(self):
            self.batches = []

        def score_group(self, prompt, responses):
            if prompt["id"] == "1":
                raise RuntimeError("no")
            return [1.0] * len(responses)

        def score_groups(self, groups):
            self.batches.append(len(groups))
            return [self.score_group(prompt, responses) for prompt, responses in groups]

    picky = Picky()
    scores = guarded_batch(picky, _groups(["a"], ["b", "c"], ["d"]))
    assert picky.batches == [3]  # tried at once, then group by group
    assert scores[0] == [1.0] and scores[2] == [1.0]
    assert [s.kind for s in scores[1]] == ["error", "error"] and "RuntimeError: no" in scores[1][0].reason
    assert SCORING_CHUNK_GROUPS >= 32


def test_a_round_s_groups_reach_a_batching_reward_in_chunks_with_progress_per_group():
    from onpolicy.scoring import SCORING_CHUNK_GROUPS, score_sample_groups
    from onpolicy.types import PromptRecord, Sample, SampleGroup

    class Counting:
        name = "counting"

        def __init__(self):
            self.batches = []

        def score_group(self, prompt, responses):
            return [float(len(r)) for r in responses]

        def score_groups(self, groups):
            self.batches.append(len(groups))
            return [self.score_group(*group) for group in groups]

    class Advances:
        done = 0

        def advance(self, n=1):
            self.done += n

    count = SCORING_CHUNK_GROUPS + 6
    groups = [
        SampleGroup(
            PromptRecord(str(n), ({"role": "user", "content": "q"},)),
            (),
            tuple(Sample("x" * (n % 5 + i), (1,), (-0.1,), "stop") for i in range(2)),
        )
        for n in range(count)
    ]
    reward, progress = Counting(), Advances()
    scored, excluded, _ = score_sample_groups(reward, groups, progress)
    assert reward.batches == [SCORING_CHUNK_GROUPS, 6] and progress.done == count and not excluded
    assert [g.rewards for g in scored] == [(float(n % 5), float(n % 5 + 1)) for n in range(count)]
