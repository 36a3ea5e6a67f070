"""Several training processes on this machine's CPUs (gloo): the same pairs give the same losses and weights in
2 processes as in 1; a run of `onpolicy run --processes 2` with one process killed mid-round, resumed to its end
by `accelerate launch` with the shipped DDP config; a SIGTERM to the launcher stops every process at a safe
point; the configurations that cannot work are refused before anything starts."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from safetensors.torch import load_file

from onpolicy.cli import main
from tests.helpers import ROOT, free_port, read_jsonl, tiny_config

# Two training processes need two devices: the tests pin the CPUs (gloo) on any machine, a one-GPU one included.
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}
TRAIN = {"learning_rate": 1.0e-3, "batch_size": 4, "max_length": 128, "num_epochs": 2}
VARIANTS = {
    "full fine-tuning, reference = round start": {"train": TRAIN},
    "LoRA, frozen reference, length-grouped batches": {
        "train": {**TRAIN, "group_by_length": True, "lora": {"r": 8, "target_modules": "all-linear"}},
        "ref": {"refresh": "never"},
    },
}


def _update_config(tiny_model_path, tmp_path, variant):
    config = {"model": {"path": str(tiny_model_path)}, "prompts": {"items": ["hi"]}, "reward": [{"name": "length"}]}
    path = tmp_path / "update.yaml"
    path.write_text(yaml.safe_dump({**config, **VARIANTS[variant]}))
    return path


def _run_update(command, config, out):
    done = subprocess.run(
        [*command, str(ROOT / "tests/distributed_update.py"), str(config), str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, **CPU_ONLY, "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.with_suffix(".json").read_text())["losses"], load_file(out.with_suffix(".safetensors"))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_train_as_one_on_the_same_pairs(tiny_model_path, tmp_path, variant):
    config = _update_config(tiny_model_path, tmp_path, variant)
    one_losses, one = _run_update([sys.executable], config, tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two_losses, two = _run_update(torchrun, config, tmp_path / "two")
    assert one_losses == pytest.approx(two_losses, abs=1e-6)
    initial = load_file(tiny_model_path / "model.safetensors")
    moved = max((one[k] - initial[k]).abs().max().item() for k in initial)
    apart = max((one[k] - two[k]).abs().max().item() for k in one)
    # the batches' sums are reduced in another order: float rounding, far below what two rounds moved the weights
    assert apart < 1e-4 and moved > 100 * apart, (moved, apart)
    assert not (tmp_path / "trainer-data").exists()


def _server_config(tiny_model_path, **changes):
    config = tiny_config(tiny_model_path, **changes)
    config["generation"] = {**config["generation"], "backend": "server", "server": {"port": free_port()}}
    return config


def _write(config, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_process_started_through_with_parent_ends_when_its_parent_is_killed():
    import psutil

    starter = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-m', 'onpolicy.generation.with_parent', 'sleep', '300'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", starter], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    time.sleep(1)  # `sleep` has replaced the wrapper (the request survives the exec)
    assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    parent.kill()  # no clean-up runs in the parent
    parent.wait()
    deadline = time.monotonic() + 10
    while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.1)


def test_a_sharding_accelerate_config_is_refused_not_quietly_run_as_ddp():
    from onpolicy.errors import ConfigError
    from onpolicy.train.distributed import check_strategy

    with pytest.raises(ConfigError, match="accelerate launched this job with FSDP"):
        check_strategy({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})
    with pytest.raises(ConfigError, match="with DeepSpeed"):
        check_strategy({"ACCELERATE_USE_DEEPSPEED": "True"})
    check_strategy({"ACCELERATE_USE_FSDP": "false"})  # what a DDP launch sets


def test_the_in_process_engine_and_an_uneven_batch_are_refused_before_anything_starts(
    tiny_model_path, tmp_path, capsys
):
    config = _write(tiny_config(tiny_model_path), tmp_path)
    assert main(["run", str(config), "--processes", "2", "--run-dir", str(tmp_path / "run")]) == 2
    assert "generation.backend=server" in capsys.readouterr().err
    config = _write(_server_config(tiny_model_path, train={"batch_size": 3}), tmp_path)
    assert main(["run", str(config), "--processes", "2", "--run-dir", str(tmp_path / "run")]) == 2
    assert "train.batch_size=3 is the batch of all 2 training processes together" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_training_process_killed_mid_round_stops_the_job_and_accelerate_launch_resumes_it(tiny_model_path, tmp_path):
    train = {"learning_rate": 1.0e-3, "batch_size": 2, "max_length": 128, "num_epochs": 20}  # a long train phase
    config = _server_config(tiny_model_path, rounds=3, train=train)
    port = config["generation"]["server"]["port"]
    config, run_dir = _write(config, tmp_path), tmp_path / "run"
    command = [sys.executable, "-m", "onpolicy.cli", "run", str(config), "--run-dir", str(run_dir), "--processes", "2"]
    job = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **CPU_ONLY}
    )
    _wait_for_phase(job, run_dir, 2, "train")
    os.kill(_training_process(job.pid, rank=1), signal.SIGKILL)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 137 and "training process 1 was ended by SIGKILL" in stderr, stderr[-3000:]
    assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [1]
    _wait_until_closed(port)  # the vLLM server went with the job
    accelerate = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/ddp.yaml"),
        "--num_processes", "2", "-m", "onpolicy.cli", "run", str(config), "--run-dir", str(run_dir),
    ]  # fmt: skip
    resumed = subprocess.run(
        accelerate, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **CPU_ONLY}
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming after round 1" in resumed.stdout and resumed.stdout.count("round 3/3") == 1  # one voice
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2, 3] and all(r["train/steps"] >= 1 for r in rounds)
    assert (run_dir / "final/model.safetensors").exists()
    assert not (run_dir / "trainer-data").exists() and not (run_dir / "weights-sync").exists()


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_process_at_a_safe_point(tiny_model_path, tmp_path):
    train = {"learning_rate": 1.0e-3, "batch_size": 2, "max_length": 128, "num_epochs": 40}
    config = _write(_server_config(tiny_model_path, rounds=2, train=train), tmp_path)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "onpolicy.cli", "run", str(config), "--run-dir", str(run_dir), "--processes", "2"]
    job = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **CPU_ONLY}
    )
    _wait_for_phase(job, run_dir, 1, "train")
    asked = time.monotonic()
    job.send_signal(signal.SIGTERM)
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr[-3000:]
    assert time.monotonic() - asked < 30  # every process stopped after its current step, not after 40 epochs
    assert stdout.count("SIGTERM received: stopping at the next safe point") == 1
    assert f"stopped by SIGTERM; rounds up to 0 are complete in {run_dir}" in stderr
    assert "Traceback" not in stderr
    assert not (run_dir / "rounds.jsonl").exists() or read_jsonl(run_dir / "rounds.jsonl") == []


def _wait_for_phase(job, run_dir, round_number, phase, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = json.loads((run_dir / "status.json").read_text())
            if (status["round"], status["phase"]) == (round_number, phase):
                return
        except (OSError, ValueError, KeyError):
            pass
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the run never reached the expected phase"
        time.sleep(0.2)


def _wait_until_closed(port, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        except OSError:
            return
        assert time.monotonic() < deadline, f"the server on port {port} outlived its job"
        time.sleep(1)


def _training_process(launcher_pid, rank):
    import psutil

    for child in psutil.Process(launcher_pid).children(recursive=True):
        if child.environ().get("RANK") == str(rank) and "onpolicy.cli" in child.cmdline():
            return child.pid
    raise AssertionError(f"no training process of rank {rank} under {launcher_pid}")
