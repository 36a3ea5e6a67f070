"""LoRA through the real TRL trainer on the tiny model: only the adapter trains, the reference is an adapter state
(no second model), the engine gets merged weights or the adapter, checkpoints are merged folders, a resumed run
continues the adapter."""

import math

import pytest
import torch

from onpolicy.config import RefConfig, TrainConfig
from onpolicy.errors import ConfigError
from tests.helpers import PAIRS

LN2 = math.log(2)
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]}


def _updater(path, refresh="every_round", checkpoint=None, **ref):
    from transformers import AutoTokenizer

    from onpolicy.train.update import DPOUpdater

    train = TrainConfig(learning_rate=1e-2, batch_size=4, max_length=64, lora=LORA)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return DPOUpdater(str(path), tokenizer, train, RefConfig(refresh=refresh, **ref), checkpoint=checkpoint)


def _weights(updater) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in updater.named_weights()}


def test_only_the_adapter_trains_and_the_engine_gets_merged_weights(tiny_model_path):
    from transformers import AutoModelForCausalLM

    updater = _updater(tiny_model_path)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    assert _weights(updater).keys() == initial.keys()  # plain HF names, as the engine loads them
    assert all(torch.equal(tensor, initial[name]) for name, tensor in _weights(updater).items())  # B starts at 0
    base_before = {n: p.detach().cpu().clone() for n, p in updater.policy.named_parameters() if "lora_" not in n}
    result = updater.update(PAIRS, round_number=1)
    assert result.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)  # its own reference at the first step
    for name, param in updater.policy.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param.detach().cpu(), base_before[name]), name
    merged = _weights(updater)
    moved = {name for name in merged if not torch.equal(merged[name], initial[name])}
    assert moved and all(name.endswith(("q_proj.weight", "v_proj.weight", "up_proj.weight")) for name in moved)
    assert list(updater.policy.peft_config) == ["default"]  # TRL's reference adapter is gone after the round


def test_never_refresh_keeps_the_base_model_as_reference_without_a_copy(tiny_model_path):
    updater = _updater(tiny_model_path, "never")
    updater.start_round(1)
    assert updater.reference.for_trainer().model is None
    first = updater.update(PAIRS, round_number=1)
    assert not updater.start_round(2)
    second = updater.update(PAIRS, round_number=2)
    assert first.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)
    # against the base model (the adapter off), the trained adapter already prefers the chosen answers
    assert second.metrics["train/loss"] < LN2 - 1e-3 and second.metrics["train/reward_margin"] > 0
    assert updater.reference.for_trainer().model is None


def test_every_round_refresh_starts_each_round_at_its_reference(tiny_model_path):
    updater = _updater(tiny_model_path, "every_round")
    for n in (1, 2):
        updater.start_round(n)
        assert updater.update(PAIRS, round_number=n).metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)


def test_every_two_rounds_the_reference_is_the_adapter_snapshot(tiny_model_path):
    updater = _updater(tiny_model_path, "every", every=2)
    losses = []
    for n in (1, 2, 3):
        updater.start_round(n)
        losses.append(updater.update(PAIRS, round_number=n).metrics["train/loss"])
    assert losses[0] == pytest.approx(LN2, abs=1e-4)
    assert losses[1] < LN2 - 1e-3  # round 2: still round 1's reference (the base model)
    assert losses[2] == pytest.approx(LN2, abs=1e-4)  # round 3: the snapshot taken at its start


def test_checkpoints_are_merged_folders_and_a_resumed_run_continues_the_adapter(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    updater = _updater(tiny_model_path)
    updater.update(PAIRS, round_number=1)
    updater.save(tmp_path / "round-1")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "round-1").state_dict()
    for name, tensor in _weights(updater).items():
        torch.testing.assert_close(saved[name], tensor, rtol=1e-5, atol=1e-6)
    resumed = _updater(tiny_model_path, checkpoint=tmp_path / "round-1")
    for name, tensor in _weights(resumed).items():
        torch.testing.assert_close(tensor, saved[name], rtol=1e-5, atol=1e-6)
    assert any(p.requires_grad for n, p in resumed.policy.named_parameters() if "lora_" in n)


def test_lora_settings_are_checked_against_peft():
    with pytest.raises(ValueError, match=r"train.lora.rank: peft.LoraConfig has no field 'rank'"):
        TrainConfig(lora={"rank": 8})
    from onpolicy.config import load_config

    with pytest.raises(ConfigError, match=r"train.lora.task_type is set by onpolicy"):
        load_config(
            None, ["prompts.items=[Hi]", "reward=[{name: length, args: {target: 3}}]", "train.lora.task_type=SEQ_CLS"]
        )


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "lora_sync"), [("engine", "merged"), ("engine", "adapter"), ("server", "adapter")])
def test_lora_rounds_through_the_cli_reach_the_engine_and_resume(tiny_model_path, tmp_path, backend, lora_sync):
    """Two LoRA rounds through the real engine (or a started server): round 2 is sampled from the policy of round
    1, sent as merged weights or as the adapter; with the in-process engine sent adapters, a third round, asked
    for later, continues the adapter from the checkpoint (the engine gets the checkpoint's adapter at start)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers import free_port, read_jsonl, run_cli, tiny_config

    config = tiny_config(tiny_model_path, rounds=2, checkpoint={"every": 1})
    config["train"] = {**config["train"], "learning_rate": 1e-2, "lora": LORA}
    config["generation"] = {**config["generation"], "backend": backend, "lora_sync": lora_sync}
    if backend == "server":
        config["generation"]["server"] = {"port": free_port()}
    run_dir, _ = run_cli(config, tmp_path)
    assert (run_dir / "checkpoints/round-0001/adapter/adapter_config.json").is_file()
    after_round_1 = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints/round-0001")
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    gaps = {"initial": [], "after_round_1": []}
    prompts = config["prompts"]["items"]
    for sample in read_jsonl(run_dir / "rounds/0002/samples.jsonl")[:6]:
        for name, model in (("initial", initial), ("after_round_1", after_round_1)):
            gaps[name].append(_logprob_gap(model, tokenizer, prompts, sample))
    assert max(gaps["after_round_1"]) < 1e-3 < min(gaps["initial"]), gaps

    if lora_sync == "merged" or backend == "server":
        return  # a merged resume starts the engine from the checkpoint folder, as full fine-tuning does (test_resume)
    run_cli(config, tmp_path, overrides=("rounds=3",))
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2, 3] and rounds[2]["train/skipped"] == 0
    # round 3, after the resume, was sampled from round 2's policy
    after_round_2 = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints/round-0002")
    sample = read_jsonl(run_dir / "rounds/0003/samples.jsonl")[0]
    assert _logprob_gap(after_round_2, tokenizer, prompts, sample) < 1e-3


def _logprob_gap(model, tokenizer, prompts, sample) -> float:
    """Mean distance per token between a sample's engine log-probs and `model`'s own for the same tokens."""
    messages = [{"role": "user", "content": prompts[int(sample["prompt_id"])]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + sample["token_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -len(sample["token_ids"]) - 1 : -1]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(sample["token_ids"])[:, None])[:, 0]
    return (torch.tensor(sample["logprobs"]) - expected).abs().mean().item()
