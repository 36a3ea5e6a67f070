"""bench_generate: the project's generator against calling `vllm.LLM.generate` directly, on identical requests.

Both sides use the same engine (so the comparison is of the code around it, not of two engines) and the same
requests: the prompts of one identity demo round, K samples each, the demo's sampling settings. The raw side
gets its prompts already templated and tokenized, the harshest baseline; the project's side templates and
tokenizes them, checks their length and turns vLLM's outputs into its sample records. The two alternate (each
going first as often), so that drifts of a shared, noisy machine hit both alike, and each side's token counts
are checked equal.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_generate [--repeats 5]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

from benchmarks._common import embedded_model, print_table

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from onpolicy.config import load_config
    from onpolicy.generation.engine import VLLMGenerator
    from onpolicy.generation.sampling import vllm_sampling
    from onpolicy.prompts import load_prompts, prompts_for_round
    from onpolicy.tokens import prompt_ids

    config = load_config(ROOT / "configs" / "identity.yaml")
    records = prompts_for_round(load_prompts(config.prompts, seed=config.seed), 0, config.prompts.per_round)
    path = embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    generator = VLLMGenerator(path, tokenizer, config.generation)
    gen = config.generation
    params = SamplingParams(**vllm_sampling(gen.sampling(), gen.num_samples, gen.max_new_tokens))
    requests = [TokensPrompt(prompt_token_ids=prompt_ids(tokenizer, r.messages)) for r in records]

    def project() -> int:
        groups, _ = generator.generate(records)
        return sum(len(s.token_ids) for g in groups for s in g.samples)

    def raw() -> int:
        outputs = generator.llm.generate(requests, params, use_tqdm=False)
        return sum(len(c.token_ids) for out in outputs for c in out.outputs)

    project(), raw()  # warm-up: first-call allocations on both paths
    times: dict[str, list[float]] = {"vllm.LLM.generate (raw)": [], "onpolicy VLLMGenerator": []}
    tokens: dict[str, list[int]] = {name: [] for name in times}
    sides = [("vllm.LLM.generate (raw)", raw), ("onpolicy VLLMGenerator", project)]
    for i in range(args.repeats):
        for name, action in sides if i % 2 == 0 else sides[::-1]:  # each side goes first as often
            torch.manual_seed(i)  # the same sampling on both sides: vLLM's CPU sampler draws from torch's RNG
            start = time.perf_counter()
            tokens[name].append(action())
            times[name].append(time.perf_counter() - start)
    assert tokens["vllm.LLM.generate (raw)"] == tokens["onpolicy VLLMGenerator"], tokens
    base = statistics.median(times["vllm.LLM.generate (raw)"])
    rows = []
    for name, seconds in times.items():
        median = statistics.median(seconds)
        rows.append((name, median, statistics.median(tokens[name]) / median, f"{(median / base - 1) * 100:+.1f}%"))
    print_table(
        f"bench_generate: {len(records)} prompts x {gen.num_samples} samples, up to {gen.max_new_tokens} new tokens, "
        f"engine {generator.engine_dtype}, median of {args.repeats}",
        ["path", "seconds", "tokens/s", "overhead"],
        rows,
    )


if __name__ == "__main__":
    main()
