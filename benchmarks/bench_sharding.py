"""bench_sharding: what one training process holds, unsharded and sharded with FSDP2, for N = 1 and 2 processes.

Each variant is one job of its own (plain Python for one unsharded process, torchrun for the others) that runs
one round of DPO updates (two steps of 4 pairs each, AdamW) through the parts a job of several processes uses
(`onpolicy.train.distributed`, `onpolicy.train.sharding`), then reports from every process:
- parameters, gradients and optimizer states as that process holds them (its shards under FSDP2), measured
  after the first optimizer step by a global optimizer hook, where all three exist;
- the process's resident memory after the imports (what torch, transformers and TRL cost before any model: the
  part sharding cannot touch), after the policy is loaded (and sharded), after the first optimizer step, and at
  its peak, for the main process
  (which also gathers the whole policy to save it) and for the largest of the others;
- the update's seconds (the processes share this machine's cores: not a speed comparison between rows).
Then the policy is gathered and written as an HF folder, as a checkpoint is, so the gathering's memory is in the
peak too. The models: the tiny random Llama the tests build (2 layers, 128 wide) and the embedded
SmolLM2-135M-Instruct.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_sharding [--models tiny,embedded]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIB, MIB = 1024**3, 1024**2
# label: (processes, train.sharding)
VARIANTS = {
    "1 process": (1, "none"),
    "1 process, FSDP2": (1, "fsdp2"),
    "2 processes, DDP": (2, "none"),
    "2 processes, FSDP2": (2, "fsdp2"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,embedded", help="comma-separated: tiny, embedded")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL_PATH", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--sharding", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(*args.worker, args.sharding)
        return

    from benchmarks._common import embedded_model, print_table

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sharding-") as folder:
        models = {"tiny": lambda: _tiny_model(pathlib.Path(folder) / "tiny"), "embedded": embedded_model}
        for model in args.models.split(","):
            path = models[model]()
            baseline = None
            for label, (processes, sharding) in VARIANTS.items():
                reports = _run(path, processes, sharding, pathlib.Path(folder) / f"{model}-{len(rows)}")
                main, others = reports[0], reports[1:] or reports
                state = max(r["parameters"] + r["gradients"] + r["optimizer"] for r in reports)
                baseline = baseline or (state, main["peak_rss"])
                rows.append([
                    model, label, max(r["parameters"] for r in reports) / MIB,
                    max(r["gradients"] for r in reports) / MIB, max(r["optimizer"] for r in reports) / MIB,
                    state / MIB, f"{state / baseline[0]:.2f}",
                    max(r["imports_rss"] for r in reports) / GIB, max(r["loaded_rss"] for r in reports) / GIB,
                    max(r["step_rss"] for r in reports) / GIB,
                    main["peak_rss"] / GIB, f"{main['peak_rss'] / baseline[1]:.2f}",
                    max(r["peak_rss"] for r in others) / GIB, main["update_s"],
                ])  # fmt: skip
    print_table(
        "One round of DPO updates, per training process (the training state: the largest of the job's processes)",
        [
            "model", "job", "params MiB", "grads MiB", "optimizer MiB", "training state MiB", "state vs 1 process",
            "RSS after imports GiB", "RSS after loading GiB", "RSS after step 1 GiB", "peak RSS, main GiB",
            "main vs 1 process", "peak RSS, other GiB", "update s",
        ],
        rows,
    )  # fmt: skip


def _run(model_path: str, processes: int, sharding: str, out: pathlib.Path) -> list[dict]:
    """One variant as a job of its own; every process's report."""
    out.mkdir(parents=True)
    worker = ["-m", "benchmarks.bench_sharding", "--worker", str(model_path), str(out), "--sharding", sharding]
    launcher = (
        [sys.executable]
        if processes == 1 and sharding == "none"
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    )
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TQDM_DISABLE": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(
        [*launcher, *worker], cwd=ROOT, capture_output=True, text=True, env=environment, timeout=3600
    )
    if done.returncode != 0:
        raise SystemExit(f"{processes} process(es), sharding {sharding}: failed\n{done.stderr[-4000:]}")
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank-*.json"))]


def _worker(model_path: str, out: str, sharding: str) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from transformers import AutoTokenizer

    from onpolicy.config import RefConfig, TrainConfig
    from onpolicy.train import distributed
    from onpolicy.train.policy_storage import policy_storage
    from onpolicy.train.update import DPOUpdater

    imports_rss = _rss()
    train = TrainConfig(learning_rate=1e-4, batch_size=4, num_epochs=1, max_length=256, sharding=sharding)
    team = distributed.join(train)
    processes = team.size if team else 1
    held: dict[str, int] = {}

    def measure(optimizer: torch.optim.Optimizer, *_: object) -> None:
        if held:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        held["parameters"] = sum(_bytes(p) for p in params)
        held["gradients"] = sum(_bytes(p.grad) for p in params if p.grad is not None)
        held["optimizer"] = sum(
            _bytes(value) for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)
        )
        held["step_rss"] = _rss()

    register_optimizer_step_post_hook(measure)
    start = distributed.TrainerStart(
        initial_path=model_path, checkpoint=None, tokenizer_path=model_path,
        storage=policy_storage(train, team=team), reference=None, engine_dtype=None,
    )  # fmt: skip

    def build(start: distributed.TrainerStart) -> DPOUpdater:
        tokenizer = AutoTokenizer.from_pretrained(start.tokenizer_path)
        return DPOUpdater(
            start.initial_path, tokenizer, train, RefConfig(), processes=processes, storage=start.storage
        )

    report = {"update_s": 0.0}

    def build_and_measure(start: distributed.TrainerStart) -> DPOUpdater:
        updater = build(start)
        report["loaded_rss"] = _rss()  # the policy loaded (and sharded)
        return updater

    if team is not None and not team.is_main:  # trains what the main process sends, as in a job
        distributed.follow_main(team, build_and_measure, lambda: False)
    else:
        updater = build_and_measure(start)
        if team is not None:
            team.broadcast(start)
            updater = distributed.MirroredUpdater(updater, team, pathlib.Path(out) / "trainer-data")
        started = time.perf_counter()
        updater.start_round(1)
        updater.update(_pairs(), 1)
        report["update_s"] = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as folder:
            updater.save(pathlib.Path(folder) / "policy")  # gathered from the shards, as a checkpoint is
        if team is not None:
            updater.close()
    report.update(held, peak_rss=_peak_rss(), imports_rss=imports_rss)
    pathlib.Path(out, f"rank-{team.rank if team else 0}.json").write_text(json.dumps(report))
    if team is not None:
        team.leave()


def _pairs() -> list:
    """8 pairs, two batches of 4, a few dozen tokens each."""
    from onpolicy.types import Pair

    questions = ["Who are you?", "What is your name?", "Tell me about yourself.", "Hello!"] * 2
    return [
        Pair(
            prompt_id=str(i), messages=({"role": "user", "content": q},), chosen=f"My name is Athene. {q} " * 8,
            rejected="I am a small language model. " * 6, chosen_reward=1.0, rejected_reward=0.0,
        )  # fmt: skip
        for i, q in enumerate(questions)
    ]


def _bytes(tensor: object) -> int:
    from onpolicy.train.sharding import local

    shard = local(tensor)
    return shard.numel() * shard.element_size()


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tiny_model(path: pathlib.Path) -> str:
    sys.path.insert(0, str(ROOT))
    from tests.helpers import build_tiny_llama

    return str(build_tiny_llama(path))


if __name__ == "__main__":
    main()
