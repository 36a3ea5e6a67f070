"""bench_lora: the identity demo trained with a LoRA adapter against full fine-tuning, and the two ways a LoRA
policy reaches the engine, side by side.

Runs configs/identity.yaml (W&B offline) with every weight trained, with `train.lora` and merged weights sent to
the engine (`generation.lora_sync: merged`), and with `train.lora` and the adapter alone sent to the engine
(`lora_sync: adapter`, vLLM's LoRA support), for `--rounds` rounds each, and prints per method the medians over
rounds 2.. of the update's optimizer-step time, generation time and sync time, the job's peak memory, and the
held-out identity and leak rates after each round.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_lora [--rounds 5] [--lora-lr 5e-4]
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks._common import print_table, run_identity_demo_alone

LORA = "train.lora={r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: all-linear}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    args = parser.parse_args()

    methods = {
        "full fine-tuning": [],
        "LoRA r=16, all linear, merged to the engine": [LORA, f"train.learning_rate={args.lora_lr}"],
        "LoRA r=16, all linear, adapter to the engine": [
            LORA,
            f"train.learning_rate={args.lora_lr}",
            "generation.lora_sync=adapter",
        ],
    }
    rows = []
    for label, overrides in methods.items():
        records = [r for r in run_identity_demo_alone([f"rounds={args.rounds}", *overrides]) if r["round"] >= 1]
        steady = [r for r in records if r["round"] >= 2]
        rows.append(
            [
                label,
                statistics.median(r["perf/train_steps_s"] for r in steady),
                statistics.median(r["perf/train_s"] for r in steady),
                statistics.median(r["perf/generate_s"] for r in steady),
                statistics.median(r["perf/sync_s"] for r in steady),
                max(r["perf/peak_rss_gib"] for r in records),
                " ".join(f"{r['eval/identity_rate']:.2f}" for r in records),
                " ".join(f"{r['eval/leak_rate']:.2f}" for r in records),
            ]
        )
    print_table(
        f"bench_lora: configs/identity.yaml, {args.rounds} rounds, LoRA learning rate {args.lora_lr:g}; "
        "medians of rounds 2..",
        ["method", "optimizer steps s", "train s", "generate s", "sync s", "peak RSS GiB", "identity", "leak"],
        rows,
    )


if __name__ == "__main__":
    main()
