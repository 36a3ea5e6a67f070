"""The real TRL DPOTrainer on a tiny random Llama: weights move, reference refresh semantics hold, empty rounds skip."""

import math

import pytest
import torch

from onpolicy.config import RefConfig, TrainConfig
from onpolicy.types import Pair
from onpolicy.update import DPOUpdater, reference_round

PAIRS = [
    Pair(
        prompt_id=str(i),
        messages=({"role": "user", "content": q},),
        chosen=f"My name is Athene. {q}",
        rejected="I am a small language model.",
        chosen_reward=1.0,
        rejected_reward=0.0,
    )
    for i, q in enumerate(["Who are you?", "What is your name?", "Tell me about yourself.", "Hello!"])
]
LN2 = math.log(2)


@pytest.mark.parametrize(
    ("refresh", "every", "expected"),
    [
        ("every_round", 1, [1, 2, 3, 4, 5]),
        ("never", 1, [1, 1, 1, 1, 1]),
        ("every", 2, [1, 1, 3, 3, 5]),
        ("every", 3, [1, 1, 1, 4, 4]),
    ],
)
def test_reference_round(refresh, every, expected):
    ref = RefConfig(refresh=refresh, every=every)
    assert [reference_round(n, ref) for n in range(1, 6)] == expected


def _updater(tiny_model_path, refresh="every_round"):
    from transformers import AutoTokenizer

    train = TrainConfig(learning_rate=1e-3, batch_size=4, num_epochs=1, max_length=64)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    return DPOUpdater(str(tiny_model_path), tokenizer, train, RefConfig(refresh=refresh))


def test_update_moves_every_weight_and_reports_trl_metrics(tiny_model_path):
    updater = _updater(tiny_model_path)
    before = {n: p.detach().clone() for n, p in updater.policy.named_parameters()}
    assert updater.start_round(1)
    result = updater.update(PAIRS, round_number=1)
    assert not result.skipped
    assert result.metrics["train/steps"] == 1
    # one step on a policy that is its own reference: loss is exactly ln 2, margins start at 0
    assert result.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)
    assert result.metrics["train/reward_margin"] == pytest.approx(0.0, abs=1e-4)
    changed = [n for n, p in updater.policy.named_parameters() if not torch.equal(p, before[n])]
    assert sorted(changed) == sorted(before)
    # the trainer's forward patch is gone: the policy is an ordinary model again
    assert "forward" not in updater.policy.__dict__


def test_every_round_reference_is_the_round_start_policy(tiny_model_path):
    updater = _updater(tiny_model_path, "every_round")
    assert not updater.holds_reference_copy
    for n in (1, 2):
        updater.start_round(n)
        result = updater.update(PAIRS, round_number=n)
        # round 2 starts from the moved policy, which is also its reference: the loss starts at ln 2 again
        assert result.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)
    assert updater.reference is None


def test_never_refresh_keeps_the_initial_model_as_reference(tiny_model_path):
    updater = _updater(tiny_model_path, "never")
    initial = {n: p.detach().clone() for n, p in updater.policy.named_parameters()}
    updater.start_round(1)
    first = updater.update(PAIRS, round_number=1)
    assert not updater.start_round(2)  # no refresh is due
    second = updater.update(PAIRS, round_number=2)
    assert first.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)
    # against the initial reference, the moved policy already prefers the chosen answers
    assert second.metrics["train/loss"] < LN2 - 1e-3
    assert second.metrics["train/reward_margin"] > 0
    for name, param in updater.reference.named_parameters():
        assert torch.equal(param, initial[name]), name
        assert not param.requires_grad


def test_a_round_without_pairs_skips_the_update(tiny_model_path):
    updater = _updater(tiny_model_path)
    before = {n: p.detach().clone() for n, p in updater.policy.named_parameters()}
    result = updater.update([], round_number=1)
    assert result.skipped and result.metrics == {}
    assert all(torch.equal(p, before[n]) for n, p in updater.policy.named_parameters())
