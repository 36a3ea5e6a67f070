"""bench_server: generation in the job's own engine against a `vllm serve` process, over whole rounds.

The same config runs once per backend (W&B offline): `generation.backend=engine` (one vLLM engine in the job's
process, weights handed over in memory) and `generation.backend=server` (a `vllm serve` process started by the
job, weights written to the sync folder as safetensors and reloaded by the server through `/collective_rpc`).
The table holds medians over the rounds after the first (which carries one-off warm-ups): the weight sync, the
sampling, and the whole round; and the set-up (engine or server start and policy load).

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_server [--rounds 3] [--config default.yaml]
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks._common import print_table, run_identity_demo_alone

COLUMNS = [
    ("sync s", "perf/sync_s"),
    ("generate s", "perf/generate_s"),
    ("gen tok/s", "perf/gen_tokens_per_s"),
    ("train s", "perf/train_s"),
    ("round s", "perf/round_total_s"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default="default.yaml")
    args = parser.parse_args()

    rows = []
    for backend in ("engine", "server"):
        overrides = [f"rounds={args.rounds}", f"generation.backend={backend}", "generation.dtype=float32"]
        records = run_identity_demo_alone(overrides, config_name=args.config)
        steady = [r for r in records if r["round"] >= 2]
        rows.append([backend, *(statistics.median(r[metric] for r in steady) for _, metric in COLUMNS)])
    print_table(
        f"bench_server: configs/{args.config}, engine float32, medians of rounds 2-{args.rounds}",
        ["generation.backend", *(label for label, _ in COLUMNS)],
        rows,
    )


if __name__ == "__main__":
    main()
