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

Then the two routes to a `vllm serve` process started as the job starts its own (`generation.server.sync`), for
a tiny random Llama and the embedded model: transfer (vLLM's weight-transfer API; on CPUs onpolicy's gloo engine,
over loopback) and disk (safetensors written, then reloaded by the server), with the sync check
(`/weight_checker`) timed apart; each route's answers must equal the other's. From the embedded model's measured
bandwidths it extrapolates a sync of an 8B policy (bf16, 16.1 GB), beside NCCL on paper.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_sync [--repeats 3] [--servers-only]
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import tempfile
import time

import torch

from benchmarks._common import embedded_model, median_seconds, print_table

PROMPTS = ["Who are you?", "What is the capital of France?", "Write a haiku about rain."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--servers-only", action="store_true", help="only the routes to a server")
    args = parser.parse_args()
    if not args.servers_only:
        engine_ways(args.repeats)
    server_routes(args.repeats)


def engine_ways(repeats: int) -> None:
    """The in-process engine: in place against saving and reloading or rebuilding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy.config import GenerationConfig
    from onpolicy.generation.engine import VLLMGenerator
    from onpolicy.types import PromptRecord

    path = embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = GenerationConfig(kv_cache_gib=0.5, max_model_len=512)
    records = [PromptRecord(id=str(i), messages=({"role": "user", "content": p},)) for i, p in enumerate(PROMPTS)]
    engine = VLLMGenerator(path, tokenizer, config)
    before = engine.complete(records, 24)

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
        return rebuilt[-1].complete(records, 24)

    in_place()
    expected = engine.complete(records, 24)
    assert expected != before, "the changed weights did not change the engine's answers"
    results = {}
    for name, action, answers in (
        ("in place (onpolicy)", in_place, lambda: engine.complete(records, 24)),
        ("save + reload from disk", save_and_reload, lambda: engine.complete(records, 24)),
        ("save + rebuild engine (eager)", lambda: save_and_rebuild(config), rebuilt_answers),
        ("save + rebuild engine (compiled)", lambda: save_and_rebuild(compiled), rebuilt_answers),
    ):
        seconds, _ = median_seconds(action, repeats)
        assert answers() == expected, f"{name}: the engine does not answer like the trained policy"
        results[name] = seconds
    base = results["in place (onpolicy)"]
    print_table(
        f"bench_sync: new weights into the engine, SmolLM2-135M ({sum(p.numel() for p in policy.parameters()) / 1e6:.0f}M "
        f"params, engine {engine.engine_dtype}), median of {repeats}",
        ["method", "seconds", "x in place"],
        [(name, seconds, seconds / base) for name, seconds in results.items()],
    )
    engine.llm.llm_engine.engine_core.shutdown()
    while rebuilt:
        rebuilt.pop().llm.llm_engine.engine_core.shutdown()


EIGHT_B_BYTES = 8.03e9 * 2  # an 8B policy's weights in bf16
# NCCL broadcast bandwidth assumed for the paper extrapolation (GB/s): NVLink 4 within a node, 400 Gb/s InfiniBand
# between nodes (about what nccl-tests' broadcast reaches on such links; not measured here)
NCCL_ON_PAPER = {"nccl, NVLink (on paper, 200 GB/s)": 200e9, "nccl, 400 Gb/s IB (on paper, 45 GB/s)": 45e9}


def server_routes(repeats: int) -> None:
    """Both routes to a started server, for the tiny and the embedded model; then an 8B sync on paper."""
    rows, bandwidth = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-sync-tiny-") as tiny_folder:
        from tests.helpers import build_tiny_llama

        models = {"tiny Llama": str(build_tiny_llama(pathlib.Path(tiny_folder))), "SmolLM2-135M": embedded_model()}
        for label, path in models.items():
            for route, seconds, nbytes, check_s in _routes_to_a_server(path, repeats):
                rows.append((label, route, nbytes / 1e6, seconds, nbytes / seconds / 1e6, check_s))
                bandwidth[route] = nbytes / seconds  # the embedded model's, measured last
    print_table(
        f"bench_sync: new weights into a started vLLM server (CPU build, loopback), median of {repeats}",
        ["model", "route", "MB", "sync s", "MB/s", "check s"],
        rows,
    )
    paper = [(route, EIGHT_B_BYTES / rate) for route, rate in bandwidth.items()]
    paper += [(route, EIGHT_B_BYTES / rate) for route, rate in NCCL_ON_PAPER.items()]
    print_table(
        "an 8B policy's sync (16.1 GB in bf16) at these bandwidths (CPU routes: the embedded model's, measured)",
        ["route", "seconds"],
        paper,
    )


def _routes_to_a_server(path: str, repeats: int) -> list[tuple[str, float, int, float]]:
    """(route, median seconds, bytes sent, seconds of one sync check) for each route to one started server."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy.config import Config
    from onpolicy.generation.placement import Machine, plan_layout
    from onpolicy.generation.server import ServerGenerator
    from onpolicy.generation.serving import start_servers
    from onpolicy.types import PromptRecord
    from tests.helpers import free_port

    generation = {"backend": "server", "server": {"port": free_port(), "check_every": 0}, "dtype": "float32"}
    generation.update(kv_cache_gib=0.5, max_model_len=512)
    config = Config.model_validate(
        {"prompts": {"items": ["hi"]}, "reward": [{"name": "length", "args": {"target": 3}}], "generation": generation}
    )
    place = plan_layout(config, 1, Machine()).servers[0]
    records = [PromptRecord(id=str(i), messages=({"role": "user", "content": p},)) for i, p in enumerate(PROMPTS)]
    tokenizer = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for weight in policy.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * weight.std() * 0.05)
    nbytes = sum(tensor.numel() * 4 for tensor in policy.state_dict().values())
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-server-") as folder:
        [server] = start_servers(path, [place], pathlib.Path(folder), 600, "bench-key")
        try:
            expected = None
            for route in (place.sync, "disk"):
                sync_dir = pathlib.Path(folder) / "sync"
                client = ServerGenerator(
                    [server.url], tokenizer, config.generation, sync_dir, server.check_alive, server.api_key, route
                )
                seconds, _ = median_seconds(lambda c=client: c.load_weights(policy.state_dict().items()), repeats)
                answers = client.complete(records, 24)
                assert expected is None or answers == expected, f"{route}: answers differ from the other route's"
                expected = answers
                started = time.perf_counter()
                client.check_weights()  # the server holds what was sent
                results.append((route, seconds, nbytes, time.perf_counter() - started))
                client.close()
        finally:
            server.stop()
    return results


if __name__ == "__main__":
    main()
