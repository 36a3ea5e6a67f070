"""bench_scale: one round at 32, 256 and 2048 prompts, to see whether any phase costs more per prompt as a round
grows.

Each round is a job of its own (a fresh process: its peak memory is its own) on the tiny random Llama the tests
build (2 layers, 128 wide), K=4 samples of up to 16 tokens, one DPO epoch, W&B offline, scored by a rule
(`length`) or by a reward model (the tiny random sequence classifier the tests build, `batch_size` 32). Per
phase: milliseconds per prompt at each size, and the ratio of the largest round's to the smallest's (1: the
phase scales linearly). Then the job's peak resident memory and the bytes its run directory holds (the
checkpoint apart).

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_scale [--sizes 32,256,2048]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import pathlib
import sys
import tempfile
from typing import Any

from benchmarks._common import peak_rss_gib, print_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
PHASES = ("generate", "score", "pair", "train", "sync", "record", "checkpoint")
WORDS = "who what where when why how tell me about the a story poem name capital river number list".split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,256,2048")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    sys.path.insert(0, str(ROOT))
    from tests.helpers import build_tiny_llama, build_tiny_reward_model

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        model = build_tiny_llama(pathlib.Path(folder) / "policy")
        rewards = {
            "rule": [{"name": "length", "args": {"target": 40, "unit": "chars"}}],
            "reward model": [{"name": "reward_model", "args": {
                "path": str(build_tiny_reward_model(pathlib.Path(folder) / "rm")), "batch_size": 32,
                "device": "cpu", "dtype": "float32",
            }}],
        }  # fmt: skip
        runs = {
            (reward, size): _alone(str(model), terms, size, pathlib.Path(folder) / f"run-{n}-{size}")
            for n, (reward, terms) in enumerate(rewards.items())
            for size in sizes
        }
    for reward in rewards:
        rows = []
        for phase in (*PHASES, "round"):
            key = "perf/round_total_s" if phase == "round" else f"perf/{phase}_s"
            per_prompt = [runs[reward, size]["record"].get(key, 0.0) / size * 1000 for size in sizes]
            rows.append([phase, *per_prompt, per_prompt[-1] / per_prompt[0] if per_prompt[0] else float("nan")])
        rows.append(["peak RSS (GiB)", *(runs[reward, size]["peak_rss_gib"] for size in sizes), ""])
        written = [runs[reward, size]["records_mib"] for size in sizes]
        rows.append(["bytes written, checkpoint and final/ apart (MiB)", *written, ""])
        print_table(
            f"bench_scale: one round scored by a {reward}, milliseconds per prompt (tiny Llama, K=4)",
            ["phase", *(f"{size} prompts" for size in sizes), f"{sizes[-1]} / {sizes[0]}"],
            rows,
        )


def _alone(model: str, reward: list[dict[str, Any]], size: int, run_dir: pathlib.Path) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_one_round, model, reward, size, str(run_dir)).result()


def _one_round(model: str, reward: list[dict[str, Any]], size: int, run_dir: str) -> dict[str, Any]:
    from onpolicy.config import Config
    from onpolicy.loop import run_job
    from onpolicy.run.rundir import RunDirectory

    prompts = [" ".join(WORDS[(n * 7 + i) % len(WORDS)] for i in range(3 + n % 5)) + f" {n}?" for n in range(size)]
    config = Config.model_validate({
        "rounds": 1,
        "model": {"path": model},
        "prompts": {"items": prompts, "per_round": size},
        "generation": {"num_samples": 4, "max_new_tokens": 16, "max_model_len": 256, "kv_cache_gib": 0.5,
                       "dtype": "float32"},
        "reward": reward,
        "train": {"batch_size": 32, "max_length": 64, "learning_rate": 1.0e-4},
        "ref": {"refresh": "never"},
        "checkpoint": {"keep_last": 1},
        "wandb": {"mode": "offline"},
        "progress_every_s": 0,
    })  # fmt: skip
    path = pathlib.Path(run_dir)
    run_job(config, path, echo=lambda line: None)
    [record] = RunDirectory(path).read_rounds()
    written = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "checkpoints" not in f.parts)
    written -= sum(f.stat().st_size for f in (path / "final").rglob("*") if f.is_file())
    return {"record": record, "peak_rss_gib": peak_rss_gib(), "records_mib": written / 1024**2}


if __name__ == "__main__":
    main()
