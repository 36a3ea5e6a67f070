"""bench_replay: whether replaying earlier rounds' pairs (`pairs.replay`) steadies the identity demo, at equal
training compute.

Three arms of configs/identity.yaml on the embedded SmolLM2 (W&B offline), each in a fresh process, with the
KL from the initial policy estimated after every round (`eval.kl_samples`):

- plain: the demo as shipped (each round trains 2 epochs on its own pairs);
- replay: `pairs.replay` over the last 2 rounds at share 0.5 (each update holds 1.5x the pairs);
- more epochs: no replay, 3 epochs: the same pair-steps per round as replay, spent on the round's own pairs.

The demo's 28 training prompts come in two halves of 14, one per round, so a round replays the pairs of the
other half and of its own half's last visit. The table holds, per arm, the last round's eval/identity_rate and
eval/leak_rate, the worst leak rate and the lowest identity rate after the first round that reached 1.0 (what
"stable" means here: a learnt behaviour that stays learnt and a shortcut that never comes back), the last KL
from the initial policy, and the training work and time.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_replay [--rounds 5] [--kl-samples 2]
"""

from __future__ import annotations

import argparse

from benchmarks._common import print_table, run_identity_demo_alone

ARMS = {
    "plain": [],
    "replay (2 rounds, share 0.5)": ["pairs.replay.rounds=2", "pairs.replay.share=0.5"],
    "more epochs (3)": ["train.num_epochs=3"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kl-samples", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args()

    rows = []
    for arm in args.arms:
        overrides = [f"rounds={args.rounds}", f"eval.kl_samples={args.kl_samples}", *ARMS[arm]]
        records = [r for r in run_identity_demo_alone(overrides) if r["round"] >= 1]
        identity = [r["eval/identity_rate"] for r in records]
        leak = [r["eval/leak_rate"] for r in records]
        learnt = next((i for i, rate in enumerate(identity) if rate >= 1.0), None)
        last = records[-1]
        rows.append(
            [
                arm,
                " ".join(f"{rate:.2f}" for rate in identity),
                " ".join(f"{rate:.2f}" for rate in leak),
                "never" if learnt is None else min(identity[learnt:]),
                max(leak),
                last["eval/kl_initial"],
                sum(r["pairs/kept"] for r in records),
                sum(r.get("pairs/replayed", 0.0) for r in records),
                sum(r["train/steps"] for r in records),
                sum(r["perf/train_s"] for r in records),
                sum(r["perf/round_total_s"] for r in records),
            ]
        )
    headers = [
        "arm", "identity by round", "leak by round", "lowest identity once learnt", "worst leak",
        "KL from initial (last)", "pairs", "replayed", "train steps", "train s", "total s",
    ]  # fmt: skip
    print_table(f"Replay on the identity demo, {args.rounds} rounds", headers, rows)


if __name__ == "__main__":
    main()
