"""bench_train: one DPO update on identical pairs, three ways, each in a fresh process (for its peak memory).

- TRL `DPOTrainer` with a reference model: text pairs, a frozen copy of the policy as `ref_model`, and its
  reference forward on every step (TRL's standard set-up);
- onpolicy, trainer pass (`ref.logps: trainer`): no second model; the reference log-probs come from one
  no-grad pass of the policy before its first step;
- onpolicy, engine log-probs (`ref.logps: engine`, the default on this machine): no second model and no
  reference pass; vLLM's log-probs of the sampled tokens are the reference's, and `ref.check_pairs` pairs are
  also scored by the trainer to measure how far apart the two are.
The pairs are best-vs-worst pairs of the default config's round (configs/default.yaml: its prompts, K, reward
and training settings), sampled once from the embedded model and handed to every variant. The reference is
the policy that sampled them, so all three optimise the same loss; their losses are shown side by side.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_train [--prompt-repeats 2]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import pickle
import subprocess
import sys
import tempfile
import time

from benchmarks._common import embedded_model, peak_rss_gib, print_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = {
    "trl_ref_model": "TRL DPOTrainer + ref_model",
    "trainer_pass": "onpolicy, trainer pass",
    "engine_logps": "onpolicy, engine log-probs",
}


def sample_pairs(prompt_repeats: int) -> list:
    """The default config's round, `prompt_repeats` times over its prompts: pairs with tokens and log-probs."""
    from transformers import AutoTokenizer

    from onpolicy.config import load_config
    from onpolicy.generation import VLLMGenerator
    from onpolicy.loop import build_reward_from_terms
    from onpolicy.pairing import build_pairs
    from onpolicy.prompts import load_prompts
    from onpolicy.scoring import score_groups

    config = load_config(ROOT / "configs" / "default.yaml")
    path = embedded_model()
    generator = VLLMGenerator(path, AutoTokenizer.from_pretrained(path), config.generation)
    groups, _ = generator.generate(load_prompts(config.prompts) * prompt_repeats)
    scored, _, _ = score_groups(build_reward_from_terms(config.reward), groups)
    return list(build_pairs(scored, config.pairs.min_margin).pairs)


def run_variant(variant: str, pairs_file: str) -> dict:
    """One update in this process; its seconds, peak memory and TRL's losses."""
    import torch
    from transformers import AutoTokenizer

    from onpolicy.config import RefConfig, load_config
    from onpolicy.update import DPOUpdater

    pairs = pickle.loads(pathlib.Path(pairs_file).read_bytes())
    config = load_config(ROOT / "configs" / "default.yaml")
    path = embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    mismatch = None
    if variant == "trl_ref_model":
        losses, seconds = _trl_with_reference_model(path, tokenizer, pairs, config)
    else:
        engine = variant == "engine_logps"
        ref = RefConfig(logps="engine" if engine else "trainer")
        updater = DPOUpdater(path, tokenizer, config.train, ref, seed=config.seed, engine_dtype=torch.float32)
        start = time.perf_counter()
        result = updater.update(pairs, round_number=1)
        seconds = time.perf_counter() - start
        losses = [result.metrics["train/loss"]]
        mismatch = result.metrics.get("perf/ref_logp_mismatch")
    return {"seconds": seconds, "peak_rss_gib": peak_rss_gib(), "loss": sum(losses) / len(losses), "mismatch": mismatch}


def _trl_with_reference_model(path: str, tokenizer, pairs: list, config) -> tuple[list[float], float]:
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
    train = config.train
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-train-"),
        beta=train.beta,
        learning_rate=train.learning_rate,
        num_train_epochs=train.num_epochs,
        per_device_train_batch_size=train.batch_size,
        max_length=train.max_length,
        bf16=False,
        seed=config.seed + 1,
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
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt-repeats", type=int, default=2, help="rounds' worth of pairs to train on")
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
        results = {}
        for variant in VARIANTS:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_train", "--variant", variant, "--pairs", file.name],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
            results[variant] = json.loads(line.removeprefix("RESULT "))
    base = results["trl_ref_model"]
    print_table(
        f"bench_train: one DPO update on {len(pairs)} pairs (configs/default.yaml train settings), SmolLM2-135M fp32",
        ["update", "seconds", "speed-up", "peak RSS GiB", "mean loss", "ref log-prob mismatch (nats)"],
        [
            (
                VARIANTS[v],
                r["seconds"],
                base["seconds"] / r["seconds"],
                r["peak_rss_gib"],
                r["loss"],
                r["mismatch"] or "",
            )
            for v, r in results.items()
        ],
    )


if __name__ == "__main__":
    main()
