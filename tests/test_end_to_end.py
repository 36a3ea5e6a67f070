"""Two real rounds through the CLI on a tiny random Llama: vLLM engine, TRL update, W&B offline, run directory."""

import json
import re

import pytest
import torch
import yaml

from onpolicy.run.wandb_offline import offline_history
from tests.helpers import read_jsonl, run_cli, tiny_config

pytestmark = pytest.mark.slow

NAMESPACES = ("gen/", "reward/", "pairs/", "train/", "perf/", "ref/")
EXPECTED_KEYS = {
    "round",
    "gen/samples",
    "gen/mean_length",
    "gen/truncation_rate",
    "reward/mean",
    "reward/std",
    "reward/min",
    "reward/max",
    "pairs/kept",
    "pairs/dropped_tie",
    "pairs/chosen_reward_mean",
    "pairs/rejected_reward_mean",
    "pairs/margin_mean",
    "pairs/shortcut_gap",
    "pairs/length_ratio",
    "pairs/duplicates",
    "pairs/corrected_share",
    "train/loss",
    "train/reward_accuracy",
    "train/reward_margin",
    "perf/generate_s",
    "perf/score_s",
    "perf/train_s",
    "perf/sync_s",
    "perf/engine_sleep_s",
    "perf/engine_wake_s",
    "perf/gen_tokens_per_s",
    "perf/peak_rss_gib",
    "perf/checkpoint_s",
    "perf/record_s",
    "perf/round_total_s",
    "perf/train_tokens_per_s",
    "perf/train_padding",
    "perf/ref_from_engine",
    "perf/ref_logp_mismatch",
}


@pytest.fixture(scope="module")
def finished_run(tiny_model_path, tmp_path_factory):
    """Two rounds with a float32 engine: the default on CPUs, and the one whose log-probs are the reference's;
    round 2 replays round 1's pairs."""
    # a progress line at every unit of work (the output is not a terminal)
    config = tiny_config(
        tiny_model_path,
        rounds=2,
        checkpoint={"every": 1},
        progress_every_s=1e-9,
        pairs={"replay": {"rounds": 1, "share": 1.0}},
    )
    return run_cli(config, tmp_path_factory.mktemp("e2e"))


@pytest.fixture(scope="module")
def bf16_engine_run(tiny_model_path, tmp_path_factory):
    """Two rounds with a bfloat16 engine: the default on GPUs, run here too (emulated where the CPU lacks native
    bf16: slower, same results), so that the path a user's machine takes is never untested."""
    config = tiny_config(tiny_model_path, engine_dtype="bfloat16", rounds=2, checkpoint={"every": 1})
    return run_cli(config, tmp_path_factory.mktemp("e2e-bf16"))


def test_one_record_per_round_with_every_metric(finished_run):
    run_dir, stdout = finished_run
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert EXPECTED_KEYS <= set(record), EXPECTED_KEYS - set(record)
        assert all(key == "round" or key.startswith(NAMESPACES) for key in record)
        assert record["gen/samples"] == 16 and record["pairs/kept"] >= 1 and record["train/skipped"] == 0
        assert 0.5 < record["perf/peak_rss_gib"] < 16  # engine, policy and trainer in one process
        # the reference is the sampling policy, engine and trainer both in float32: no reference pass needed (the
        # bound: tests/test_update.py's FP32_NATS_PER_TOKEN, 1e-4, times 16 tokens), but for the replayed pairs,
        # sampled by an earlier policy: the trainer computes their reference log-probs afresh
        assert record["perf/ref_logp_mismatch"] < 16e-4
        trained = record["pairs/kept"] + record["pairs/replayed"]
        assert record["perf/ref_from_engine"] == pytest.approx(record["pairs/kept"] / trained)
        assert record["perf/round_total_s"] > record["perf/round_s"]
    assert rounds[0]["pairs/replayed"] == 0  # nothing earlier to replay
    assert rounds[1]["pairs/replayed"] == min(rounds[1]["pairs/kept"], rounds[0]["pairs/kept"]) >= 1
    assert [line.split(" |")[0] for line in stdout.splitlines() if line.startswith("round ")] == [
        "round 1/2",
        "round 2/2",
    ]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["rounds"] == 2 and saved["generation"]["num_samples"] == 4 and saved["train"]["beta"] == 0.1


def test_a_bf16_engine_runs_the_rounds_with_the_trainer_s_reference_pass(bf16_engine_run):
    run_dir, _ = bf16_engine_run
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert EXPECTED_KEYS - {"perf/ref_logp_mismatch"} <= set(record)
        assert record["gen/samples"] == 16 and record["pairs/kept"] >= 1 and record["train/skipped"] == 0
        # a bf16 engine's log-probs are not the fp32 trainer's: the trainer computes the reference, none is checked
        assert record["perf/ref_from_engine"] == 0.0 and "perf/ref_logp_mismatch" not in record
        assert record["perf/ref_logps_s"] > 0
    # the first step of round 1 is against the policy itself: the loss starts at ln 2
    assert rounds[0]["train/loss"] == pytest.approx(0.6931, abs=1e-3)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["generation"]["dtype"] == "bfloat16"


def test_long_phases_report_progress_in_lines_when_the_output_is_not_a_terminal(finished_run):
    _, stdout = finished_run
    for n in (1, 2):
        assert re.search(rf"^  round {n} generate: 16/16 samples, [\d.e+]+/s$", stdout, re.M), stdout
        counts = [int(done) for done in re.findall(rf"^  round {n} generate: (\d+)/16 samples", stdout, re.M)]
        assert len(counts) > 4 and counts == sorted(counts), stdout  # a line per finished sample, not per prompt
        assert re.search(rf"^  round {n} score: 4/4 groups, ", stdout, re.M), stdout
        assert re.search(rf"^  round {n} train: (\d+)/\1 steps, ", stdout, re.M), stdout


def test_samples_and_pairs_of_each_round_are_on_disk(finished_run):
    run_dir, _ = finished_run
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    for n, record in enumerate(rounds, start=1):
        samples = read_jsonl(run_dir / f"rounds/{n:04d}/samples.jsonl")
        pairs = read_jsonl(run_dir / f"rounds/{n:04d}/pairs.jsonl")
        assert len(samples) == 16
        assert {"prompt_id", "text", "token_ids", "logprobs", "finish_reason", "reward"} <= set(samples[0])
        assert len(pairs) == record["pairs/kept"]
        by_prompt = {}
        for s in samples:
            by_prompt.setdefault(s["prompt_id"], []).append(s["reward"])
        for pair in pairs:  # chosen and rejected are the best and worst of their group
            assert pair["chosen_reward"] == max(by_prompt[pair["prompt_id"]])
            assert pair["rejected_reward"] == min(by_prompt[pair["prompt_id"]])


def test_a_finished_run_exports_as_trl_datasets(finished_run, tmp_path):
    """`onpolicy export` on the run directory a real job wrote (tests/test_export.py: every case, on hand-written
    ones, and TRL training on an export)."""
    import datasets

    from onpolicy.run.export import export

    run_dir, _ = finished_run
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    assert export("pairs", run_dir, tmp_path / "pairs").rows == sum(r["pairs/kept"] for r in rounds)
    pairs = datasets.load_from_disk(str(tmp_path / "pairs"))
    assert {"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "round"} <= set(pairs.column_names)
    assert pairs[0]["prompt"][-1]["role"] == "user" and pairs[0]["chosen"][0]["role"] == "assistant"
    export("samples", run_dir, tmp_path / "samples.parquet")
    samples = datasets.Dataset.from_parquet(str(tmp_path / "samples.parquet"))
    assert len(samples) == 32 and sorted(set(samples["group"])) == [0, 1, 2, 3]
    assert all(row["prompt"][-1]["role"] == "user" for row in samples)


def test_final_policy_is_an_ordinary_hf_folder_and_the_last_checkpoint(finished_run, tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = finished_run
    final = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    assert tokenizer.chat_template
    last = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints/round-0002")
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    final_state, last_state, initial_state = final.state_dict(), last.state_dict(), initial.state_dict()
    assert all(torch.equal(final_state[k], last_state[k]) for k in final_state)
    assert any(not torch.equal(final_state[k], initial_state[k]) for k in final_state)


def _teacher_forced_logprobs(model, prompt_ids, token_ids):
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = model(ids).logits.float()
    logprobs = torch.log_softmax(logits[0, len(prompt_ids) - 1 : -1], dim=-1)
    return logprobs.gather(1, torch.tensor(token_ids)[:, None])[:, 0]


@pytest.mark.parametrize("run", ["finished_run", "bf16_engine_run"])
def test_round_two_was_sampled_from_the_updated_weights(run, request, tiny_model_path):
    """The engine's own log-probs of its round-2 samples match the policy after round 1, not the initial one:
    the weight sync reached the running engine, in either engine dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = request.getfixturevalue(run)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    after_round_1 = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints/round-0001")
    prompts = yaml.safe_load((run_dir / "config.yaml").read_text())["prompts"]["items"]
    errors = {"initial": [], "after_round_1": []}
    for sample in read_jsonl(run_dir / "rounds/0002/samples.jsonl")[:8]:
        prompt = prompts[int(sample["prompt_id"])]
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        engine = torch.tensor(sample["logprobs"])
        for name, model in (("initial", initial), ("after_round_1", after_round_1)):
            expected = _teacher_forced_logprobs(model, prompt_ids, sample["token_ids"])
            errors[name].append((engine - expected).abs().mean().item())
    mean = {name: sum(v) / len(v) for name, v in errors.items()}
    assert mean["after_round_1"] < 0.05, mean
    assert mean["initial"] > 5 * mean["after_round_1"], mean


def test_the_layout_is_printed_at_start_and_logged_in_w_and_b_s_config(finished_run):
    from onpolicy.run.wandb_offline import offline_records

    run_dir, stdout = finished_run
    assert re.search(r"^layout: .*; engine dtype float32$", stdout, re.M), stdout
    engine_line = r"^  engine in process: .*; LLM\(dtype='float32', .*kv_cache_memory_bytes=268435456.*\)$"
    assert re.search(engine_line, stdout, re.M), stdout
    logged = []
    for record in offline_records(run_dir):
        kind = record.WhichOneof("record_type")
        items = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        logged += [json.loads(item.value_json) for item in items if item.key == "layout"]
    assert logged, "no layout in the W&B run's config"
    layout = logged[0].get("value", logged[0])
    cpu = layout["gpus"] == 0  # what this machine shows: the plan follows it
    assert layout["trainers"] == [{"rank": 0, "gpus": [] if cpu else [0]}] and layout["servers"] == []
    assert layout["engine"]["args"]["kv_cache_memory_bytes"] == 256 * 1024**2  # generation.kv_cache_gib, set
    assert layout["engine"]["sleep_level"] == (0 if cpu else 2) and layout["engine"]["args"]["enforce_eager"] is cpu


def test_wandb_offline_record_holds_one_step_per_round(finished_run):
    run_dir, _ = finished_run
    history = offline_history(run_dir)
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    assert [row["_step"] for row in history] == [1, 2]
    for row, record in zip(history, rounds):
        for key in ("train/loss", "reward/mean", "pairs/kept", "perf/generate_s"):
            assert row[key] == pytest.approx(record[key])


def test_failing_rewards_and_a_round_without_pairs_do_not_stop_the_run(tiny_model_path, tmp_path):
    """A reward that raises on one prompt and returns NaN on another, ties elsewhere: no pairs, the update is
    skipped and said so, the exclusions are counted, and the run still ends with its files and final/."""
    (tmp_path / "flaky.py").write_text(
        "def score(completion, prompt):\n"
        "    if prompt['id'] == '0':\n"
        "        raise ValueError('judge said nothing useful')\n"
        "    return float('nan') if prompt['id'] == '1' else 0.5\n"
    )
    config = {
        "rounds": 1,
        "model": {"path": str(tiny_model_path)},
        "prompts": {"items": ["Who are you?", "Hello", "Tell me a story.", "word " * 300], "shuffle": False},
        "generation": {"num_samples": 3, "max_new_tokens": 8, "max_model_len": 256, "kv_cache_gib": 0.25},
        "reward": [{"name": f"{tmp_path / 'flaky.py'}:score"}],
    }
    run_dir, stdout = run_cli(config, tmp_path)
    (record,) = read_jsonl(run_dir / "rounds.jsonl")
    assert record["gen/skipped_long_prompts"] == 1 and record["gen/samples"] == 9
    assert record["reward/excluded_error"] == 3 and record["reward/excluded_nonfinite"] == 3
    assert (
        record["pairs/kept"] == 0 and record["pairs/dropped_too_few_scored"] == 2 and record["pairs/dropped_tie"] == 1
    )
    assert record["train/skipped"] == 1
    assert "no pairs this round: the update was skipped" in stdout
    assert "raised ValueError: judge said nothing useful" in stdout
    assert "1 prompt(s) too long for the engine were skipped, e.g. '3'" in stdout
    samples = read_jsonl(run_dir / "rounds/0001/samples.jsonl")
    assert {s["failure"] for s in samples if s["prompt_id"] == "0"} == {
        "score: raised ValueError: judge said nothing useful"
    }
    assert (run_dir / "final" / "config.json").exists()


def test_memory_stays_flat_from_round_to_round(tiny_model_path, tmp_path):
    """Engine, tokenizer and policy are built once and weights move in place: after the first rounds' warm-up,
    the process's peak memory does not grow (a leaked trainer, model copy or engine would add to it each round).
    """
    config = tiny_config(
        tiny_model_path,
        rounds=8,
        ref={"refresh": "every", "every": 2},  # a reference copy replaced every other round
        checkpoint={"keep_last": 1},
    )
    run_dir, _ = run_cli(config, tmp_path)
    peaks = [record["perf/peak_rss_gib"] for record in read_jsonl(run_dir / "rounds.jsonl")]
    print("peak RSS per round (GiB):", peaks)
    assert peaks[-1] - peaks[2] < 0.03, peaks
