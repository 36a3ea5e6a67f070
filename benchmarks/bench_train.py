"""bench_train: one DPO update on identical pairs, several ways, each in a fresh process (for its peak memory).

- TRL `DPOTrainer` with a reference model: text pairs, a frozen copy of the policy as `ref_model`, and its
  reference forward on every step (TRL's standard set-up, in fp32 as onpolicy here); its fused LM head
  projects every position on a CPU, prompt and padding included, as TRL does off Triton devices;
- the same with the LM head on completion tokens only (`onpolicy.train.trl_compat.lm_head_on_completions_only`, which
  every onpolicy update uses), to tell that gain from the reference's;
- onpolicy, trainer pass (`ref.logps: trainer`): no second model; the reference log-probs come from one
  no-grad pass of the policy before its first step;
- onpolicy, engine log-probs (`ref.logps: engine`, the default on this machine): no second model and no
  reference pass; vLLM's log-probs of the sampled tokens are the reference's, and `ref.check_pairs` pairs are
  also scored by the trainer to measure how far apart the two are;
- the same with length-grouped batches instead of random ones (`train.group_by_length: true`), and with
  gradient checkpointing off (on in every other row, as TRL's default has it; onpolicy's `auto` turns it off
  on a CPU).
The pairs are best-vs-worst pairs of the default config's round (configs/default.yaml: its prompts, K, reward
and training settings), sampled once from the embedded model and handed to every variant. The reference is
the policy that sampled them, so every variant optimises the same loss. Besides the mean training loss, each
row shows the DPO loss of the updated policy on all the pairs (reference: the sampling log-probs), so a
faster update that learns less shows.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_train [--prompt-repeats 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import pickle
import subprocess
import sys
import tempfile
import time

from benchmarks._common import embedded_model, peak_rss_gib, print_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
# variant: (label, train-config changes from configs/default.yaml); all but one with gradient checkpointing on,
# as TRL's default has it, so that the rows differ in one thing each
CHECKPOINTING = {"gradient_checkpointing": True}
VARIANTS = {
    "trl_ref_model": ("TRL DPOTrainer + ref_model", CHECKPOINTING),
    "trl_ref_model_completions_only": ("TRL DPOTrainer + ref_model", CHECKPOINTING),
    "trainer_pass": ("onpolicy, trainer pass", CHECKPOINTING),
    "engine_logps": ("onpolicy, engine log-probs", CHECKPOINTING),
    "engine_grouped_batches": ("onpolicy, engine log-probs", {**CHECKPOINTING, "group_by_length": True}),
    "engine_no_checkpointing": ("onpolicy, engine log-probs", {"gradient_checkpointing": False}),
}


def sample_pairs(prompt_repeats: int) -> list:
    """The default config's round, `prompt_repeats` times over its prompts: pairs with tokens and log-probs."""
    from transformers import AutoTokenizer

    from onpolicy.components import build_reward_from_terms
    from onpolicy.config import load_config
    from onpolicy.generation.engine import VLLMGenerator
    from onpolicy.pairing import build_pairs
    from onpolicy.prompts import load_prompts
    from onpolicy.scoring import score_sample_groups

    config = load_config(ROOT / "configs" / "default.yaml")
    path = embedded_model()
    # a float32 engine, the trainer's dtype: its log-probs are the reference's (the updaters below are told so)
    engine = config.generation.model_copy(update={"dtype": "float32"})
    generator = VLLMGenerator(path, AutoTokenizer.from_pretrained(path), engine)
    groups, _ = generator.generate(load_prompts(config.prompts) * prompt_repeats)
    scored, _, _ = score_sample_groups(build_reward_from_terms(config.reward), groups)
    return list(build_pairs(scored, config.pairs.min_margin).pairs)


def run_variant(variant: str, pairs_file: str) -> dict:
    """One update in this process: its seconds, peak memory, losses and reference mismatch."""
    import torch
    from transformers import AutoTokenizer

    from onpolicy.config import RefConfig, load_config
    from onpolicy.train.trl_compat import lm_head_on_completions_only
    from onpolicy.train.update import DPOUpdater

    pairs = pickle.loads(pathlib.Path(pairs_file).read_bytes())
    config = load_config(ROOT / "configs" / "default.yaml")
    train = config.train.model_copy(update=VARIANTS[variant][1])
    path = embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    mismatch = padding = None
    if variant.startswith("trl_ref_model"):
        lm_head = lm_head_on_completions_only() if variant.endswith("completions_only") else contextlib.nullcontext()
        with lm_head:
            model, losses, seconds = _trl_with_reference_model(path, tokenizer, pairs, train, config.seed)
    else:
        ref = RefConfig(logps="trainer" if variant == "trainer_pass" else "engine")
        updater = DPOUpdater(path, tokenizer, train, ref, seed=config.seed, engine_dtype=torch.float32)
        start = time.perf_counter()
        result = updater.update(pairs, round_number=1)
        seconds = time.perf_counter() - start
        model, losses = updater.policy, [result.metrics["train/loss"]]
        mismatch = result.metrics.get("perf/ref_logp_mismatch")
        padding = result.metrics["perf/train_padding"]
    return {
        "seconds": seconds,
        "peak_rss_gib": peak_rss_gib(),
        "loss": sum(losses) / len(losses),
        "loss_after": dpo_loss(model, pairs, train.beta),
        "mismatch": mismatch,
        "padding": padding,
    }


def dpo_loss(model, pairs: list, beta: float) -> float:
    """The mean DPO loss of `model` on `pairs`, their sampling log-probs as the reference's."""
    import torch
    import torch.nn.functional as F

    def logp(prompt: tuple[int, ...], response: tuple[int, ...]) -> torch.Tensor:
        ids = torch.tensor([list(prompt) + list(response)])
        logits = model(ids).logits[0, len(prompt) - 1 : -1]
        return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).sum()

    losses = []
    with torch.no_grad():
        for pair in pairs:
            t = pair.tokens
            margin = (logp(t.prompt, t.chosen) - t.chosen_logp) - (logp(t.prompt, t.rejected) - t.rejected_logp)
            losses.append(-F.logsigmoid(beta * margin).item())
    return sum(losses) / len(losses)


def _trl_with_reference_model(path: str, tokenizer, pairs: list, train, seed: int) -> tuple:
    import copy

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    rows = [
        {
            "prompt": [dict(m) for m in p.messages],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-train-"),
        beta=train.beta,
        learning_rate=train.learning_rate,
        num_train_epochs=train.num_epochs,
        per_device_train_batch_size=train.batch_size,
        max_length=train.max_length,
        bf16=train.bf16,
        gradient_checkpointing=train.gradient_checkpointing,
        seed=seed + 1,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
    )
    start = time.perf_counter()
    trainer = DPOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    seconds = time.perf_counter() - start
    model.__dict__.pop("forward", None)  # TRL's fused LM head: back to the plain forward
    model.eval()
    return model, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], seconds


def _run_child(variant: str, pairs_file: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train", "--variant", variant, "--pairs", pairs_file],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt-repeats", type=int, default=2, help="rounds' worth of pairs to train on")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="the first is the 1x row"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant (the median is shown)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--pairs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args.pairs)))
        return

    pairs = sample_pairs(args.prompt_repeats)
    with tempfile.NamedTemporaryFile(suffix=".pkl") as file:
        file.write(pickle.dumps(pairs))
        file.flush()
        runs: dict[str, list[dict]] = {variant: [] for variant in args.variants}
        for repeat in range(args.repeats):  # forwards, then backwards: a slow spell of the machine hits all
            for variant in args.variants if repeat % 2 == 0 else reversed(args.variants):
                runs[variant].append(_run_child(variant, file.name))
    # the median run's numbers (by seconds); every run of a variant trains the same pairs the same way
    results = {v: sorted(r, key=lambda run: run["seconds"])[len(r) // 2] for v, r in runs.items()}
    base = results[args.variants[0]]
    print_table(
        f"bench_train: one DPO update on {len(pairs)} pairs (configs/default.yaml train settings), SmolLM2-135M fp32, "
        f"median of {args.repeats}",
        [
            "update",
            "LM head scores",
            "batches",
            "gradient checkpointing",
            "padding",
            "seconds",
            "speed-up",
            "peak RSS GiB",
            "mean training loss",
            "loss after, all pairs",
            "ref log-prob mismatch (nats)",
        ],
        [
            (
                VARIANTS[v][0],
                "every position" if v == "trl_ref_model" else "completions",
                "length-grouped" if VARIANTS[v][1].get("group_by_length") else "random",
                "on" if VARIANTS[v][1]["gradient_checkpointing"] else "off",
                f"{r['padding']:.1%}" if r["padding"] is not None else "",
                r["seconds"],
                base["seconds"] / r["seconds"],
                r["peak_rss_gib"],
                r["loss"],
                r["loss_after"],
                r["mismatch"] or "",
            )
            for v, r in results.items()
        ],
    )


if __name__ == "__main__":
    main()
