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
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from benchmarks._common import embedded_model, print_table, run_identity_demo
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


def run_onpolicy(rounds: int, correction: bool) -> dict:
    """The demo's job; one curve point per round: seconds since start (evaluations excluded) and eval rates."""
    from onpolicy.config import load_config
    from onpolicy.prompts import load_prompts

    overrides = [f"rounds={rounds}"] + ([] if correction else ["pairs.correction.corrector=null"])
    echoed: dict[int, float] = {}

    def note_round_end(line: str) -> None:
        match = re.match(r"round (\d+)/", line)
        if match:
            echoed[int(match.group(1))] = time.perf_counter()

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

    start = time.perf_counter()
    records = run_identity_demo(overrides, echo=note_round_end, inspect=count_names)
    curve, evaluating = [], 0.0
    for record in records:
        evaluating += record["perf/eval_s"]
        curve.append(
            {
                "seconds": echoed[record["round"]] - start - evaluating,
                "identity": record["eval/identity_rate"],
                "leak": record["eval/leak_rate"],
            }
        )
    return {
        "curve": curve,
        "samples": sum(r.get("gen/samples", 0) for r in records),
        "steps": sum(r.get("train/steps", 0) for r in records),
        "names_target": names,
        "first_round_samples": first_round,
    }


class _GreedyAnswers:
    """`complete_greedy` (what onpolicy's Evaluator asks of an engine) through transformers' `generate`, on the
    prompt tokens onpolicy's engine would get."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer

    def complete_greedy(self, records: Sequence, max_new_tokens: int) -> list[str]:

        from onpolicy.tokens import prompt_ids

        ids = [prompt_ids(self.tokenizer, record.messages) for record in records]
        batch = self.tokenizer.pad({"input_ids": ids}, padding_side="left", return_tensors="pt")
        was_training = self.model.training
        self.model.eval()
        output = self.model.generate(
            **batch, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id
        )
        self.model.train(was_training)
        return self.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def run_trl(budget_s: float, eval_every_s: float) -> dict:
    """TRL's OnlineDPOTrainer on the demo's prompts and reward until `budget_s` seconds of training."""
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from onpolicy.components import build_reward_from_terms
    from onpolicy.config import load_config
    from onpolicy.evaluation import build_evaluator
    from onpolicy.prompts import load_prompts
    from reward.registry import check_score

    config = load_config(CONFIG, ["wandb.mode=offline"])
    path = embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    records = load_prompts(config.prompts, seed=config.seed)
    reward = build_reward_from_terms(config.reward)
    evaluator = build_evaluator(config.eval, seed=config.seed)
    answers = _GreedyAnswers(model, tokenizer)
    curve: list[dict] = []
    names: list[bool] = []  # in sampling order, whether each sample of an identity prompt names the target
    paused = 0.0

    def evaluate(seconds: float) -> None:
        nonlocal paused
        began = time.perf_counter()
        results, _ = evaluator.run(answers)
        curve.append({"seconds": seconds, "identity": results["eval/identity_rate"], "leak": results["eval/leak_rate"]})
        paused += time.perf_counter() - began

    def demo_reward(prompts: list, completions: list, index: list[int], **_) -> list[float | None]:
        """The demo's reward of each completion (None where a term failed: TRL skips it)."""
        scores = []
        for completion, i in zip(completions, index):
            text = completion[0]["content"]
            if records[i].metadata["category"] == "identity":
                names.append(names_target(text))
            (score,) = reward.score_group(records[i].reward_view(), [text])
            score = check_score(score)
            scores.append(score if isinstance(score, float) else None)
        return scores

    class Budget(TrainerCallback):
        """Evaluates every `eval_every_s` seconds of training and stops the trainer at the budget."""

        next_eval = eval_every_s

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - start - paused
            if seconds >= self.next_eval or seconds >= budget_s:
                evaluate(seconds)
                self.next_eval += eval_every_s
            control.should_training_stop = seconds >= budget_s

    evaluate(time.perf_counter() - start - paused)  # the initial policy
    train = config.train
    args = OnlineDPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-vs-trl-"),
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler_type,
        beta=[train.beta],
        per_device_train_batch_size=train.batch_size,
        max_new_tokens=config.generation.max_new_tokens,
        max_length=train.max_length,
        temperature=config.generation.temperature,
        top_p=config.generation.top_p,
        max_steps=1_000_000,  # the budget stops it
        seed=config.seed,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        bf16=train.bf16,  # TRL's default is True: emulated, and many times slower, on a CPU without bf16
        gradient_checkpointing=False,  # TRL's default (on) also turns off the KV cache of its generation
    )
    dataset = Dataset.from_list(
        [{"prompt": [dict(m) for m in record.messages], "index": i} for i, record in enumerate(records)] * 500
    )
    trainer = OnlineDPOTrainer(
        model=model,
        reward_funcs=demo_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Budget()],
    )
    trainer.train()
    steps = trainer.state.global_step
    return {"curve": curve, "samples": steps * train.batch_size * 2, "steps": steps, "names_target": names}


def time_to(curve: list[dict], target: float) -> float | None:
    """Seconds until the eval identity rate first reached `target` (None: never in the run)."""
    return next((point["seconds"] for point in curve if point["identity"] >= target), None)


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
                final["identity"],
                final["leak"],
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
                ", ".join(f"{p['seconds']:.0f} s → {p['identity']:.2f} ({p['leak']:.2f})" for p in r["curve"]),
            )
            for v, r in results.items()
        ],
    )


if __name__ == "__main__":
    main()
