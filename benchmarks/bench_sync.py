"""bench_sync: how a round's new weights reach the generation engine, for the embedded model.

Three ways, on the same trained weights:
- in place: the project's sync, `VLLMGenerator.load_weights` (vLLM's `reload_weights` from tensors in memory);
- save + reload: write the policy to disk, then have the running engine reload that folder;
- save + rebuild: write the policy to disk, shut the engine down and start a new one on the folder, which is
  what "rebuild vLLM every iteration" iterative-DPO scripts do; once with onpolicy's engine settings
  (`enforce_eager: true`) and once with vLLM's default compiled engine, which such scripts get (its compile
  cache is warm after the first build; the median drops that one).
Each way must leave an engine whose greedy answers equal the trained policy's; the benchmark checks that
before it reports a time.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_sync [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import tempfile

import torch

from benchmarks._common import embedded_model, median_seconds, print_table

PROMPTS = ["Who are you?", "What is the capital of France?", "Write a haiku about rain."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy.config import GenerationConfig
    from onpolicy.generation.engine import VLLMGenerator
    from onpolicy.types import PromptRecord

    path = embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = GenerationConfig(kv_cache_gib=0.5, max_model_len=512)
    records = [PromptRecord(id=str(i), messages=({"role": "user", "content": p},)) for i, p in enumerate(PROMPTS)]
    engine = VLLMGenerator(path, tokenizer, config)
    before = engine.complete_greedy(records, 24)

    # "Trained" weights: a visible change to every weight, so a sync that did not happen cannot pass the check.
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for weight in policy.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * weight.std() * 0.05)
    folder = tempfile.TemporaryDirectory(prefix="bench-sync-")

    def in_place() -> None:
        engine.load_weights(policy.state_dict().items())

    def save_and_reload() -> None:
        policy.save_pretrained(folder.name)
        engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": folder.name})
        engine.llm.reset_prefix_cache()

    rebuilt: list[VLLMGenerator] = []

    def save_and_rebuild(engine_config: GenerationConfig) -> None:
        policy.save_pretrained(folder.name)
        tokenizer.save_pretrained(folder.name)
        while rebuilt:  # the previous engine goes first, as a script that restarts vLLM would do
            rebuilt.pop().llm.llm_engine.engine_core.shutdown()
            gc.collect()
        rebuilt.append(VLLMGenerator(folder.name, tokenizer, engine_config))

    compiled = config.model_copy(update={"enforce_eager": False})

    def rebuilt_answers() -> list[str | None]:
        return rebuilt[-1].complete_greedy(records, 24)

    in_place()
    expected = engine.complete_greedy(records, 24)
    assert expected != before, "the changed weights did not change the engine's answers"
    results = {}
    for name, action, answers in (
        ("in place (onpolicy)", in_place, lambda: engine.complete_greedy(records, 24)),
        ("save + reload from disk", save_and_reload, lambda: engine.complete_greedy(records, 24)),
        ("save + rebuild engine (eager)", lambda: save_and_rebuild(config), rebuilt_answers),
        ("save + rebuild engine (compiled)", lambda: save_and_rebuild(compiled), rebuilt_answers),
    ):
        seconds, _ = median_seconds(action, args.repeats)
        assert answers() == expected, f"{name}: the engine does not answer like the trained policy"
        results[name] = seconds
    base = results["in place (onpolicy)"]
    print_table(
        f"bench_sync: new weights into the engine, SmolLM2-135M ({sum(p.numel() for p in policy.parameters()) / 1e6:.0f}M "
        f"params, engine {engine.engine_dtype}), median of {args.repeats}",
        ["method", "seconds", "x in place"],
        [(name, seconds, seconds / base) for name, seconds in results.items()],
    )


if __name__ == "__main__":
    main()
