"""Long jobs survive crashes: resuming, SIGKILL mid-phase, clean stops on SIGTERM/SIGINT, a disk that fills up,
a changed config - each through the CLI on a tiny model, checking rounds.jsonl, the W&B offline record and
the files on disk."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from onpolicy.cli import main
from onpolicy.run.wandb_offline import offline_history
from tests.helpers import ROOT, read_jsonl, wait_for_phase

pytestmark = pytest.mark.slow


def _config(tiny_model_path, **changes):
    config = {
        "rounds": 3,
        "model": {"path": str(tiny_model_path)},
        "prompts": {"items": ["Who are you?", "What is your name?", "Tell me a story.", "What is two plus two?"]},
        "generation": {"num_samples": 4, "max_new_tokens": 16, "max_model_len": 512, "kv_cache_gib": 0.25},
        "reward": [{"name": "length", "args": {"target": 40, "unit": "chars"}}],
        "train": {"learning_rate": 1.0e-3, "batch_size": 4, "max_length": 128},
        "ref": {"refresh": "never"},  # resuming must bring back the initial model as the reference
        "eval": {"prompts": {"items": ["Who are you?"]}, "metrics": [{"name": "short", "function": "length",
                                                                       "args": {"target": 10}}], "kl_samples": 2},
        "checkpoint": {"keep_last": 1},
        "wandb": {"mode": "offline"},
    }  # fmt: skip
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return config


def _command(config_file, run_dir, *extra):
    return [sys.executable, "-m", "onpolicy.cli", "run", str(config_file), *extra, "--run-dir", str(run_dir)]


def _run(config_file, run_dir, *extra, **kwargs):
    return subprocess.run(
        _command(config_file, run_dir, *extra), capture_output=True, text=True, cwd=ROOT, timeout=600, **kwargs
    )


def _write(config, folder):
    file = folder / "run.yaml"
    file.write_text(yaml.safe_dump(config))
    return file


def _start(config_file, run_dir, **kwargs):
    return subprocess.Popen(
        _command(config_file, run_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        **kwargs,
    )


def _assert_every_round_once(run_dir, rounds):
    records = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in records] == list(range(0, rounds + 1))  # round 0: the initial evaluation
    assert [row["_step"] for row in offline_history(run_dir)] == list(range(0, rounds + 1))
    assert sorted(p.name for p in (run_dir / "rounds").iterdir()) == [f"{n:04d}" for n in range(0, rounds + 1)]
    assert not list(run_dir.rglob(".*.tmp"))
    assert (run_dir / "final" / "model.safetensors").exists()
    return records


def test_a_resumed_run_is_the_run_it_would_have_been(tiny_model_path, tmp_path):
    """Stopping after round 1 and resuming to round 3 gives the same samples, pairs and losses as an uninterrupted
    3-round run (and two fresh runs agree on round 1: determinism on CPU). The reference is a mix, which only
    the checkpoints hold: the resumed job must take it from there (the other tests here resume `never`)."""
    config_file = _write(_config(tiny_model_path, ref={"refresh": "mix", "mix": 0.5}), tmp_path)
    whole = _run(config_file, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = _run(config_file, tmp_path / "resumed", "rounds=1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(config_file, tmp_path / "resumed")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming after round 1" in second.stdout
    for n in (1, 2, 3):
        for name in ("samples.jsonl", "pairs.jsonl"):
            resumed = (tmp_path / f"resumed/rounds/{n:04d}/{name}").read_text()
            assert resumed == (tmp_path / f"whole/rounds/{n:04d}/{name}").read_text(), (n, name)
    records = _assert_every_round_once(tmp_path / "resumed", 3)
    assert len(list((tmp_path / "resumed/wandb").glob("offline-run-*"))) == 2  # one W&B run id, two segments
    whole_records = read_jsonl(tmp_path / "whole/rounds.jsonl")
    assert [r["train/loss"] for r in records[1:]] == [r["train/loss"] for r in whole_records[1:]]
    # after the resume, answers are still compared with round 0's, and KL with the initial policy (not the
    # checkpoint the resumed job loaded) and with the mixed reference
    for key in ("eval/win_rate", "eval/kl_initial", "eval/kl_reference"):
        assert [r.get(key) for r in records] == [r.get(key) for r in whole_records], key
    assert records[0].get("eval/kl_initial") is None and records[3]["eval/kl_initial"] != 0.0
    assert sorted(p.name for p in (tmp_path / "resumed/checkpoints").iterdir()) == ["round-0003"]  # keep_last 1
    assert (tmp_path / "resumed/checkpoints/round-0003/reference/model.safetensors").is_file()
    shutil.rmtree(tmp_path / "resumed/final")  # as if the job died writing final/
    again = _run(config_file, tmp_path / "resumed")
    assert again.returncode == 0 and "has all 3 rounds already" in again.stdout
    assert (tmp_path / "resumed/final/model.safetensors").read_bytes() == (
        tmp_path / "resumed/checkpoints/round-0003/model.safetensors"
    ).read_bytes()
    assert not (tmp_path / "resumed/final/reference").exists()  # final/ is the policy alone


def test_sigkill_in_generation_then_in_training_loses_only_the_round_in_flight(tiny_model_path, tmp_path):
    config = _config(
        tiny_model_path,
        rounds=3,
        generation={"max_new_tokens": 160, "num_samples": 8},  # phases long enough to be caught in
        train={"num_epochs": 6, "batch_size": 1, "max_length": 256},
        checkpoint={"keep_last": 2},
    )
    config_file, run_dir = _write(config, tmp_path), tmp_path / "run"
    job = _start(config_file, run_dir)
    wait_for_phase(job, run_dir, 2, "generate")
    job.kill()
    job.wait()
    assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [0, 1]
    job = _start(config_file, run_dir)
    wait_for_phase(job, run_dir, 3, "train")
    job.kill()
    job.wait()
    assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [0, 1, 2]
    _tear_the_newest_wandb_segment(run_dir)  # as a wandb-core killed mid-flush leaves it
    last = _run(config_file, run_dir)
    assert last.returncode == 0, last.stderr[-3000:]
    assert "resuming after round 2" in last.stdout
    _assert_every_round_once(run_dir, 3)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round-0002", "round-0003"]


def _tear_the_newest_wandb_segment(run_dir):
    """Cut the last bytes off the newest W&B segment and add a chunk header promising more than follows."""
    newest = max(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda path: path.stat().st_mtime_ns)
    data = newest.read_bytes()
    newest.write_bytes(data[:-5] + b"\x00\x00\x00\x00\xff\x7f\x01")


def _ignore_file_size_signal():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE then fails with EFBIG


def test_sigint_twice_aborts_sigterm_stops_at_a_safe_point_and_the_run_resumes_after_each(
    tiny_model_path, tmp_path, capsys
):
    config = _config(tiny_model_path, train={"num_epochs": 20, "batch_size": 1, "max_length": 256})
    config_file, run_dir = _write(config, tmp_path), tmp_path / "run"
    job = _start(config_file, run_dir)
    wait_for_phase(job, run_dir, 1, "train")
    job.send_signal(signal.SIGINT)
    time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=120)
    # 130, or (seen once in a full suite run, not alone) death by SIGINT itself during interpreter shutdown after
    # the message: the same exit for a shell (130), and the abort and its message are what this asserts
    assert job.returncode in (130, -signal.SIGINT) and "aborted" in stderr, stderr[-3000:]
    assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [0]

    job = _start(config_file, run_dir)  # resumes after round 0
    wait_for_phase(job, run_dir, 2, "train")
    # another job on the same run directory while this one trains (in this process: it must start at once)
    assert main(["run", str(config_file), "--run-dir", str(run_dir)]) == 2
    assert f"is in use by another job (pid {job.pid} on this machine, since " in capsys.readouterr().err
    asked = time.monotonic()
    job.send_signal(signal.SIGTERM)
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr[-3000:]
    assert time.monotonic() - asked < 30  # training stopped after its current step, not after 80 steps
    assert "SIGTERM received: stopping at the next safe point" in stdout, stderr[-3000:]
    assert f"stopped by SIGTERM; rounds up to 1 are complete in {run_dir}. Resume with: onpolicy run" in stderr
    assert "Traceback" not in stderr
    assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [0, 1]

    resumed = _run(config_file, run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_every_round_once(run_dir, 3)


def test_a_disk_that_fills_up_while_checkpointing_stops_cleanly_and_resumes(tiny_model_path, tmp_path):
    config = _config(tiny_model_path, rounds=2, train={"num_epochs": 10, "batch_size": 1, "max_length": 256})
    config_file, run_dir = _write(config, tmp_path), tmp_path / "run"
    job = _start(config_file, run_dir, preexec_fn=_ignore_file_size_signal)
    wait_for_phase(job, run_dir, 1, "train")
    # From now on no file of the job may grow past 1 MB: the ~1.7 MB checkpoint after this round cannot be written.
    resource.prlimit(job.pid, resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 2, stderr[-3000:]
    assert "no space left writing" in stderr and "checkpoints/round-0001" in stderr
    assert "Traceback" not in stderr
    assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [0]
    assert not list(run_dir.rglob(".*.tmp"))  # no half-written checkpoint
    resumed = _run(config_file, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_every_round_once(run_dir, 2)


def test_a_changed_config_is_refused_unless_fresh_and_resume_needs_a_run_and_status_says_where_a_job_is(
    tiny_model_path, tmp_path, capsys
):
    config_file, run_dir = _write(_config(tiny_model_path, rounds=1), tmp_path), tmp_path / "run"
    assert _run(config_file, run_dir).returncode == 0
    # the status and state files say where the finished job is
    status = json.loads((run_dir / "status.json").read_text())
    assert status["round"] == 1 and status["phase"] == "done" and status["pid"] != os.getpid()
    state = json.loads((run_dir / "state.json").read_text())
    assert state["wandb_run_id"] in next((run_dir / "wandb").glob("offline-run-*")).name
    # refusals come before any model loads: checked in this process
    assert main(["run", str(config_file), "rounds=2", "train.learning_rate=0.5", "--run-dir", str(run_dir)]) == 2
    assert "holds a run with another config; changed: train.learning_rate (0.001 -> 0.5)" in capsys.readouterr().err
    assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [0, 1]  # untouched
    fresh = _run(config_file, run_dir, "train.learning_rate=0.5", "--fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "is now in" in fresh.stdout
    (aside,) = tmp_path.glob("run.replaced-*")
    assert [r["round"] for r in read_jsonl(aside / "rounds.jsonl")] == [0, 1]  # the old run is kept
    assert main(["run", str(config_file), "--resume", "--run-dir", str(tmp_path / "nothing-here")]) == 2
    assert "holds no run to resume" in capsys.readouterr().err


def test_a_reward_backend_down_all_along_stops_the_job_with_an_error(tiny_model_path, tmp_path):
    (tmp_path / "down.py").write_text(
        "def score(completion, prompt):\n    raise ConnectionError('reward server at http://rm:8000 refused')\n"
    )
    config = _config(
        tiny_model_path, rounds=4, stop_after_unscored_rounds=2, reward=[{"name": f"{tmp_path / 'down.py'}:score"}],
        eval={"prompts": None, "metrics": []},
    )  # fmt: skip
    config_file, run_dir = _write(config, tmp_path), tmp_path / "run"
    done = _run(config_file, run_dir)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "no sample got a reward in the last 2 rounds (rounds 1-2); e.g. reward " in done.stderr
    assert "raised ConnectionError: reward server at http://rm:8000 refused" in done.stderr
    assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [1, 2]  # the rounds run are kept
    assert not (run_dir / "final").exists()  # not a finished job


def test_how_training_is_spread_over_processes_may_change_on_resume_and_what_it_computes_may_not():
    from onpolicy.run.resume import _changed_settings

    differences = [
        ("train.sharding", "none", "fsdp2"), ("train.process_timeout_s", 60, 600), ("wandb.mode", "offline", "online"),
        ("train.beta", 0.1, 0.2), ("train.shardingx", 1, 2),
    ]  # fmt: skip
    assert _changed_settings(differences) == ["train.beta (0.1 -> 0.2)", "train.shardingx (1 -> 2)"]
