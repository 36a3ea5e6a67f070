"""The `reward_model` backend with a real (tiny, random) sequence-classification checkpoint saved to disk."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reward import RewardConfigError, build_reward
from tests.tiny_model import build_tiny_reward_model

PROMPT = {"id": "q", "prompt": "Who are you?", "messages": [{"role": "user", "content": "Who are you?"}]}
RESPONSES = ["I am Athene.", "I am a small model made to help.", "Hello", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def reward_model_path(tmp_path_factory):
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"))


def _direct_scores(path, responses):
    """What the checkpoint says, one conversation at a time, through its own chat template."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    scores = []
    for response in responses:
        text = tokenizer.apply_chat_template(
            [*PROMPT["messages"], {"role": "assistant", "content": response}], tokenize=False
        )
        assert text.startswith("[USER] Who are you?") and text.endswith("[END]")  # the reward model's template
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            scores.append(model(input_ids=ids).logits[0, 0].item())
    return scores


def test_scores_match_the_checkpoint_read_through_its_own_template_in_any_batch_size(reward_model_path):
    expected = _direct_scores(reward_model_path, RESPONSES)
    for batch_size in (1, 3):
        reward = build_reward("reward_model", {"path": str(reward_model_path), "batch_size": batch_size})
        assert reward.score_group(PROMPT, RESPONSES) == pytest.approx(expected, abs=1e-4)
        stats = reward.take_stats()
        assert stats["calls"] == -(-len(RESPONSES) // batch_size) and stats["scored"] == len(RESPONSES)
        assert stats["tokens"] > 0 and "truncated" not in stats
    assert len(set(round(x, 4) for x in expected)) > 1  # a real model: different texts, different scores


def test_long_conversations_keep_their_end_and_are_counted_as_truncated(reward_model_path):
    reward = build_reward("reward_model", {"path": str(reward_model_path), "max_length": 40})
    scores = reward.score_group(PROMPT, ["word " * 50, "ok"])
    assert all(isinstance(s, float) for s in scores)
    assert reward.take_stats()["truncated"] == 1
    assert reward.token_ids(PROMPT, "x " * 50)[-3:] == reward.token_ids(PROMPT, "y " + "x " * 50)[-3:]


def test_a_causal_lm_folder_is_refused_as_a_reward_model(tiny_model_path, tmp_path):
    with pytest.raises(RewardConfigError, match="LlamaForCausalLM.*not a \\*ForSequenceClassification"):
        build_reward("reward_model", {"path": str(tiny_model_path)})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(RewardConfigError, match="unknown architecture"):
        build_reward("reward_model", {"path": str(tmp_path)})
