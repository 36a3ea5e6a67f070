"""Evaluation metrics over fixed greedy answers: a metric that fails on an answer leaves it out, counted."""

import pytest

from onpolicy.config import EvalConfig
from onpolicy.evaluation import build_evaluator, load_eval_prompts
from reward import Term, WeightedSum


class FixedAnswers:
    """Greedy answers given in advance (the engine's own greedy decoding is tested in test_generation)."""

    def __init__(self, answers):
        self.answers = answers

    def complete(self, records, max_new_tokens, progress=None, sampling=None):
        return [self.answers[r.prompt] for r in records]


def test_a_metric_that_raises_or_returns_nan_leaves_the_answer_out_and_counts_it(tmp_path):
    (tmp_path / "picky.py").write_text(
        "def score(completion, prompt):\n"
        "    if 'boom' in completion:\n"
        "        raise KeyError('no such field')\n"
        "    return float('nan') if 'nan' in completion else 1.0\n"
    )
    config = EvalConfig.model_validate(
        {
            "prompts": {"items": ["a", "b", "c", "d"]},
            "metrics": [
                {"name": "picky", "function": f"{tmp_path / 'picky.py'}:score"},
                {"name": "exact", "function": "exact_match", "args": {"pattern": "is (\\S+)", "field": "prompt"}},
            ],
        }
    )
    evaluator = build_evaluator(config, load_eval_prompts(config))
    answers = {"a": "fine", "b": "boom", "c": "nan", "d": "it is inf"}
    results, rows = evaluator.run(FixedAnswers(answers))
    assert results["eval/picky"] == 1.0 and results["eval/picky_failed"] == 2
    assert rows[1]["picky_failure"] == "raised KeyError: 'no such field'"
    assert rows[2]["picky_failure"] == "returned nan"
    assert results["eval/exact"] == 0.0 and "eval/exact_failed" not in results  # "inf" is a word, not a crash


def _comparing_evaluator(prompts, reward):
    config = EvalConfig.model_validate({"prompts": {"items": prompts}})
    return build_evaluator(config, load_eval_prompts(config), WeightedSum([Term(reward)]))


def test_answers_are_compared_with_the_initial_policy_s_under_a_reward_ties_counting_half():
    from reward import build_reward

    evaluator = _comparing_evaluator(["a", "b", "c", "d"], build_reward("length", {"target": 10, "unit": "chars"}))
    initial = {"a": "x" * 4, "b": "x" * 10, "c": "x" * 8, "d": "x" * 6}
    results, _ = evaluator.run(FixedAnswers(initial), initial=True)  # round 0: the initial policy against itself
    assert results["eval/win_rate"] == 0.5
    assert results["eval/reward"] == pytest.approx((-0.6 + 0.0 - 0.2 - 0.4) / 4)
    later = {"a": "x" * 9, "b": "x" * 13, "c": "x" * 12, "d": "x" * 6}  # closer, farther, as far, the same
    results, rows = evaluator.run(FixedAnswers(later))
    assert results["eval/win_rate"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert results["eval/reward"] == pytest.approx((-0.1 - 0.3 - 0.2 - 0.4) / 4)
    assert rows[0]["win"] == 1.0 and rows[0]["initial_reward"] == pytest.approx(-0.6)
    assert results["perf/eval_generate_s"] >= 0 and results["perf/eval_score_s"] >= 0


def test_a_resumed_evaluation_compares_with_round_0_s_answers_and_a_failing_reward_is_counted(tmp_path):
    from reward import build_reward

    (tmp_path / "picky.py").write_text("def score(completion, prompt):\n    return 1 / (len(completion) - 3)\n")
    evaluator = _comparing_evaluator(["a", "b"], build_reward(f"{tmp_path / 'picky.py'}:score"))
    evaluator.remember_initial([{"prompt_id": "0", "answer": "xxxxx"}, {"prompt_id": "1", "answer": "xxxxxx"}])
    results, rows = evaluator.run(FixedAnswers({"a": "xxxx", "b": "xxx"}))  # b divides by zero
    assert results["eval/win_rate"] == 1.0 and results["eval/reward"] == 1.0  # 1/1 against the initial 1/2
    assert results["eval/reward_failed"] == 1 and "ZeroDivisionError" in rows[1]["reward_failure"]


def test_only_the_run_said_to_be_the_initial_policy_s_is_remembered_as_it():
    from reward import build_reward

    evaluator = _comparing_evaluator(["a"], build_reward("length", {"target": 2, "unit": "chars"}))
    results, _ = evaluator.run(FixedAnswers({"a": "xx"}))  # not the initial policy: nothing to compare with
    assert "eval/win_rate" not in results and evaluator.initial_answers is None
    evaluator.run(FixedAnswers({"a": "x"}), initial=True)
    results, _ = evaluator.run(FixedAnswers({"a": "xx"}))
    assert results["eval/win_rate"] == 1.0


def test_kl_samples_are_drawn_from_the_eval_prompts_as_long_as_the_answers():
    config = EvalConfig.model_validate({"prompts": {"items": ["a", "b"]}, "max_new_tokens": 7})
    seen = []

    class Sampler:
        def sample(self, records, num_samples, max_new_tokens, progress=None):
            seen.append(([r.prompt for r in records], num_samples, max_new_tokens))
            return []

    build_evaluator(config, load_eval_prompts(config)).sample(Sampler(), 3)
    assert seen == [(["a", "b"], 3, 7)]
