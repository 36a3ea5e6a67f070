"""bench_vs_trl: the identity demo (configs/identity.yaml) on the embedded model, onpolicy against TRL's
`OnlineDPOTrainer`, with the same prompts, reward, learning rate, beta, batch size, sampling temperature and
lengths, and the same wall-clock budget; eval identity rate against wall-clock seconds for each.

- onpolicy: `onpolicy run configs/identity.yaml` for `--rounds` rounds (vLLM generation, K=6 samples per
  prompt, best vs worst, corrections of the model's own answers, reference log-probs from the engine);
- onpolicy without correction (`pairs.correction.corrector=null`): the same job on its own samples only;
- TRL `OnlineDPOTrainer` (trl.experimental.online_dpo) with its own generation (transformers `generate`, the
  trainer's fixed 2 samples per prompt), the same reward as a reward function, its reference a frozen copy of
  the initial policy (as `ref.refresh: never` in the demo). Its budget is the slower onpolicy run's time.

The clock of each runs in its own fresh process from before the model loads; evaluations (greedy answers to
configs/identity/eval.jsonl, scored by the demo's eval metrics) are not counted in it. onpolicy evaluates after
each round through its engine; TRL's model is evaluated every `--eval-every` seconds with transformers' greedy
`generate` on the same prompt tokens. Each method's own samples of identity prompts are counted for naming the
target: those a method samples before it has learned anything say whether pairs of its own samples can teach
the name at all.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_vs_trl [--rounds 14]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

from benchmarks import _versus as versus
from benchmarks._common import print_table
from reward.rules import contains

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "identity.yaml"
TARGET = 0.8  # the identity rate the comparison times
TARGET_NAME = "Athene"  # the name the demo teaches
VARIANTS = {
    "onpolicy": "onpolicy",
    "onpolicy_no_correction": "onpolicy, no correction",
    "trl_online_dpo": "TRL OnlineDPOTrainer",
}


_NAMES_TARGET = contains(words=[TARGET_NAME])  # the rule the demo's reward and eval metrics use


def names_target(text: str) -> bool:
    """Whether a response names the target, as the demo's reward and eval metrics read it."""
    return _NAMES_TARGET.score_group({}, [text])[0] > 0


METRICS = ("eval/identity_rate", "eval/leak_rate")


def run_onpolicy(rounds: int, correction: bool) -> dict:
    """The demo's job, with each of its identity prompts' samples counted for naming the target."""
    from onpolicy.config import load_config
    from onpolicy.prompts import load_prompts

    overrides = [f"rounds={rounds}"] + ([] if correction else ["pairs.correction.corrector=null"])
    names: list[bool] = []  # in sampling order, whether each sample of an identity prompt names the target
    first_round = 0  # how many of them the initial policy sampled (round 1)

    def count_names(run: pathlib.Path) -> None:
        nonlocal first_round
        config = load_config(CONFIG)
        records = load_prompts(config.prompts, seed=config.seed)
        identity = {record.id for record in records if record.metadata["category"] == "identity"}
        for n, samples in enumerate(sorted(run.glob("rounds/*/samples.jsonl"))):
            for line in samples.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                if row["prompt_id"] in identity:
                    names.append(names_target(row["text"]))
            if n == 0:
                first_round = len(names)

    result = versus.run_onpolicy(CONFIG.name, overrides, METRICS, inspect=count_names)
    del result["records"]
    return {**result, "names_target": names, "first_round_samples": first_round}


def run_trl(budget_s: float, eval_every_s: float) -> dict:
    """TRL's OnlineDPOTrainer on the demo's prompts and reward, its identity prompts' samples counted."""
    names: list[bool] = []

    def count_name(record, text: str) -> None:
        if record.metadata["category"] == "identity":
            names.append(names_target(text))

    return {**versus.run_trl(CONFIG.name, budget_s, eval_every_s, METRICS, on_sample=count_name), "names_target": names}


def time_to(curve: list[dict], target: float) -> float | None:
    """Seconds until the eval identity rate first reached `target` (None: never in the run)."""
    return versus.time_to(curve, "eval/identity_rate", target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=14, help="onpolicy rounds (they set TRL's budget)")
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds of TRL training between evals")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        if args.variant == "trl_online_dpo":
            result = run_trl(args.budget, args.eval_every)
        else:
            result = run_onpolicy(args.rounds, correction=args.variant == "onpolicy")
        print("RESULT " + json.dumps(result))
        return

    results: dict[str, dict] = {}
    for variant in VARIANTS:
        budget = max(results[v]["curve"][-1]["seconds"] for v in results) if variant == "trl_online_dpo" else 0
        child = [sys.executable, "-m", "benchmarks.bench_vs_trl", "--variant", variant, "--rounds", str(args.rounds)]
        child += ["--budget", str(budget), "--eval-every", str(args.eval_every)]
        done = subprocess.run(child, cwd=ROOT, capture_output=True, text=True, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(line.removeprefix("RESULT "))
        print(f"{variant}: {line.removeprefix('RESULT ')}", file=sys.stderr, flush=True)  # kept if a later one fails

    # TRL's budget (its last step may end past it: the lower bounds below do not count that)
    budget = max(results[v]["curve"][-1]["seconds"] for v in results if v != "trl_online_dpo")
    ours = time_to(results["onpolicy"]["curve"], TARGET)
    first = results["onpolicy"]["first_round_samples"]  # the initial policy's samples, for onpolicy
    rows = []
    for variant, result in results.items():
        reached = time_to(result["curve"], TARGET)
        if variant == "onpolicy" or ours is None:
            speed_up = ""
        elif reached is None:  # never reached: the ratio is at least the budget over onpolicy's time
            speed_up = f"> {budget / ours:.1f}x"
        else:
            speed_up = f"{reached / ours:.1f}x"
        final = result["curve"][-1]
        rows.append(
            (
                VARIANTS[variant],
                f"{reached:.0f}" if reached is not None else f"not in {budget:.0f} s",
                speed_up,
                final["eval/identity_rate"],
                final["eval/leak_rate"],
                result["samples"],
                result["steps"],
                f"{sum(result['names_target'][:first])} of {len(result['names_target'][:first])}",
                f"{sum(result['names_target'])} of {len(result['names_target'])}",
            )
        )
    print_table(
        f"bench_vs_trl: configs/identity.yaml, SmolLM2-135M fp32, a budget of {budget:.0f} s of training each",
        [
            "method",
            f"seconds to identity rate {TARGET}",
            "onpolicy is sooner by",
            "final identity rate",
            "final leak rate",
            "samples",
            "optimizer steps",
            f"identity samples naming {TARGET_NAME}: the first {first}",
            "all",
        ],
        rows,
    )
    print_table(
        "eval identity rate (leak rate) against seconds of training, evaluations excluded",
        ["method", "curve: seconds → identity (leak)"],
        [
            (
                VARIANTS[v],
                ", ".join(
                    f"{p['seconds']:.0f} s → {p['eval/identity_rate']:.2f} ({p['eval/leak_rate']:.2f})"
                    for p in r["curve"]
                ),
            )
            for v, r in results.items()
        ],
    )


if __name__ == "__main__":
    main()
