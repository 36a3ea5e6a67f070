"""The `reward_model` backend with a real (tiny, random) sequence-classification checkpoint saved to disk."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reward import RewardConfigError, build_reward
from reward.servers import ModelServers

PROMPT = {"id": "q", "prompt": "Who are you?", "messages": [{"role": "user", "content": "Who are you?"}]}
RESPONSES = ["I am Athene.", "I am a small model made to help.", "Hello", "Paris is the capital of France."]


def _conversation_ids(tokenizer, response):
    """The whole conversation in the reward model's own chat template, uncut."""
    text = tokenizer.apply_chat_template(
        [*PROMPT["messages"], {"role": "assistant", "content": response}], tokenize=False
    )
    assert text.startswith("[USER] Who are you?") and text.endswith("[END]")  # the reward model's template
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _direct_scores(path, responses):
    """What the checkpoint says in float32 on the CPU, one conversation at a time, through its own chat
    template."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    scores = []
    for response in responses:
        ids = torch.tensor([_conversation_ids(tokenizer, response)])
        with torch.inference_mode():
            scores.append(model(input_ids=ids).logits[0, 0].float().cpu().item())
    return scores


def test_scores_match_the_checkpoint_read_through_its_own_template_in_any_batch_size(tiny_reward_model_path):
    expected = _direct_scores(tiny_reward_model_path, RESPONSES)
    for batch_size in (1, 3):
        # float32 pinned: `dtype: auto` is bfloat16 on a GPU, whose scores are ~1e-3 off a float32 read. The device
        # stays `auto`: float32 on a GPU and on the CPU agree well within the bound.
        args = {"path": str(tiny_reward_model_path), "batch_size": batch_size, "dtype": "float32"}
        reward = build_reward("reward_model", args)
        scores = reward.score_group(PROMPT, RESPONSES)
        assert all(type(s) is float for s in scores)  # plain numbers, wherever the model ran
        assert scores == pytest.approx(expected, abs=1e-4)
        stats = reward.take_stats()
        assert stats["calls"] == -(-len(RESPONSES) // batch_size) and stats["scored"] == len(RESPONSES)
        assert stats["tokens"] > 0 and "truncated" not in stats
    assert len(set(round(x, 4) for x in expected)) > 1  # a real model: different texts, different scores


def test_a_round_scored_at_once_is_batched_across_groups_with_the_scores_of_one_group_at_a_time(
    tiny_reward_model_path,
):
    from reward import score_groups

    prompts = [{**PROMPT, "id": f"q{n}", "prompt": q, "messages": [{"role": "user", "content": q}]}
               for n, q in enumerate(["Who are you?", "What is two plus two? Answer in one long sentence please."])]
    groups = [(prompt, RESPONSES[n:] + RESPONSES[:n]) for n, prompt in enumerate(prompts * 3)]  # 6 groups of 4
    args = {"path": str(tiny_reward_model_path), "batch_size": 8, "dtype": "float32"}
    per_group = build_reward("reward_model", args)
    expected = [per_group.score_group(prompt, responses) for prompt, responses in groups]
    assert per_group.take_stats()["calls"] == 6  # batches of K=4: batch_size 8 is never reached one group at a time
    batched = build_reward("reward_model", args)
    scores = score_groups(batched, groups)
    assert [len(s) for s in scores] == [4] * 6
    assert [x for group in scores for x in group] == pytest.approx([x for g in expected for x in g], abs=1e-4)
    assert batched.take_stats()["calls"] == 3  # 24 responses, 8 a batch
    budget = build_reward("reward_model", {**args, "batch_tokens": 60})
    within_budget = [x for g in score_groups(budget, groups) for x in g]
    assert within_budget == pytest.approx([x for g in expected for x in g], abs=1e-4)
    assert budget.take_stats()["calls"] > 3  # at most 60 padded tokens a batch


def test_long_conversations_keep_their_end_and_are_counted_as_truncated(tiny_reward_model_path):
    reward = build_reward("reward_model", {"path": str(tiny_reward_model_path), "max_length": 40})
    scores = reward.score_group(PROMPT, ["word " * 50, "ok"])
    assert all(isinstance(s, float) for s in scores)
    assert reward.take_stats()["truncated"] == 1
    response = "first " + "x " * 50
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model_path)
    whole = _conversation_ids(tokenizer, response)
    assert len(whole) > 40
    kept = reward.token_ids(PROMPT, response)
    assert kept == whole[-40:]  # the last 40 tokens: the start of the conversation is cut, its end kept
    text = tokenizer.decode(kept)
    assert text.endswith("x \n[END]") and "[USER]" not in text and "first" not in text
    assert reward.token_ids(PROMPT, "ok") == _conversation_ids(tokenizer, "ok")  # short ones: whole


def test_a_causal_lm_folder_is_refused_as_a_reward_model(tiny_model_path, tmp_path):
    with pytest.raises(RewardConfigError, match="LlamaForCausalLM.*not a \\*ForSequenceClassification"):
        build_reward("reward_model", {"path": str(tiny_model_path)})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(RewardConfigError, match="unknown architecture"):
        build_reward("reward_model", {"path": str(tmp_path)})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[1, 2]", r"config.json holds a JSON list, not a model's config \(an object\)"),
        (b'"LlamaForSequenceClassification"', r"config.json holds a JSON str, not a model's config"),
        (b"{not json", r"config.json is not a model's config.json \(Expecting property name"),
        (b"\xff\xfe{}", r"config.json is not a model's config.json \('utf-8' codec can't decode"),
        (b"[" * 3000 + b"]" * 3000, r"config.json is not a model's config.json \(nested too deep\)"),
        (b'{"architectures": "LlamaForSequenceClassification"}', r"'architectures' is not a list of names"),
        (b'{"architectures": [1]}', r"'architectures' is not a list of names"),
        (
            b'{"architectures": ["LlamaForRewardModelWithGating"], "auto_map": {"AutoModel": "modeling.Gated"}}',
            r"holds LlamaForRewardModelWithGating, whose code comes with the checkpoint .*never runs",
        ),  # ArmoRM's layout
    ],
)
def test_a_config_json_that_is_not_a_model_s_is_refused_in_one_line(tmp_path, content, message):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(RewardConfigError, match=message):
        build_reward("reward_model", {"path": str(tmp_path)})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"engine": "onnx"}, "engine must be one of transformers, vllm, server"),
        ({"engine": "vllm", "device": "cuda:1"}, "device is for engine: transformers"),
        ({"engine": "server", "batch_tokens": 512}, "batch_tokens is for engine: transformers"),
        ({"url": "http://127.0.0.1:8300"}, "url and api_key_env are for engine: server"),
        ({"engine": "server", "url": "127.0.0.1:8300"}, "must be a base URL"),
        ({"engine": "server", "url": "http://h:1", "api_key_env": "ONPOLICY_TEST_UNSET"}, "ONPOLICY_TEST_UNSET"),
        ({"engine": "vllm", "kv_cache_gib": 0}, "kv_cache_gib must be positive"),
        ({"engine": "server", "port": 0}, "port must be in 1..65535"),
    ],
)
def test_engine_arguments_are_checked_when_the_reward_is_built(tiny_reward_model_path, args, message):
    with pytest.raises(RewardConfigError, match=message):
        build_reward("reward_model", {"path": str(tiny_reward_model_path), **args})


def test_two_servers_on_one_port_are_refused(tiny_reward_model_path):
    servers = ModelServers()
    args = {"path": str(tiny_reward_model_path), "engine": "server", "port": 8311}
    build_reward("reward_model", args, model_servers=servers)
    with pytest.raises(RewardConfigError, match="port 8311 is asked for by another reward's server"):
        build_reward("reward_model", args, model_servers=servers)


def test_a_reward_model_that_cannot_start_is_not_started_again_for_each_group(tmp_path, monkeypatch):
    """A round's chunk that raises is asked again group by group: a start that failed is kept, and each later
    group (of this round and the next) fails with its one line at once."""
    from reward.guarded import guarded_batch
    from reward.reward_model import RewardModel

    tries = []

    def no_tokenizer(*args, **kwargs):
        tries.append(args)
        raise OSError("no tokenizer\nin this folder")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_tokenizer)
    reward = RewardModel(tmp_path, engine=None, max_length=64, label=0)
    groups = [(PROMPT, RESPONSES[:2])] * 3
    rounds = [guarded_batch(reward, groups) for _ in range(2)]
    assert len(tries) == 1
    failures = [score for scores in rounds for group in scores for score in group]
    assert {(f.kind, f.reason) for f in failures} == {
        ("error", f"raised RuntimeError: the reward model {tmp_path} did not start, and is not started again in this "
         "run (resume it once fixed): OSError: no tokenizer in this folder")
    }  # fmt: skip
