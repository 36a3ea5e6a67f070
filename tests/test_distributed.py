"""Several training processes on this machine's CPUs (gloo): the same pairs give the same losses and weights in
2 processes as in 1, data-parallel and FSDP2-sharded; a run with one process killed mid-round (on one node, and
on the second of two simulated nodes), resumed to its end by `accelerate launch` with the shipped DDP or FSDP2
config; a SIGTERM to the launcher stops every process at a safe point; the configurations that cannot work are
refused before anything starts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from onpolicy.cli import main
from onpolicy.config import load_config
from tests.helpers import ROOT, free_port, is_up, read_jsonl, tiny_config

# Two training processes need two devices: the tests pin the CPUs (gloo) on any machine, a one-GPU one included.
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}
TRAIN = {"learning_rate": 1.0e-3, "batch_size": 4, "max_length": 128, "num_epochs": 2}
VARIANTS = {
    "full fine-tuning, reference = round start": {"train": TRAIN},
    "LoRA, frozen reference, length-grouped batches": {
        "train": {**TRAIN, "group_by_length": True, "lora": {"r": 8, "target_modules": "all-linear"}},
        "ref": {"refresh": "never"},
    },
    # each process holds half of every weight; the mixed reference is each process's half too, swapped in for
    # TRL's reference pass (round 2's reference is the mix of two policies)
    "FSDP2 sharding, mixed reference, KL estimate": {
        "train": {**TRAIN, "sharding": "fsdp2"},
        "ref": {"refresh": "mix", "mix": 0.5},
        "eval": {"prompts": {"items": ["hi"]}, "kl_samples": 2},
    },
}


def _update_config(tiny_model_path, tmp_path, variant, processes):
    """The variant's config for `processes` processes (one process trains unsharded: what sharding must match)."""
    config = {"model": {"path": str(tiny_model_path)}, "prompts": {"items": ["hi"]}, "reward": [{"name": "length"}]}
    config.update(VARIANTS[variant])
    if processes == 1:
        config["train"] = {**config["train"], "sharding": "none"}
    path = tmp_path / f"update-{processes}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_update(command, config, out):
    done = subprocess.run(
        [*command, str(ROOT / "tests/distributed_update.py"), str(config), str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, **CPU_ONLY, "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    refresh = load_config(config).ref.refresh
    assert result["reference"] == REFERENCE_KINDS[refresh]  # the variant's reference is the one it trained with
    return result["losses"], result["kl"], load_file(out.with_suffix(".safetensors"))


REFERENCE_KINDS = {"every_round": "RoundStartReference", "never": "FrozenReference", "mix": "MixedReference"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_train_as_one_on_the_same_pairs(tiny_model_path, tmp_path, variant):
    config = _update_config(tiny_model_path, tmp_path, variant, 1)
    one_losses, one_kl, one = _run_update([sys.executable], config, tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    config = _update_config(tiny_model_path, tmp_path, variant, 2)
    two_losses, two_kl, two = _run_update(torchrun, config, tmp_path / "two")
    assert one_losses == pytest.approx(two_losses, abs=1e-6)
    assert one_kl == pytest.approx(two_kl, abs=1e-5) and (one_kl == {} or one_kl["eval/kl_reference"] != 0.0)
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


def test_the_trainers_steps_have_their_own_shorter_bound_than_the_wait_for_the_main_process():
    """A node lost mid-gather must not hold every GPU for the day the others may wait for a round's generation.
    (In a process of its own: a process group another test left would be taken as it is.)"""
    script = (
        "import torch, torch.distributed as dist\n"
        "from onpolicy.config import TrainConfig\n"
        "from onpolicy.train import distributed\n"
        "distributed.launched_processes = lambda: 2  # as one of two launched processes\n"
        "team = distributed.join(TrainConfig(batch_size=2, process_timeout_s=86400, collective_timeout_s=600))\n"
        "trainers = dist.distributed_c10d._get_default_group()._get_backend(torch.device('cpu'))\n"
        "commands = team._commands._get_backend(torch.device('cpu'))\n"
        "print(trainers.options._timeout.total_seconds(), commands.options._timeout.total_seconds())\n"
        "team.leave()\n"
    )
    environment = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, **CPU_ONLY, **environment, "MASTER_PORT": str(free_port())},  # gloo's group, on any machine
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["600.0", "86400.0"]


def test_what_sharded_training_does_not_run_is_refused_with_its_reason():
    from onpolicy.errors import ConfigError
    from onpolicy.train.sharding import sharded_job

    assert sharded_job("none", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})  # an FSDP2 accelerate launch
    assert sharded_job("fsdp2", {})
    assert not sharded_job("none", {"ACCELERATE_USE_FSDP": "false"})  # what a DDP launch sets
    with pytest.raises(ConfigError, match="FSDP version 1; onpolicy shards with FSDP2"):
        sharded_job("none", {"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(ConfigError, match="with DeepSpeed, which onpolicy does not run"):
        sharded_job("none", {"ACCELERATE_USE_DEEPSPEED": "True"})
    with pytest.raises(ConfigError, match="train.lora with FSDP2 sharding is not supported"):
        load_config(None, ["model.path=x", "train.sharding=fsdp2", "train.lora.r=8"])


def test_sharding_without_a_launcher_is_refused(tiny_model_path, tmp_path, capsys):
    config = _write(_server_config(tiny_model_path, train={"sharding": "fsdp2"}), tmp_path)
    assert main(["run", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    assert "train.sharding=fsdp2 shards the policy over training processes started by a launcher" in (
        capsys.readouterr().err
    )


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


# (train.sharding, nodes). Two nodes are simulated on this machine, one launcher per node as on a cluster, one
# process each, joined over 127.0.0.1, on one run directory (the cluster's shared storage). Each launch (one node,
# two) and each sharding runs once: how the processes are launched and how they shard the policy are apart in the
# code, so DDP on two nodes and FSDP2 on one would run nothing the two layouts here do not (the suite's time goes
# elsewhere).
LAYOUTS = {"DDP": ("none", 1), "FSDP2, two nodes": ("fsdp2", 2)}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_training_process_killed_mid_round_stops_the_job_and_accelerate_launch_resumes_it(
    tiny_model_path, tmp_path, layout
):
    sharding, nodes = LAYOUTS[layout]
    train = {"learning_rate": 1.0e-3, "batch_size": 2, "max_length": 128, "num_epochs": 20}  # a long train phase
    config = _server_config(tiny_model_path, rounds=2, train={**train, "sharding": sharding})
    port = config["generation"]["server"]["port"]
    config, run_dir = _write(config, tmp_path), tmp_path / "run"
    job = ["-m", "onpolicy.cli", "run", str(config), "--run-dir", str(run_dir)]
    if nodes == 1:
        launches = [[sys.executable, *job, "--processes", "2"]]  # onpolicy starts torchrun
    else:
        rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port"]
        torchrun = [sys.executable, "-m", "torch.distributed.run", *rendezvous, str(free_port())]
        launches = [[*torchrun, "--node_rank", str(node), *job] for node in range(nodes)]
    started = [_start(command) for command in launches]
    _wait_for_phase(started[0], run_dir, 2, "train")
    os.kill(_training_process(started[-1].pid, rank=1), signal.SIGKILL)  # the second node's, where there are two
    outputs = [launched.communicate(timeout=300) for launched in started]
    stderr = outputs[0][1]
    if nodes == 1:
        assert started[0].returncode == 137 and "training process 1 was ended by SIGKILL" in stderr, stderr[-3000:]
    else:  # the main process saw the other node's process go: it says so, and stops
        assert started[0].returncode == 1, stderr[-3000:]
        assert "onpolicy: another training process of this job is gone" in stderr, stderr[-3000:]
        # one line of the job's own (torchrun then reports its child's exit code, as for any job that fails)
        assert "rounds up to 1 are complete in" in stderr and "[rank0]" not in stderr, stderr[-3000:]
    assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [1]
    _wait_until_closed(port)  # the vLLM server went with the job

    accelerate = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "configs/accelerate" / ("ddp.yaml" if sharding == "none" else "fsdp2.yaml")), "--num_processes", "2",
    ]  # fmt: skip
    if nodes == 1:
        launches = [[*accelerate, *job]]
    else:
        address = ["--num_machines", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
        launches = [[*accelerate, *address, "--machine_rank", str(node), *job] for node in range(nodes)]
    resumed = [_start(command) for command in launches]
    outputs = [launched.communicate(timeout=600) for launched in resumed]
    for launched, (stdout, stderr) in zip(resumed, outputs, strict=True):
        assert launched.returncode == 0, stdout[-2000:] + stderr[-3000:]
    stdout = outputs[0][0]
    assert "resuming after round 1" in stdout and stdout.count("round 2/2") == 1  # one voice
    assert all("round" not in out for out, _ in outputs[1:])  # the other node's first process is not a main one
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2] and all(r["train/steps"] >= 1 for r in rounds)
    # final/ is an ordinary HF folder of the whole policy, every weight of it trained (a sharded one gathered)
    final, initial = load_file(run_dir / "final/model.safetensors"), load_file(tiny_model_path / "model.safetensors")
    assert final.keys() == initial.keys()
    assert all(final[k].shape == initial[k].shape and not final[k].equal(initial[k]) for k in initial)
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 2  # one W&B run per launch of the job, not per node
    assert not (run_dir / "trainer-data").exists() and not (run_dir / "weights-sync").exists()


def _start(command):
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **CPU_ONLY}
    )


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["none", "fsdp2"])
def test_sigterm_to_the_launcher_stops_every_process_at_a_safe_point(tiny_model_path, tmp_path, sharding):
    train = {"learning_rate": 1.0e-3, "batch_size": 2, "max_length": 128, "num_epochs": 40, "sharding": sharding}
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
    while is_up(f"http://127.0.0.1:{port}"):
        assert time.monotonic() < deadline, f"the server on port {port} outlived its job"
        time.sleep(1)


def _training_process(launcher_pid, rank):
    import psutil

    for child in psutil.Process(launcher_pid).children(recursive=True):
        if child.environ().get("RANK") == str(rank) and "onpolicy.cli" in child.cmdline():
            return child.pid
    raise AssertionError(f"no training process of rank {rank} under {launcher_pid}")
