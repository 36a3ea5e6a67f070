"""bench_replay: whether replaying earlier rounds' pairs (`pairs.replay`) steadies the identity demo, at equal
training compute.

Three arms of configs/identity.yaml on the embedded SmolLM2 (W&B offline), each in a fresh process:

- plain: the demo as shipped (each round trains 2 epochs on its own pairs);
- replay: `pairs.replay` over the last 2 rounds at share 0.5 (each update holds 1.5x the pairs);
- more epochs: no replay, 3 epochs: the same pair-steps per round as replay, spent on the round's own pairs.

The demo's 28 training prompts come in two halves of 14, one per round, so a round replays the pairs of the
other half and of its own half's last visit. The table holds, per arm, eval/identity_rate and eval/leak_rate
after each round, the lowest identity rate after the first round that reached 1.0 and the worst leak rate
(what "stable" means here: a learnt behaviour that stays learnt and a shortcut that never comes back), the KL
from the initial policy to the final one (estimated once per arm after its run, on `--kl-samples` samples per
eval prompt: `eval.kl_samples` after every round would cost more than the rounds), and the training work and
time. Each arm's row is printed as soon as the arm ends.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_replay [--rounds 4] [--kl-samples 2]
"""

from __future__ import annotations

import argparse
import pathlib

from benchmarks._common import alone, embedded_model, print_table, run_identity_demo

ARMS = {
    "plain": [],
    "replay (2 rounds, share 0.5)": ["pairs.replay.rounds=2", "pairs.replay.share=0.5"],
    "more epochs (3)": ["train.num_epochs=3"],
}


HEADERS = [
    "arm", "identity by round", "leak by round", "lowest identity once learnt", "worst leak",
    "KL final from initial", "pairs", "replayed", "train steps", "train s", "total s",
]  # fmt: skip


def final_kl(run: pathlib.Path, samples: int) -> float:
    """KL(final || initial) per answer, on `samples` samples per eval prompt from the final policy, with the
    trainer's log-probs (`onpolicy.train.kl.sequence_log_probs`) under both."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy.config import load_config
    from onpolicy.evaluation import load_eval_prompts
    from onpolicy.tokens import prompt_ids
    from onpolicy.train.kl import sequence_log_probs

    config = load_config(run / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    final = AutoModelForCausalLM.from_pretrained(run / "final", dtype=torch.float32)
    initial = AutoModelForCausalLM.from_pretrained(embedded_model(), dtype=torch.float32)
    torch.manual_seed(0)
    sequences = []
    for record in load_eval_prompts(config.eval):
        prompt = prompt_ids(tokenizer, record.messages)
        with torch.no_grad():
            out = final.generate(
                torch.tensor([prompt]), do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                max_new_tokens=config.eval.max_new_tokens, num_return_sequences=samples,
                pad_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        for row in out[:, len(prompt) :].tolist():
            ends = [i for i, token in enumerate(row) if token == tokenizer.eos_token_id]
            sequences.append((prompt, row[: ends[0] + 1] if ends else row))
    pad = tokenizer.eos_token_id
    gaps = [
        a - b for a, b in zip(sequence_log_probs(final, sequences, pad), sequence_log_probs(initial, sequences, pad))
    ]
    return sum(gaps) / len(gaps)


def run_arm(overrides: list[str], kl_samples: int) -> tuple[list[dict], float]:
    """The demo with `overrides`, and the final policy's KL from the initial one (`final_kl`)."""
    kl: list[float] = []
    records = run_identity_demo(overrides, inspect=lambda run: kl.append(final_kl(run, kl_samples)))
    return records, kl[0]


def arm_row(arm: str, rounds: int, kl_samples: int) -> list:
    """One arm's run, in a process of its own, and its row of the table."""
    records, kl = alone(run_arm, [f"rounds={rounds}", *ARMS[arm]], kl_samples)
    records = [r for r in records if r["round"] >= 1]
    identity = [r["eval/identity_rate"] for r in records]
    leak = [r["eval/leak_rate"] for r in records]
    learnt = next((i for i, rate in enumerate(identity) if rate >= 1.0), None)
    return [
        arm,
        " ".join(f"{rate:.2f}" for rate in identity),
        " ".join(f"{rate:.2f}" for rate in leak),
        "never" if learnt is None else min(identity[learnt:]),
        max(leak),
        kl,
        sum(r["pairs/kept"] for r in records),
        sum(r.get("pairs/replayed", 0.0) for r in records),
        sum(r["train/steps"] for r in records),
        sum(r["perf/train_s"] for r in records),
        sum(r["perf/round_total_s"] for r in records),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--kl-samples", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args()

    rows = []
    for arm in args.arms:
        rows.append(arm_row(arm, args.rounds, args.kl_samples))
        print(rows[-1], flush=True)
    print_table(f"Replay on the identity demo, {args.rounds} rounds", HEADERS, rows)


if __name__ == "__main__":
    main()
