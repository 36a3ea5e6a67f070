"""Pair diagnostics: a planted shortcut is found and named once; clean pairs stay quiet."""

import random

from onpolicy.diagnostics import diagnose_pairs, find_shortcut
from onpolicy.types import Pair

TOPICS = ["the weather", "a recipe", "the river", "my garden", "a short trip", "the old bridge", "music", "a book"]


def _pair(i, chosen, rejected, prompt_id=None):
    return Pair(str(prompt_id if prompt_id is not None else i), ({"role": "user", "content": "hi"},), chosen,
                rejected, 1.0, 0.0)  # fmt: skip


def _answers(rng, n):
    """Varied answers that no single word separates."""
    return [f"I think {rng.choice(TOPICS)} is {rng.choice(['nice', 'fine', 'long', 'quiet'])} today." for _ in range(n)]


def test_a_word_in_every_chosen_and_no_rejected_answer_is_named_as_a_shortcut():
    rng = random.Random(0)
    chosen = [f"{a} Athene says so." for a in _answers(rng, 20)]
    rejected = _answers(rng, 20)
    diagnostics = diagnose_pairs([_pair(i, c, r) for i, (c, r) in enumerate(zip(chosen, rejected))])
    assert diagnostics.shortcut.ngram == "athene" and diagnostics.metrics["pairs/shortcut_gap"] == 1.0
    assert diagnostics.metrics["pairs/shortcut_flagged"] == 1.0
    [warning] = diagnostics.warnings(previous=None)
    assert warning.startswith("pairs/shortcut: 'athene' is in 100% of chosen answers and 0% of rejected ones")
    # said once: the next round, still beyond the threshold, stays quiet
    assert diagnostics.warnings(previous=diagnostics.metrics) == []


def test_a_word_only_rejected_answers_carry_is_a_shortcut_too():
    rng = random.Random(1)
    shortcut = find_shortcut(_answers(rng, 10), [f"{a} As SmolLM, I" for a in _answers(rng, 10)])
    assert (shortcut.ngram, shortcut.chosen_share, shortcut.rejected_share) == ("smollm", 0.0, 1.0)


def test_clean_pairs_stay_quiet():
    rng = random.Random(2)
    chosen, rejected = _answers(rng, 40), _answers(rng, 40)
    diagnostics = diagnose_pairs([_pair(i, c, r) for i, (c, r) in enumerate(zip(chosen, rejected))])
    assert diagnostics.metrics["pairs/shortcut_flagged"] == 0.0 and diagnostics.metrics["pairs/shortcut_gap"] < 0.5
    assert 0.8 < diagnostics.metrics["pairs/length_ratio"] < 1.25
    assert diagnostics.warnings(previous=None) == []


def test_few_pairs_never_warn_of_a_shortcut():
    pairs = [_pair(i, "Athene here.", "Hello.") for i in range(4)]
    assert diagnose_pairs(pairs).metrics["pairs/shortcut_flagged"] == 0.0


def test_length_duplicates_and_corrections_are_measured_and_warned_once():
    pairs = [_pair(i, "A long, careful and complete answer." * 2, "Short.", prompt_id=i % 5) for i in range(10)]
    pairs[0] = Pair("0", pairs[0].messages, "Fixed answer that is long enough.", "Short.", 1.0, 0.0, "chosen")
    diagnostics = diagnose_pairs(pairs)
    metrics = diagnostics.metrics
    assert metrics["pairs/length_ratio"] > 5 and metrics["pairs/corrected_share"] == 0.1
    assert metrics["pairs/duplicates"] == 4.0  # prompts 1-4 appear twice with the same sides; prompt 0 differs
    warnings = diagnostics.warnings(previous=None)
    assert any(w.startswith("pairs/length_ratio: chosen answers are ") for w in warnings)
    assert any(w.startswith("pairs/duplicates: 4 pairs repeat another pair") for w in warnings)
    assert not any("length_ratio" in w for w in diagnostics.warnings(previous=metrics))
    assert diagnose_pairs([]).metrics == {}
