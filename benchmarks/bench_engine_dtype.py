"""bench_engine_dtype: the engine's dtype on this CPU, float32 against bfloat16, over whole identity-demo rounds.

`generation.dtype: auto` has to pick one of the two for CPUs with native bf16 (AVX512_BF16 / AMX). bf16 samples
faster there, but a bf16 engine's log-probs are not the fp32 trainer's, so with the default `ref.refresh:
every_round` the round pays a trainer reference pass that an fp32 engine's log-probs make unnecessary. This runs
configs/identity.yaml with `ref.refresh=every_round` once per dtype (W&B offline) and compares the rounds after
the first (which carries one-off warm-ups): medians of generation time and speed, reference log-prob time and
source, and the whole round, with the learning the run shows (eval/identity_rate, eval/leak_rate).

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_engine_dtype [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks._common import print_table, run_identity_demo
from onpolicy.devices import cpu_flags

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
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()

    rows = []
    for dtype in args.dtypes:
        records = run_identity_demo([f"rounds={args.rounds}", "ref.refresh=every_round", f"generation.dtype={dtype}"])
        steady = [r for r in records if r["round"] >= 2]
        last = records[-1]
        rows.append(
            [dtype]
            + [statistics.median(r.get(metric, 0.0) for r in steady) for _, metric in COLUMNS]
            + [last["eval/identity_rate"], last["eval/leak_rate"]]
        )
    native = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"}) or ["none"]
    print_table(
        f"bench_engine_dtype: configs/identity.yaml, ref.refresh=every_round, medians of rounds 2-{args.rounds}; "
        f"native bf16 flags: {', '.join(native)}",
        ["engine dtype", *(label for label, _ in COLUMNS), "identity (last round)", "leak (last round)"],
        rows,
    )


if __name__ == "__main__":
    main()
