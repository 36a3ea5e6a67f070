"""The trainer side on a GPU: the same two rounds of DPO updates as tests/test_distributed.py, on CUDA against the
CPU, with and without LoRA, with bf16, and through `accelerate launch` with the shipped DDP config.

vLLM's CPU build cannot run on a GPU machine, so these tests check the training half of a job (what a GPU node
runs beside a `vllm serve` on other GPUs). They are skipped where torch sees no GPU, as in CI; on a GPU machine:
`.venv/bin/python -m pytest tests/test_cuda.py`.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}
TRAIN = {"learning_rate": 1.0e-3, "batch_size": 4, "max_length": 128, "num_epochs": 2}
LORA = {"r": 8, "target_modules": "all-linear"}
# float32 variants: the GPU must give the CPU's numbers, to float rounding
EXACT = {
    "full fine-tuning": {"train": TRAIN},
    "LoRA, frozen reference": {"train": {**TRAIN, "lora": LORA}, "ref": {"refresh": "never"}},
}
# bf16 variants: what a GPU job runs (autocast, or bf16 weights under LoRA), close to the float32 CPU numbers
BF16 = {
    "full fine-tuning, bf16 autocast": ({"train": {**TRAIN, "bf16": True}}, "full fine-tuning"),
    "LoRA on bf16 weights": (
        {"model": {"train_dtype": "bfloat16"}, "train": {**TRAIN, "lora": LORA}, "ref": {"refresh": "never"}},
        "LoRA, frozen reference",
    ),
}


def _config(tiny_model_path, tmp_path, name, variant):
    base = {"prompts": {"items": ["hi"]}, "reward": [{"name": "length"}]}
    model = {"path": str(tiny_model_path), **variant.get("model", {})}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**base, **variant, "model": model}))
    return path


def _run_update(command, config, out, env=()):
    done = subprocess.run(
        [*command, str(ROOT / "tests/distributed_update.py"), str(config), str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", **dict(env)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    return result["losses"], result["device"], load_file(out.with_suffix(".safetensors"))


@pytest.mark.parametrize("variant", list(EXACT))
def test_the_gpu_trains_as_the_cpu_does(tiny_model_path, tmp_path, variant):
    config = _config(tiny_model_path, tmp_path, "update", EXACT[variant])
    gpu_losses, gpu_device, gpu = _run_update([sys.executable], config, tmp_path / "gpu")
    cpu_losses, cpu_device, cpu = _run_update([sys.executable], config, tmp_path / "cpu", CPU_ONLY)
    assert (gpu_device, cpu_device) == ("cuda", "cpu")
    assert gpu_losses == pytest.approx(cpu_losses, abs=1e-4)
    # Adam divides each step by the gradient's running size, so the few weights whose gradients are near zero
    # step apart by the other device's rounding (measured on an H100: 1.1e-4 apart, for 8e-3 moved)
    initial = load_file(tiny_model_path / "model.safetensors")
    moved = max((gpu[k] - initial[k]).abs().max().item() for k in initial)
    apart = max((gpu[k] - cpu[k]).abs().max().item() for k in initial)
    assert moved > 20 * apart, (moved, apart)
    assert _cosine(_update(gpu, initial), _update(cpu, initial)) > 0.999


@pytest.mark.parametrize("variant", list(BF16))
def test_bf16_on_the_gpu_trains_close_to_float32(tiny_model_path, tmp_path, variant):
    bf16, float32 = BF16[variant]
    gpu_losses, device, gpu = _run_update(
        [sys.executable], _config(tiny_model_path, tmp_path, "bf16", bf16), tmp_path / "gpu"
    )
    cpu_losses, _, cpu = _run_update(
        [sys.executable], _config(tiny_model_path, tmp_path, "fp32", EXACT[float32]), tmp_path / "cpu", CPU_ONLY
    )
    assert device == "cuda"
    assert gpu_losses == pytest.approx(cpu_losses, abs=1e-2)
    # bf16 rounds single weights apart by up to half of what they moved (Adam's steps are sign-like), but the
    # update as a whole points the same way (cosine 0.999 between bf16 and float32 on the CPU)
    initial = load_file(tiny_model_path / "model.safetensors")
    assert _cosine(_update(gpu, initial), _update(cpu, initial)) > 0.95


def _update(weights, initial):
    """The flattened change of `weights` from `initial` (rounded first to the weights' dtype)."""
    return torch.cat([(weights[k].float() - initial[k].to(weights[k].dtype).float()).flatten() for k in initial])


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def test_accelerate_launch_with_the_ddp_config_trains_on_the_gpu(tiny_model_path, tmp_path):
    config = _config(tiny_model_path, tmp_path, "update", EXACT["full fine-tuning"])
    accelerate = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/ddp.yaml"),
        "--num_processes", "1",
    ]  # fmt: skip
    launched_losses, device, launched = _run_update(accelerate, config, tmp_path / "launched")
    plain_losses, _, plain = _run_update([sys.executable], config, tmp_path / "plain")
    assert device == "cuda"
    assert launched_losses == pytest.approx(plain_losses, abs=1e-6)
    assert max((launched[k] - plain[k]).abs().max().item() for k in plain) < 1e-5


@pytest.mark.parametrize(("refresh", "lora"), [("mix", None), ("every_round", LORA)], ids=["mix", "lora"])
def test_a_mixed_reference_and_the_kl_estimate_on_the_gpu(tiny_model_path, refresh, lora):
    """What the trainer keeps beside the policy (a mixed reference, the copies the KL estimate compares with) sits
    where the trainer put the policy, and the numbers stay what they are on the CPU."""
    import math

    from transformers import AutoTokenizer

    from onpolicy.config import RefConfig, TrainConfig
    from onpolicy.train.update import DPOUpdater
    from tests.helpers import PAIRS
    from tests.test_update import _cpu_state, _reference_model, _sample_groups

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    train = TrainConfig(learning_rate=1e-3, batch_size=4, num_epochs=1, max_length=64, lora=lora)
    updater = DPOUpdater(str(tiny_model_path), tokenizer, train, RefConfig(refresh=refresh), kl=True)
    groups = _sample_groups(tokenizer)
    for n in (1, 2):
        updater.start_round(n)
        updater.update(PAIRS, round_number=n)
    assert next(updater.policy.parameters()).is_cuda
    kl = updater.kl_from_samples(groups)
    assert set(kl) == {f"eval/kl_{m}{s}" for m in ("initial", "reference") for s in ("", "_per_token")}
    assert all(math.isfinite(v) for v in kl.values()) and kl["eval/kl_initial"] != kl["eval/kl_reference"]
    if refresh == "mix":
        before, policy = _cpu_state(_reference_model(updater)), _cpu_state(updater.policy)
        updater.start_round(3)
        for name, tensor in _cpu_state(_reference_model(updater)).items():
            torch.testing.assert_close(tensor, 0.5 * policy[name] + 0.5 * before[name])
    else:
        updater.start_round(3)  # the round's starting policy is the reference: nothing between them
        assert updater.kl_from_samples(groups)["eval/kl_reference"] == 0.0


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_fsdp2_sharding_trains_on_the_gpu_as_unsharded_training_does(tiny_model_path, tmp_path, launcher):
    """One process (NCCL) with the policy sharded by FSDP2 over it: accelerate's FSDP2 path on a GPU, which the
    CPU tests reach only through `onpolicy.train.sharding.enable_on_cpus`."""
    variant = {"train": {**TRAIN, "sharding": "fsdp2"}, "ref": {"refresh": "mix", "mix": 0.5}}
    sharded_config = _config(tiny_model_path, tmp_path, "sharded", variant)
    plain_config = _config(tiny_model_path, tmp_path, "plain", {**variant, "train": TRAIN})
    command = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
        if launcher == "torchrun"
        else [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs/accelerate/fsdp2.yaml"), "--num_processes", "1",
        ]
    )  # fmt: skip
    sharded_losses, device, sharded = _run_update(command, sharded_config, tmp_path / "sharded")
    plain_losses, _, plain = _run_update([sys.executable], plain_config, tmp_path / "plain")
    assert device == "cuda"
    assert sharded_losses == pytest.approx(plain_losses, abs=1e-5)
    initial = load_file(tiny_model_path / "model.safetensors")
    assert all(not sharded[k].equal(initial[k]) for k in initial)  # every weight trained, the head's unit too
    assert max((sharded[k] - plain[k]).abs().max().item() for k in plain) < 1e-4


def test_the_layout_places_the_job_on_the_gpus_torch_sees(tiny_model_path):
    """The plan a job on this machine follows: trainer 0 and the sleeping engine on the first GPU; servers on the
    GPUs a trainer leaves, each with its own CUDA_VISIBLE_DEVICES; the memory check against the GPU's real size."""
    from onpolicy.config import Config
    from onpolicy.generation.placement import plan_layout, this_machine

    machine = this_machine()
    count = torch.cuda.device_count()
    assert len(machine.gpus) == count and machine.gpu_memory_gib is not None and machine.gpu_memory_gib > 1
    base = {"prompts": {"items": ["hi"]}, "reward": [{"name": "length", "args": {"target": 3}}]}
    engine = Config.model_validate({**base, "model": {"path": str(tiny_model_path)}})
    layout = plan_layout(engine, 1, machine, model_folder=tiny_model_path)
    assert layout.engine is not None and layout.engine.gpus == machine.gpus[:1] and layout.engine.sleep_level == 2
    assert layout.engine.args["enable_sleep_mode"] and "kv_cache_memory_bytes" not in layout.engine.args
    assert layout.memory_note is not None and "leaving" in layout.memory_note
    if count > 1:
        servers = Config.model_validate({**base, "generation": {"backend": "server", "server": {"launch": count - 1}}})
        placed = plan_layout(servers, 1, machine)
        assert [dict(s.env) for s in placed.servers] == [{"CUDA_VISIBLE_DEVICES": str(g)} for g in machine.gpus[1:]]
        assert {s.sync for s in placed.servers} == {"nccl"}
