"""bench_round: where a round's seconds go, phase by phase, in the identity demo (configs/identity.yaml).

Runs the demo's job for `--rounds` rounds (W&B offline) into a temporary run directory and reads each round's
`perf/` metrics from rounds.jsonl. The last round is the standard one (the first carries one-off warm-ups).
The goal: everything but generating, scoring and training (pairing, moving weights into the engine, writing
the round's records and its checkpoint, and anything unaccounted for) is at most 5% of the round; the
held-out evaluation, a generation pass the demo runs each round, is shown apart.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_round [--rounds 2]
"""

from __future__ import annotations

import argparse

from benchmarks._common import print_table, run_identity_demo

# (label, metric, counts as work: generate / score / train)
PHASES = [
    ("generate", "perf/generate_s", True),
    ("score", "perf/score_s", True),
    ("train: trainer set-up", "perf/train_setup_s", True),
    ("train: reference log-probs", "perf/ref_logps_s", True),
    ("train: optimizer steps", "perf/train_steps_s", True),
    ("pair", "perf/pair_s", False),
    ("sync weights into the engine", "perf/sync_s", False),
    ("write samples and pairs", "perf/record_s", False),
    ("checkpoint", "perf/checkpoint_s", False),
]
TRAIN_PARTS = ("perf/train_setup_s", "perf/ref_logps_s", "perf/train_steps_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    last = run_identity_demo([f"rounds={args.rounds}"])[-1]
    total = last["perf/round_total_s"]
    rows = [(label, last.get(metric, 0.0), work) for label, metric, work in PHASES]
    train_parts = sum(last.get(metric, 0.0) for _, metric, _ in PHASES if metric in TRAIN_PARTS)
    rows.append(("train: other (reference refresh, clean-up)", last["perf/train_s"] - train_parts, True))
    rows.append(("evaluate (held-out prompts, greedy)", last.get("perf/eval_s", 0.0), True))
    rows.append(("other (status file, bookkeeping)", total - sum(seconds for _, seconds, _ in rows), False))
    overhead = sum(seconds for _, seconds, work in rows if not work)
    rows += [("overhead: all but generate, score, train, evaluate", overhead, False), ("round", total, True)]
    print_table(
        f"bench_round: round {last['round']} of configs/identity.yaml ({int(last['pairs/kept'])} pairs, "
        f"{int(last['gen/samples'])} samples), SmolLM2-135M",
        ["phase", "seconds", "share of the round"],
        [(label, seconds, f"{seconds / total * 100:.1f}%") for label, seconds, _ in rows],
    )


if __name__ == "__main__":
    main()
