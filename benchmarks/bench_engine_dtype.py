"""bench_engine_dtype: the engine's dtype on this CPU, float32 against bfloat16, over whole rounds of two configs.

`generation.dtype: auto` has to pick one of the two for CPUs with native bf16 (AVX512_BF16 / AMX). bf16 samples
faster there, but a bf16 engine's log-probs are not the fp32 trainer's, so with the default `ref.refresh:
every_round` the round pays a trainer reference pass that an fp32 engine's log-probs make unnecessary. Each
config runs once per dtype (W&B offline), with `ref.refresh=every_round`:

- configs/default.yaml: pairs of two samples, whose reference log-probs an fp32 engine provides;
- configs/identity.yaml: mostly edited pairs, which get the trainer's pass in either dtype.

The table holds medians over the rounds after the first (which carries one-off warm-ups) and what the run
learnt (the last round's mean reward; for the identity demo its eval/identity_rate and eval/leak_rate).

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_engine_dtype [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks._common import print_table, run_identity_demo_alone
from onpolicy.devices import NATIVE_BF16_FLAGS, cpu_flags

COLUMNS = [
    ("generate s", "perf/generate_s"),
    ("gen tok/s", "perf/gen_tokens_per_s"),
    ("ref log-probs s", "perf/ref_logps_s"),
    ("ref from engine", "perf/ref_from_engine"),
    ("train s", "perf/train_s"),
    ("round s", "perf/round_total_s"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["default.yaml", "identity.yaml"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()

    rows = []
    for config in args.configs:
        for dtype in args.dtypes:
            overrides = [f"rounds={args.rounds}", "ref.refresh=every_round", f"generation.dtype={dtype}"]
            records = run_identity_demo_alone(overrides, config_name=config)
            steady = [r for r in records if r["round"] >= 2]
            last = records[-1]
            learnt = f"reward {last['reward/mean']:.3f}"
            if "eval/identity_rate" in last:
                learnt += f", identity {last['eval/identity_rate']:.2f}, leak {last['eval/leak_rate']:.2f}"
            medians = [statistics.median(r.get(metric, 0.0) for r in steady) for _, metric in COLUMNS]
            rows.append([config, dtype, *medians, learnt])
    native = sorted(cpu_flags() & NATIVE_BF16_FLAGS) or ["none"]
    print_table(
        f"bench_engine_dtype: ref.refresh=every_round, medians of rounds 2-{args.rounds}; native bf16 flags: "
        f"{', '.join(native)}",
        ["config", "engine dtype", *(label for label, _ in COLUMNS), "last round"],
        rows,
    )


if __name__ == "__main__":
    main()
