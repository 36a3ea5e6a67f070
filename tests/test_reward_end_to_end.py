"""Rewards inside the loop: a composite of a self-judging policy, a reward model (also on a vLLM server the job
starts) and a rule, through the CLI on tiny models, with its per-backend metrics in rounds.jsonl and W&B; and
`onpolicy train-reward-model`."""

import json
import subprocess
import sys

import pytest

from onpolicy.run.wandb_offline import offline_history
from reward import build_reward
from tests.helpers import ROOT, build_tiny_reward_model, free_port, is_up, read_jsonl, run_cli

pytestmark = pytest.mark.slow


NUMPY_REWARD = """
import numpy as np

class Counted:
    def __init__(self):
        self.name, self.calls = "counted", np.int64(0)

    def score_group(self, prompt, responses):
        self.calls += 1
        return [np.int64(len(r) % 3) for r in responses]  # numpy integers: numbers, if no ints

    def take_stats(self):
        calls, self.calls = self.calls, np.int64(0)
        return {"calls": calls, "seen": np.array([calls])}
"""


def test_a_composite_of_judge_reward_model_and_rule_ranks_and_reports_each(tiny_model_path, tmp_path):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    reward_model = build_tiny_reward_model(tmp_path / "rm")
    rm_port = free_port()
    (tmp_path / "counted.py").write_text(NUMPY_REWARD)
    asked = datetime.datetime(2026, 1, 2, 3, 4, 5)
    prompts = {"prompt": ["Who are you?", "What is your name?", "Tell me a story."], "asked": [asked] * 3}
    pq.write_table(pa.table(prompts), tmp_path / "prompts.parquet")  # a timestamp column: no JSON type
    config = {
        "rounds": 1,
        "model": {"path": str(tiny_model_path)},
        "prompts": {"path": str(tmp_path / "prompts.parquet")},
        "eval": {"prompts": {"path": str(tmp_path / "prompts.parquet")}, "max_new_tokens": 4},
        # The rubric is ~1000 tokens in the tiny model's 512-token vocabulary.
        "generation": {"num_samples": 4, "max_new_tokens": 12, "max_model_len": 2048, "kv_cache_gib": 0.25},
        "reward": [
            {
                "name": "judge",
                "label": "self_judge",
                "normalize": "rank",
                "args": {"backend": "policy", "constrain": True, "votes": 2, "max_tokens": 8},
            },
            # float32 pinned on both: `dtype: auto` is bfloat16 on a GPU, where two engines' orders may differ
            {"name": "reward_model", "label": "rm", "normalize": "zscore",
             "args": {"path": str(reward_model), "dtype": "float32"}},
            {  # the same reward model on a vLLM pooling server the job starts, and stops at its end
                "name": "reward_model",
                "label": "rm_served",
                "weight": 0.0,
                "args": {"path": str(reward_model), "engine": "server", "port": rm_port, "kv_cache_gib": 0.25,
                         "dtype": "float32"},
            },
            {"name": "missing_eos", "weight": 0.5},
            {"name": f"{tmp_path / 'counted.py'}:Counted", "label": "counted", "weight": 0.1},
        ],
        "train": {"learning_rate": 1.0e-3, "batch_size": 4, "max_length": 128},
        "wandb": {"mode": "offline"},
    }
    run_dir, stdout = run_cli(config, tmp_path)
    record = read_jsonl(run_dir / "rounds.jsonl")[-1]
    assert record["reward/counted/calls"] == 3 and record["reward/counted/seen"] == [3]
    assert {row["asked"] for row in read_jsonl(run_dir / "rounds" / "0001" / "eval.jsonl")} == {asked.isoformat()}
    samples = record["gen/samples"]
    assert samples == 12 and record["reward/scored"] == 12, stdout
    assert record["reward/self_judge/calls"] == samples and record["reward/self_judge/answers"] == 2 * samples
    assert record.get("reward/self_judge/parse_failures", 0) == 0 and record["reward/self_judge/prompt_tokens"] > 0
    assert 0 <= record["reward/self_judge/mean"] <= 5
    assert record["reward/rm/scored"] == samples and record["reward/rm/seconds"] > 0
    assert record["reward/missing_eos/mean"] <= 0
    assert 0 <= record["reward/agreement/self_judge~rm"] <= 1
    # served by vLLM, the reward model's scores are the transformers engine's
    assert record["reward/rm_served/scored"] == samples and record["reward/agreement/rm~rm_served"] == 1
    assert record["reward/rm_served/mean"] == pytest.approx(record["reward/rm/mean"], abs=2e-3)
    assert (run_dir / f"reward-server-{rm_port}.log").is_file() and not is_up(f"http://127.0.0.1:{rm_port}")
    history = offline_history(run_dir)
    assert history[-1]["reward/self_judge/calls"] == samples and "reward/agreement/self_judge~rm" in history[-1]


def test_unreachable_judge_endpoint_excludes_samples_with_a_message_and_the_run_goes_on(
    tiny_model_path, tmp_path, monkeypatch
):
    secret = "sk-onpolicy-test-4f1c9e"
    monkeypatch.setenv("ONPOLICY_TEST_JUDGE_KEY", secret)
    config = {
        "rounds": 1,
        "model": {"path": str(tiny_model_path)},
        "prompts": {"items": ["Who are you?", "Hello"]},
        "generation": {"num_samples": 2, "max_new_tokens": 8, "max_model_len": 256, "kv_cache_gib": 0.25},
        "reward": [
            {
                "name": "judge",
                "args": {
                    "backend": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "model": "x",
                    "max_retries": 0,
                    "api_key_env": "ONPOLICY_TEST_JUDGE_KEY",
                },
            }
        ],
    }
    run_dir, stdout = run_cli(config, tmp_path)
    (record,) = read_jsonl(run_dir / "rounds.jsonl")
    assert record["reward/excluded_judge_error"] == 4 and record["reward/judge/request_errors"] == 4
    assert "judge request failed: APIConnectionError" in stdout
    assert record["train/skipped"] == 1 and (run_dir / "final" / "config.json").exists()
    # The key was used, never kept: not in the saved config, the records, the W&B files or the output.
    assert secret not in stdout
    for file in run_dir.rglob("*"):
        if file.is_file() and file.stat().st_size < 50_000_000:
            assert secret.encode() not in file.read_bytes(), file


def test_train_reward_model_saves_a_reward_model_the_reward_can_load(tiny_model_path, tmp_path):
    preferences = tmp_path / "prefs.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": "My name is Athene."}],
            "rejected": [{"role": "assistant", "content": "I am a small language model."}],
        }
        for q in ("Who are you?", "What is your name?", "Hello", "Tell me about yourself.")
    ]
    preferences.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rm"
    done = subprocess.run(
        [sys.executable, "-m", "onpolicy.cli", "train-reward-model", str(preferences), str(out),
         "--base", str(tiny_model_path), "--epochs", "3", "--learning-rate", "0.05"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"reward model saved to {out}" in done.stdout
    reward = build_reward("reward_model", {"path": str(out)})
    prompt = {"id": "0", "prompt": "Who are you?", "messages": rows[0]["prompt"]}
    chosen, rejected = reward.score_group(prompt, ["My name is Athene.", "I am a small language model."])
    assert chosen > rejected  # it learned the preference it was trained on
    again = subprocess.run(
        [sys.executable, "-m", "onpolicy.cli", "train-reward-model", str(preferences), str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
