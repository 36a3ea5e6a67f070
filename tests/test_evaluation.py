"""Evaluation metrics over fixed greedy answers: a metric that fails on an answer leaves it out, counted."""

from onpolicy.config import EvalConfig
from onpolicy.evaluation import build_evaluator


class FixedAnswers:
    """Greedy answers given in advance (the engine's own greedy decoding is tested in test_generation)."""

    def __init__(self, answers):
        self.answers = answers

    def complete_greedy(self, records, max_new_tokens, progress=None):
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
    evaluator = build_evaluator(config)
    answers = {"a": "fine", "b": "boom", "c": "nan", "d": "it is inf"}
    results, rows = evaluator.run(FixedAnswers(answers))
    assert results["eval/picky"] == 1.0 and results["eval/picky_failed"] == 2
    assert rows[1]["picky_failure"] == "raised KeyError: 'no such field'"
    assert rows[2]["picky_failure"] == "returned nan"
    assert results["eval/exact"] == 0.0 and "eval/exact_failed" not in results  # "inf" is a word, not a crash
