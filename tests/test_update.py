"""The real TRL DPOTrainer on a tiny random Llama: weights move, reference refresh semantics hold, empty rounds skip.

The trainer puts the policy on the GPU where there is one; comparisons with copies taken before move both sides
to the CPU (`_cpu_state`), so that these tests mean the same on every machine.
"""

import dataclasses
import math

import pytest
import torch

from onpolicy.config import RefConfig, TrainConfig
from onpolicy.train.reference import reference_round
from onpolicy.train.update import DPOUpdater
from tests.helpers import PAIRS

LN2 = math.log(2)


# How far a float32 engine's log-prob of a sampled token may be from the float32 trainer's. Both compute the same
# function in the same dtype; only the kernels' summation order differs (vLLM's oneDNN or CUDA kernels against
# torch's), which costs a few fp32 roundings (relative 6e-8 each) per layer and grows with depth. Measured per
# token, on a 2-core AVX512_BF16 EPYC: at most 4.8e-7 nats on the tiny model (2 layers; 9.5e-7 per 12-token
# response), at most 3.3e-5 (mean 5.4e-6) on SmolLM2-135M (30 layers; 1.4e-4 per ~30-token response). A bf16
# engine is off by ~1e-3 per token (mean 1.0e-3, max 3.7e-3 on the tiny model). The bound sits between the two:
# 3x above the deeper model's worst fp32 token and 10x below bf16's mean, so a test passing with it says the
# engine computed in the trainer's dtype.
FP32_NATS_PER_TOKEN = 1e-4
MAX_NEW_TOKENS = 12  # of the sampled pairs below: a response's sum of log-probs may be off by at most 12 tokens' worth
FP32_NATS_PER_RESPONSE = FP32_NATS_PER_TOKEN * MAX_NEW_TOKENS


def _reference_model(updater: DPOUpdater) -> torch.nn.Module | None:
    """The second model the updater hands the trainer as its reference this round (None: none is held)."""
    return updater.reference.for_trainer().model


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of `model`, copied to the CPU (where the trainer may have moved the model to a GPU)."""
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize(
    ("refresh", "every", "expected"),
    [
        ("every_round", 1, [1, 2, 3, 4, 5]),
        ("never", 1, [1, 1, 1, 1, 1]),
        ("every", 2, [1, 1, 3, 3, 5]),
        ("every", 3, [1, 1, 1, 4, 4]),
        ("mix", 1, [1, 2, 3, 4, 5]),  # the newest policy in the mix
    ],
)
def test_reference_round(refresh, every, expected):
    ref = RefConfig(refresh=refresh, every=every)
    assert [reference_round(n, ref) for n in range(1, 6)] == expected


def _updater(
    tiny_model_path, refresh="every_round", batch_size=4, max_length=64, engine=False, train_settings=(), kl=False,
    **ref,
):  # fmt: skip
    """An updater; with `engine`, beside an engine that computes in float32 (the trainer's dtype); with `kl`,
    keeping what `kl_from_samples` compares with."""
    from transformers import AutoTokenizer

    settings = {"learning_rate": 1e-3, "batch_size": batch_size, "num_epochs": 1, "max_length": max_length}
    train = TrainConfig(**{**settings, **dict(train_settings)})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    engine_dtype = torch.float32 if engine else None
    return DPOUpdater(
        str(tiny_model_path), tokenizer, train, RefConfig(refresh=refresh, **ref), engine_dtype=engine_dtype, kl=kl
    )


def test_update_moves_every_weight_and_reports_trl_metrics(tiny_model_path):
    updater = _updater(tiny_model_path)
    before = _cpu_state(updater.policy)
    assert updater.start_round(1)
    result = updater.update(PAIRS, round_number=1)
    assert not result.skipped
    assert result.metrics["train/steps"] == 1
    # one step on a policy that is its own reference: loss is exactly ln 2, margins start at 0
    assert result.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)
    assert result.metrics["train/reward_margin"] == pytest.approx(0.0, abs=1e-4)
    after = _cpu_state(updater.policy)
    changed = [n for n in before if not torch.equal(after[n], before[n])]
    assert sorted(changed) == sorted(before)
    # the trainer's forward patch is gone: the policy is an ordinary model again
    assert "forward" not in updater.policy.__dict__


def test_every_round_reference_is_the_round_start_policy(tiny_model_path):
    updater = _updater(tiny_model_path, "every_round")
    for n in (1, 2):
        updater.start_round(n)
        assert _reference_model(updater) is None
        result = updater.update(PAIRS, round_number=n)
        # round 2 starts from the moved policy, which is also its reference: the loss starts at ln 2 again
        assert result.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)
    assert updater.reference.last() is None


def test_never_refresh_keeps_the_initial_model_as_reference(tiny_model_path):
    updater = _updater(tiny_model_path, "never")
    initial = _cpu_state(updater.policy)
    updater.start_round(1)
    first = updater.update(PAIRS, round_number=1)
    assert not updater.start_round(2)  # no refresh is due
    second = updater.update(PAIRS, round_number=2)
    assert first.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)
    # against the initial reference, the moved policy already prefers the chosen answers
    assert second.metrics["train/loss"] < LN2 - 1e-3
    assert second.metrics["train/reward_margin"] > 0
    for name, param in _cpu_state(_reference_model(updater)).items():
        assert torch.equal(param, initial[name]), name
    assert not any(param.requires_grad for param in _reference_model(updater).parameters())


def test_a_mixed_reference_moves_toward_the_policy_each_round_and_comes_back_from_the_checkpoint(
    tiny_model_path, tmp_path
):
    updater = _updater(tiny_model_path, "mix", mix=0.25)
    initial = _cpu_state(updater.policy)
    assert not updater.engine_logps
    assert updater.start_round(1)
    assert _reference_model(updater) is not None
    updater.update(PAIRS, round_number=1)
    after_round_1 = _cpu_state(updater.policy)
    assert updater.start_round(2)  # ref = 0.25 * policy + 0.75 * ref
    mixed = _cpu_state(_reference_model(updater))
    for name in mixed:
        torch.testing.assert_close(mixed[name], 0.25 * after_round_1[name] + 0.75 * initial[name])
    assert all(not torch.equal(mixed[name], initial[name]) for name in mixed)
    second = updater.update(PAIRS, round_number=2)
    assert second.metrics["train/loss"] < LN2  # the policy is ahead of its mixed reference
    updater.save_checkpoint(tmp_path / "round-2")
    assert not (tmp_path / "round-2" / "reference" / "tokenizer.json").exists()  # weights and config only

    resumed = _updater(tiny_model_path, "mix", mix=0.25)  # a resumed job: reference of round 2, policy after it
    resumed.policy.load_state_dict(updater.policy.state_dict())
    resumed.reference.restore(tmp_path / "round-2" / "reference", from_round=1)
    assert not resumed.start_round(2)
    assert resumed.start_round(3) and updater.start_round(3)
    for name, tensor in _cpu_state(_reference_model(resumed)).items():
        torch.testing.assert_close(tensor, _cpu_state(_reference_model(updater))[name])


def _sample_groups(tokenizer):
    """Two prompts with two answers each, as token ids (the estimate's arithmetic does not depend on who sampled)."""
    from onpolicy.tokens import prompt_ids
    from onpolicy.types import PromptRecord, Sample, SampleGroup

    groups = []
    for pair in PAIRS[:2]:
        record = PromptRecord(id=pair.prompt_id, messages=pair.messages)
        answers = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (pair.chosen, pair.rejected)]
        samples = tuple(Sample(text="", token_ids=tuple(ids), logprobs=(), finish_reason="stop") for ids in answers)
        groups.append(SampleGroup(record, tuple(prompt_ids(tokenizer, pair.messages)), samples))
    return groups


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_kl_from_samples_is_the_mean_log_ratio_to_the_initial_policy_and_to_the_last_reference(tiny_model_path, lora):
    from transformers import AutoModelForCausalLM

    from onpolicy.train.kl import sequence_log_probs

    settings = {"lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}} if lora else {}
    updater = _updater(tiny_model_path, "every_round", kl=True, train_settings=settings)
    groups = _sample_groups(updater.tokenizer)
    sequences = [(g.prompt_token_ids, s.token_ids) for g in groups for s in g.samples]
    tokens = sum(len(s.token_ids) for g in groups for s in g.samples)
    assert updater.kl_from_samples(groups) == {"eval/kl_initial": 0.0, "eval/kl_initial_per_token": 0.0}
    updater.start_round(1)
    updater.update(PAIRS, round_number=1)
    first = updater.kl_from_samples(groups)
    # on the device the trainer left the policy on (a GPU where there is one), as the updater's own copy is
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).to(next(updater.policy.parameters()).device)
    expected = [
        a - b
        for a, b in zip(sequence_log_probs(updater.policy, sequences, 0), sequence_log_probs(initial, sequences, 0))
    ]  # fmt: skip
    assert first["eval/kl_initial"] == pytest.approx(sum(expected) / 4, abs=1e-5)
    assert first["eval/kl_initial_per_token"] == pytest.approx(sum(expected) / tokens, abs=1e-6)
    assert abs(first["eval/kl_initial"]) > 1e-3  # the update moved the policy
    assert first["eval/kl_reference"] == pytest.approx(first["eval/kl_initial"], abs=1e-5)  # round 1's: the initial
    updater.start_round(2)  # round 2's reference: the policy now
    second = updater.kl_from_samples(groups)
    assert second["eval/kl_reference"] == 0.0
    assert second["eval/kl_initial"] == pytest.approx(first["eval/kl_initial"], abs=1e-6)


def test_an_update_that_diverges_stops_the_job_naming_what_is_not_finite(tiny_model_path):
    from onpolicy.train.update import Diverged

    updater = _updater(tiny_model_path, train_settings={"learning_rate": 1e38, "num_epochs": 3})
    updater.start_round(1)
    with pytest.raises(Diverged, match=r"round 1's update diverged \(non-finite (train/loss = nan|weights).*round 0 "):
        updater.update(PAIRS, round_number=1)
    assert "forward" not in updater.policy.__dict__  # the trainer was released all the same


def test_the_tokenizer_is_saved_by_the_main_process_alone(tiny_model_path, tmp_path, monkeypatch):
    """Every process of a sharded job saves the policy together (the main one writes it); were the tokenizer saved by
    each, a slow one could cut tokenizer.json short in a folder already swapped into place."""
    from onpolicy.train import sharding

    updater = _updater(tiny_model_path)
    updater.save(tmp_path / "main")
    assert (tmp_path / "main" / "tokenizer.json").is_file()
    monkeypatch.setattr(sharding, "is_main", lambda: False)  # as another process of the job
    updater.save(tmp_path / "other")
    assert not list((tmp_path / "other").glob("tokenizer*"))


def test_a_round_without_pairs_skips_the_update(tiny_model_path):
    updater = _updater(tiny_model_path)
    before = _cpu_state(updater.policy)
    result = updater.update([], round_number=1)
    assert result.skipped and result.metrics == {}
    after = _cpu_state(updater.policy)
    assert all(torch.equal(after[n], before[n]) for n in before)


@pytest.fixture(scope="module")
def sampled_pairs(tiny_model_path):
    """Best-vs-worst pairs (longest vs shortest) of real samples from the engine, with their tokens and log-probs."""
    pytest.importorskip("vllm", reason="these pairs are sampled by the vLLM engine, which this machine lacks")
    from transformers import AutoTokenizer

    from onpolicy.config import GenerationConfig
    from onpolicy.generation.engine import VLLMGenerator
    from onpolicy.pairing import build_pairs
    from onpolicy.types import PromptRecord, ScoredGroup

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    # float32, the trainer's dtype: the engine's log-probs are then the reference's (a bf16 engine's are not)
    config = GenerationConfig(
        num_samples=4, max_new_tokens=MAX_NEW_TOKENS, max_model_len=128, kv_cache_gib=0.25, seed=3, dtype="float32"
    )
    generator = VLLMGenerator(str(tiny_model_path), tokenizer, config)
    records = [PromptRecord(id=p.prompt_id, messages=p.messages) for p in PAIRS]
    groups, _ = generator.generate(records)
    del generator
    scored = [ScoredGroup(g, tuple(float(len(s.text)) for s in g.samples), (None,) * 4) for g in groups]
    pairs = list(build_pairs(scored).pairs)
    assert len(pairs) >= 3
    return pairs


def test_training_rows_are_the_sampled_tokens_and_an_edit_ends_as_its_original(tiny_model_path, sampled_pairs):
    updater = _updater(tiny_model_path, engine=True)
    pair = sampled_pairs[0]
    row = updater.rows.row(pair)
    assert row["prompt_ids"] == list(pair.tokens.prompt)
    assert row["chosen_ids"] == list(pair.tokens.chosen) and row["rejected_ids"] == list(pair.tokens.rejected)
    assert row["ref_chosen_logps"] == pair.tokens.chosen_logp
    athene = updater.tokenizer("Athene", add_special_tokens=False)["input_ids"]
    eos = updater.tokenizer.eos_token_id
    for end in ((eos,), ()):  # edited from a finished response, or from one cut at max_new_tokens
        tokens = dataclasses.replace(pair.tokens, chosen=None, rejected=None, chosen_end=end, rejected_end=end)
        row = updater.rows.row(dataclasses.replace(pair, chosen="Athene", rejected="Silas", tokens=tokens))
        assert row["chosen_ids"] == athene + list(end)
        assert row["rejected_ids"] == updater.tokenizer("Silas", add_special_tokens=False)["input_ids"] + list(end)
        assert row["ref_chosen_logps"] is None and row["ref_rejected_logps"] is None  # the trainer scores both
    text_only = updater.rows.row(dataclasses.replace(pair, tokens=None))  # a pair built by hand: text, ended by EOS
    assert text_only["chosen_ids"][-1] == eos and text_only["rejected_ids"][-1] == eos


def test_engine_log_probs_are_the_reference_and_agree_with_the_trainer(tiny_model_path, sampled_pairs):
    updater = _updater(tiny_model_path, batch_size=len(sampled_pairs), engine=True, check_pairs=2)
    updater.start_round(1)
    result = updater.update(sampled_pairs, round_number=1)
    assert result.metrics["perf/ref_from_engine"] == 1.0
    # both compute in float32: the engine's sums match the trainer's to rounding ...
    assert result.metrics["perf/ref_logp_mismatch"] < FP32_NATS_PER_RESPONSE
    # ... so the policy starts at its reference: the loss of the one step is ln 2 (a margin off by d nats moves
    # the loss by about beta * d / 2)
    assert result.metrics["train/loss"] == pytest.approx(LN2, abs=FP32_NATS_PER_RESPONSE)
    assert result.metrics["perf/train_tokens_per_s"] > 0


def test_the_mismatch_check_sees_engine_log_probs_that_are_off(tiny_model_path, sampled_pairs):
    shifted = [
        dataclasses.replace(p, tokens=dataclasses.replace(p.tokens, chosen_logp=p.tokens.chosen_logp + 1.0))
        for p in sampled_pairs
    ]
    updater = _updater(tiny_model_path, batch_size=len(shifted), engine=True, check_pairs=len(shifted))
    result = updater.update(shifted, round_number=1)
    # one side of each checked pair is off by 1 nat: the mean over sides is 0.5, give or take fp32 rounding
    assert result.metrics["perf/ref_logp_mismatch"] == pytest.approx(0.5, abs=FP32_NATS_PER_RESPONSE)


def test_sides_cut_by_max_length_and_the_trainer_setting_get_the_trainer_pass(tiny_model_path, sampled_pairs):
    longest = max(len(p.tokens.prompt) + len(p.tokens.chosen) for p in sampled_pairs)
    cut = _updater(tiny_model_path, max_length=longest - 1, engine=True).update(sampled_pairs, 1)
    assert cut.metrics["perf/ref_from_engine"] < 1.0
    trainer = _updater(tiny_model_path, batch_size=len(sampled_pairs)).update(sampled_pairs, 1)
    assert trainer.metrics["perf/ref_from_engine"] == 0.0
    assert trainer.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)


def test_engine_log_probs_are_used_only_where_they_are_the_reference_s(tiny_model_path):
    assert _updater(tiny_model_path, "every_round", engine=True).engine_logps
    assert not _updater(tiny_model_path, "never", engine=True).engine_logps  # a frozen copy is the reference
    assert not _updater(tiny_model_path, "every_round", engine=True, logps="trainer").engine_logps
    assert not _updater(tiny_model_path, "every_round").engine_logps  # no engine


def test_auto_takes_the_engine_log_probs_only_when_engine_and_trainer_compute_alike():
    from onpolicy.train.training_rows import use_engine_logps

    auto, plain = RefConfig(), TrainConfig()
    assert use_engine_logps(auto, plain, torch.float32, torch.float32)
    assert not use_engine_logps(auto, plain, torch.bfloat16, torch.float32)
    assert not use_engine_logps(auto, TrainConfig(bf16=True), torch.float32, torch.float32)  # autocast shifts them
    assert use_engine_logps(RefConfig(logps="engine"), plain, torch.bfloat16, torch.float32)
    # LD-DPO weighs the tokens past the shorter side in TRL's reference pass; the engine's log-probs are plain sums
    assert not use_engine_logps(auto, TrainConfig(extra={"ld_alpha": 0.5}), torch.float32, torch.float32)


def test_engine_log_probs_are_refused_beside_ld_dpo_whose_reference_pass_they_cannot_stand_for():
    from onpolicy.config import Config

    base = {"prompts": {"items": ["hi"]}, "reward": [{"name": "length"}], "train": {"extra": {"ld_alpha": 0.5}}}
    with pytest.raises(ValueError, match="ref.logps: engine gives the reference's log-probs as plain sums"):
        Config.model_validate({**base, "ref": {"logps": "engine"}})
    assert Config.model_validate({**base, "ref": {"logps": "auto"}}).ref.logps == "auto"


def test_length_grouped_batches_pad_less_than_random_ones(tiny_model_path):
    # short and long pairs, interleaved: random batches of 2 mix them, length-grouped ones pair like with like
    pairs = [
        dataclasses.replace(PAIRS[0], prompt_id=str(i), chosen="yes " * words, rejected="no " * words)
        for i, words in enumerate([2, 30] * 8)
    ]
    padding = {}
    for grouped in (True, False):
        updater = _updater(tiny_model_path, batch_size=2, train_settings={"group_by_length": grouped})
        padding[grouped] = updater.update(pairs, round_number=1).metrics["perf/train_padding"]
    assert padding[True] < 0.02
    assert padding[False] > padding[True] + 0.05


@pytest.mark.parametrize(
    ("setting", "checkpointing"), [(False, False), (True, True), ("auto", torch.cuda.is_available())]
)
def test_gradient_checkpointing_is_the_configured_one(tiny_model_path, setting, checkpointing):
    updater = _updater(tiny_model_path, train_settings={"gradient_checkpointing": setting})
    result = updater.update(PAIRS, round_number=1)
    assert updater.policy.is_gradient_checkpointing is checkpointing
    assert result.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)


def test_length_grouped_batches_sort_the_round_and_shuffle_the_batches():
    from onpolicy.train.trl_compat import LengthGroupedBatches

    lengths = [5, 40, 6, 41, 7, 42, 8, 43, 9]
    sampler = LengthGroupedBatches(lengths, batch_size=2, seed=1)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(lengths)))  # every row once an epoch
        batches = {tuple(sorted(lengths[i] for i in order[j : j + 2])) for j in range(0, len(order), 2)}
        # the sorted lengths, cut in twos: 5,6 | 7,8 | 9,40 | 41,42 | 43 (one batch mixes, no more)
        assert batches == {(5, 6), (7, 8), (9, 40), (41, 42), (43,)}
        orders.append(order)
    assert len({tuple(o) for o in orders}) > 1  # the batches come in another order from epoch to epoch


def test_no_max_length_means_no_limit(tiny_model_path):
    result = _updater(tiny_model_path, max_length=None).update(PAIRS, round_number=1)
    assert not result.skipped and result.metrics["train/dropped_long_prompts"] == 0
    assert result.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="about TRL's LM head on a CPU; on a GPU TRL already does this")
def test_the_lm_head_scores_only_completion_tokens_on_cpu_with_the_same_result(tiny_model_path, monkeypatch):
    import contextlib

    import trl.trainer.utils as trl_utils

    from onpolicy.train import trl_compat

    chunked = trl_utils._ChunkedLogProbFunction

    class CountingRows:
        """TRL's chunked LM head, counting the positions it projects."""

        rows = 0

        @classmethod
        def apply(cls, hidden, *args):
            cls.rows += hidden.shape[0]
            return chunked.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingRows)
    results = {}
    for compact in (True, False):
        if not compact:
            monkeypatch.setattr(trl_compat, "lm_head_on_completions_only", contextlib.nullcontext)
        CountingRows.rows = 0
        updater = _updater(tiny_model_path, batch_size=2)  # two steps: the second sees the first's update
        metrics = updater.update(PAIRS, round_number=1).metrics
        results[compact] = (CountingRows.rows, metrics, _cpu_state(updater.policy))
    completion_tokens = sum(len(row["chosen_ids"]) + len(row["rejected_ids"]) for row in map(updater.rows.row, PAIRS))
    # the reference pass and one epoch: each completion token projected twice, no prompt or padding position
    assert results[True][0] == 2 * completion_tokens < results[False][0]
    for key in ("train/loss", "train/reward_margin", "train/logp_chosen"):
        assert results[True][1][key] == pytest.approx(results[False][1][key], rel=1e-5, abs=1e-6)
    for name, weight in results[True][2].items():
        torch.testing.assert_close(weight, results[False][2][name], rtol=1e-5, atol=1e-6)
    assert trl_utils._use_triton(torch.device("cpu")) is False  # TRL's own choice is back after the update


def test_trainer_set_up_does_not_hash_the_model(tiny_model_path, monkeypatch):
    import trl.trainer.dpo_trainer as dpo_trainer

    hashed = []
    hash_module = dpo_trainer.hash_module
    monkeypatch.setattr(dpo_trainer, "hash_module", lambda module: hashed.append(module) or hash_module(module))
    updater = _updater(tiny_model_path)
    for n in (1, 2):  # each round's trainer pass is its own policy's, never a cached earlier one
        result = updater.update(PAIRS, round_number=n)
        assert result.metrics["train/loss"] == pytest.approx(LN2, abs=1e-4)
    assert hashed == []
    dpo_trainer.hash_module(torch.nn.Linear(1, 1))  # TRL's own function is back after the update
    assert len(hashed) == 1


def test_a_max_length_no_prompt_fits_under_is_refused_before_the_engine_starts(tiny_model_path):
    from transformers import AutoTokenizer

    from onpolicy.config import PromptsConfig
    from onpolicy.errors import OnpolicyError
    from onpolicy.prompts import load_prompts
    from onpolicy.tokens import check_prompts_leave_room_to_train

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    records = load_prompts(PromptsConfig(items=["Who are you?", "Tell me a story about a dragon."]))
    with pytest.raises(OnpolicyError, match=r"train.max_length is 4 tokens, and the shortest of 2 prompts takes \d+"):
        check_prompts_leave_room_to_train(records, tokenizer, 4)
    check_prompts_leave_room_to_train(records, tokenizer, 64)
    check_prompts_leave_room_to_train(records, tokenizer, None)


def test_a_round_whose_every_pair_has_too_long_a_prompt_says_so():
    from onpolicy.loop import _no_update_reason
    from onpolicy.types import UpdateResult

    replayed = 2  # the update's pairs: the round's and those replayed, all dropped
    trained = len(PAIRS) + replayed
    skipped = UpdateResult(skipped=True, metrics={"train/dropped_long_prompts": float(trained)})
    assert _no_update_reason(trained, skipped, 16) == (
        f"no pair trained this round: the prompts of all {trained} pairs fill train.max_length (16 tokens), "
        "leaving no response to learn from; raise train.max_length"
    )
    assert _no_update_reason(0, UpdateResult(skipped=True, metrics={}), 16) == (
        "no pairs this round: the update was skipped"
    )


def test_a_list_of_loss_types_with_weights_adds_their_losses(tiny_model_path):
    updater = _updater(tiny_model_path, train_settings={"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]})
    updater.start_round(1)
    loss = updater.update(PAIRS, round_number=1).metrics["train/loss"]
    # the policy is its own reference: sigmoid gives ln 2; half the chosen answers' NLL (a random model's, about
    # ln(vocab) = 6.2 per token) comes on top
    assert LN2 + 1.0 < loss < LN2 + 0.5 * 7.0


def test_beta_and_learning_rate_follow_their_schedules_over_rounds(tiny_model_path):
    schedules = {"beta_by_round": {2: 0.5}, "learning_rate_by_round": {2: 5e-4}}
    updater = _updater(tiny_model_path, train_settings=schedules)
    seen = []
    for n in (1, 2):
        updater.start_round(n)
        metrics = updater.update(PAIRS, round_number=n).metrics
        seen.append((metrics["train/beta"], metrics["train/learning_rate"]))
    assert seen == [(0.1, 1e-3), (0.5, 5e-4)]
