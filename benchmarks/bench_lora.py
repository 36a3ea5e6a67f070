"""bench_lora: the identity demo trained with a LoRA adapter against full fine-tuning, side by side.

Runs configs/identity.yaml (W&B offline) once with every weight trained and once with `train.lora` (merged
weights into the engine, the reference an adapter state), for `--rounds` rounds each, and prints per method the
medians over rounds 2.. of the update's optimizer-step time and the job's peak memory, and the held-out
identity and leak rates after each round.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_lora [--rounds 5] [--lora-lr 5e-4]
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks._common import print_table, run_identity_demo

LORA = "train.lora={r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: all-linear}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    args = parser.parse_args()

    methods = {
        "full fine-tuning": [],
        "LoRA r=16, all linear layers": [LORA, f"train.learning_rate={args.lora_lr}"],
    }
    rows = []
    for label, overrides in methods.items():
        records = [r for r in run_identity_demo([f"rounds={args.rounds}", *overrides]) if r["round"] >= 1]
        steady = [r for r in records if r["round"] >= 2]
        rows.append(
            [
                label,
                statistics.median(r["perf/train_steps_s"] for r in steady),
                statistics.median(r["perf/train_s"] for r in steady),
                max(r["perf/peak_rss_gib"] for r in records),
                " ".join(f"{r['eval/identity_rate']:.2f}" for r in records),
                " ".join(f"{r['eval/leak_rate']:.2f}" for r in records),
            ]
        )
    print_table(
        f"bench_lora: configs/identity.yaml, {args.rounds} rounds, LoRA learning rate {args.lora_lr:g}; "
        "medians of rounds 2..",
        ["method", "optimizer steps s", "train s", "peak RSS GiB", "identity by round", "leak by round"],
        rows,
    )


if __name__ == "__main__":
    main()
