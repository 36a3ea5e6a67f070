"""bench_vs_trl_graded: a graded task both can learn, onpolicy against TRL's `OnlineDPOTrainer`.

configs/arithmetic.yaml: sums of two small numbers, scored by `exact_match` against each prompt's answer, on the
embedded SmolLM2 in float32. Same prompts, reward, learning rate, beta, batch size, sampling temperature and
lengths; TRL's budget is onpolicy's training time (evaluations excluded from both clocks), or
`--trl-budget-factor` times it (TRL needs about 3x to learn the task at all here). The measure is the mean reward of greedy answers to the 48 held-out sums
(`eval/reward`: the share answered right) against seconds of training. Two ratios: TRL's time over the seconds
onpolicy took to reach TRL's final reward (where TRL ended above the initial policy), and the seconds TRL took
to reach half of onpolicy's gain over onpolicy's (a lower bound where TRL never reached it).

- onpolicy: `onpolicy run configs/arithmetic.yaml` (vLLM generation, K=8 samples per prompt, the right answer
  against a wrong one, reference log-probs from the engine);
- TRL `OnlineDPOTrainer` (trl.experimental.online_dpo) with its own generation (transformers `generate`, 2
  samples per prompt), the same reward as a reward function, evaluated every `--eval-every` seconds.

With `--out DIR`, DIR/curves/ holds both curves as run directories and DIR/report/ the `onpolicy report` of
them (eval_reward.png: reward against round and against wall-clock minutes of training).

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_vs_trl_graded [--rounds 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import yaml

from benchmarks import _versus as versus

CONFIG = "arithmetic.yaml"
METRIC = "eval/reward"
VARIANTS = {"onpolicy": "onpolicy", "trl_online_dpo": "TRL OnlineDPOTrainer"}


def write_curve(folder: pathlib.Path, trainer: str, curve: list[dict]) -> None:
    """A curve as a run directory `onpolicy report` reads: the config with a `trainer` key that tells the
    variants apart, one record per evaluation, its minutes the training seconds since the one before."""
    folder.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((versus.ROOT / "configs" / CONFIG).read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "trainer": trainer}))
    records, before = [], 0.0
    for n, point in enumerate(curve):
        records.append({"round": n, METRIC: point[METRIC], "perf/round_total_s": point["seconds"] - before})
        before = point["seconds"]
    (folder / "rounds.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def ratios(ours: list[dict], theirs: list[dict]) -> list[str]:
    """How much sooner onpolicy got where TRL ended, and where onpolicy ended, said in words."""
    lines = []
    initial, trl_final, our_final = ours[0][METRIC], theirs[-1][METRIC], ours[-1][METRIC]
    if trl_final > initial:
        trl_at = versus.time_to(theirs, METRIC, trl_final)
        reached = versus.time_to(ours, METRIC, trl_final)
        lines.append(
            f"TRL's final eval reward {trl_final:.3f}, first reached after {trl_at:.0f} s: onpolicy reached it after "
            + (f"{reached:.0f} s, {trl_at / reached:.1f}x sooner" if reached else "never")
        )
    else:
        lines.append(
            f"TRL's final eval reward {trl_final:.3f} (after {theirs[-1]['seconds']:.0f} s) is not above the initial "
            f"policy's {initial:.3f}: no ratio to it"
        )
    halfway = (initial + our_final) / 2  # half of onpolicy's gain
    ours_at = versus.time_to(ours, METRIC, halfway)
    theirs_at = versus.time_to(theirs, METRIC, halfway)
    lines.append(
        f"half of onpolicy's gain, eval reward {halfway:.3f}, reached by onpolicy after {ours_at:.0f} s: TRL "
        + (
            f"reached it after {theirs_at:.0f} s, {theirs_at / ours_at:.1f}x later"
            if theirs_at is not None
            else f"did not in {theirs[-1]['seconds']:.0f} s (> {theirs[-1]['seconds'] / ours_at:.1f}x)"
        )
    )
    return lines


def main() -> None:
    from benchmarks._common import print_table  # quiets the libraries: not on import (tests read `ratios`)

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="onpolicy rounds (they set TRL's budget)")
    parser.add_argument("--eval-every", type=float, default=30.0, help="seconds of TRL training between evals")
    parser.add_argument("--trl-budget-factor", type=float, default=1.0, help="TRL's budget over onpolicy's time")
    parser.add_argument("--out", type=pathlib.Path, help="keep the curves as run directories and draw them here")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        if args.variant == "trl_online_dpo":
            result = versus.run_trl(CONFIG, args.budget, args.eval_every, [METRIC])
        else:
            result = versus.run_onpolicy(CONFIG, [f"rounds={args.rounds}"], [METRIC])
            del result["records"]
        print("RESULT " + json.dumps(result))
        return

    results: dict[str, dict] = {}
    for variant in VARIANTS:
        budget = results["onpolicy"]["curve"][-1]["seconds"] * args.trl_budget_factor if results else 0
        child = [sys.executable, "-m", "benchmarks.bench_vs_trl_graded", "--variant", variant]
        child += ["--rounds", str(args.rounds), "--budget", str(budget), "--eval-every", str(args.eval_every)]
        done = subprocess.run(child, cwd=versus.ROOT, capture_output=True, text=True, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(line.removeprefix("RESULT "))
        print(f"{variant}: {line.removeprefix('RESULT ')}", file=sys.stderr, flush=True)  # kept if a later one fails

    ours, theirs = results["onpolicy"]["curve"], results["trl_online_dpo"]["curve"]
    budget = ours[-1]["seconds"]
    rows = []
    for variant, result in results.items():
        curve = result["curve"]
        rows.append(
            (
                VARIANTS[variant],
                curve[0][METRIC],
                curve[-1][METRIC],
                max(point[METRIC] for point in curve),
                f"{curve[-1]['seconds']:.0f}",
                result["samples"],
                result["steps"],
            )
        )
    print_table(
        f"bench_vs_trl_graded: configs/{CONFIG}, SmolLM2-135M fp32, onpolicy {budget:.0f} s of training, TRL "
        f"{args.trl_budget_factor:g}x that",
        ["method", "initial eval reward", "final eval reward", "best eval reward", "seconds", "samples", "steps"],
        rows,
    )
    print()
    for line in ratios(ours, theirs):
        print(line)
    print_table(
        "eval reward (share of held-out sums answered right, greedy) against seconds of training",
        ["method", "curve: seconds → eval reward"],
        [
            (VARIANTS[v], ", ".join(f"{p['seconds']:.0f} s → {p[METRIC]:.3f}" for p in r["curve"]))
            for v, r in results.items()
        ],
    )
    if args.out is not None:
        for variant, result in results.items():
            write_curve(args.out / "curves" / variant, VARIANTS[variant], result["curve"])
        from onpolicy.run.report import report

        report([args.out / "curves" / v for v in VARIANTS], args.out / "report", [METRIC])
        print(f"\ncurves and report in {args.out}")


if __name__ == "__main__":
    main()
