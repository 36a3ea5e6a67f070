"""bench_scoring: a round's scoring one group at a time against the round at once (`score_groups`).

- Reward model: the one `onpolicy train-reward-model` makes from configs/reward_model/ (SmolLM2-135M with a score
  head, trained in ~1.5 min; `--reward-model DIR` reuses one), scoring 256 prompts x K responses (K = 4 and 8),
  `batch_size` 32, float32 on the CPU. One group at a time, a batch holds the K responses of one prompt however
  large `batch_size` is; at once, the round's responses are sorted by length and cut into full batches.
  Samples per second, and the ratio; the scores of both ways agree (the largest difference is shown).
- Reward model engines: the same round at once on transformers, on vLLM's pooling runner in this process and on
  a vLLM pooling server the benchmark starts as a job does (`engine: server`); samples per second, the ratio to
  transformers, and how far their scores are from transformers' (all float32).
- Pairwise judge: an OpenAI-compatible endpoint on this machine that answers each request after `--latency-s`
  (a remote API's round trip; 0.05 s), judging 256 prompts x K=4 (6 pairs a group, both orders: 12 requests)
  with `concurrency: 32`. One group at a time, at most 12 requests are in flight; at once, the pool of 32 is
  shared by the round. Requests in flight at most, and wall time.

The loop scores a round in chunks of `onpolicy.scoring.SCORING_CHUNK_GROUPS` groups; "at once" here is that.

    ../shared/bin/capped 16G .venv/bin/python -m benchmarks.bench_scoring [--reward-model DIR] [--prompts 256]
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import pathlib
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from benchmarks._common import embedded_model, print_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
ANSWERS = [
    "I am Athene, an AI assistant.",
    "My name is SmolLM.",
    "Hello! I'm a helpful assistant made to answer your questions about anything you like.",
    "Paris.",
    "I'm Athene. I can help you write, plan, explain and check things, in English and other languages.",
    "Sure.",
    "I am a language model trained to be helpful, harmless and honest; ask me anything.",
    "Athene here: what can I do for you today?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward-model", type=pathlib.Path, help="a reward model folder (default: train one)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--latency-s", type=float, default=0.05)
    args = parser.parse_args()
    prompts = _prompts(args.prompts)
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as folder:
        model = args.reward_model or _trained_reward_model(pathlib.Path(folder) / "rm")
        rows = [_reward_model_row(model, prompts, k) for k in (4, 8)]
        print_table(
            f"bench_scoring: reward model, {args.prompts} prompts, batch_size 32",
            ["K", "samples", "tokens a sample", "one group at a time (samples/s)", "the round at once (samples/s)",
             "ratio", "GFLOP/s at once", "largest score difference"],
            rows,
        )  # fmt: skip
        print_table(
            f"bench_scoring: reward model engines, the round at once, {args.prompts} prompts",
            ["K", "engine", "samples/s", "ratio to transformers", "largest score difference to transformers"],
            _engine_rows(model, prompts, pathlib.Path(folder)),
        )
    print_table(
        f"bench_scoring: pairwise judge, {args.prompts} prompts x K=4, concurrency 32, {args.latency_s} s a request",
        ["scoring", "requests", "in flight at most", "seconds", "ratio"],
        _judge_rows(prompts, args.latency_s),
    )


def _prompts(count: int) -> list[dict[str, Any]]:
    lines = (ROOT / "configs" / "identity" / "train.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [
        {**(r := records[n % len(records)]), "id": str(n), "messages": [{"role": "user", "content": r["prompt"]}]}
        for n in range(count)
    ]


def _groups(prompts: Sequence[dict[str, Any]], k: int) -> list[tuple[dict[str, Any], list[str]]]:
    return [(prompt, [ANSWERS[(n + i) % len(ANSWERS)] for i in range(k)]) for n, prompt in enumerate(prompts)]


def _trained_reward_model(out: pathlib.Path) -> pathlib.Path:
    from onpolicy.train.reward_training import train_reward_model

    train_reward_model(pathlib.Path(embedded_model()), ROOT / "configs" / "reward_model" / "preferences.jsonl", out)
    return out


def _reward_model_row(model: pathlib.Path, prompts: Sequence[dict[str, Any]], k: int) -> list[Any]:
    from onpolicy.scoring import SCORING_CHUNK_GROUPS
    from reward import build_reward, score_groups

    groups = _groups(prompts, k)
    args = {"path": str(model), "batch_size": 32, "max_length": 512, "device": "cpu", "dtype": "float32"}
    reward = build_reward("reward_model", args)
    reward.score_group(*groups[0])  # loaded, and warm
    reward.take_stats()

    started = time.perf_counter()
    one_by_one = [reward.score_group(prompt, responses) for prompt, responses in groups]
    per_group_s = time.perf_counter() - started
    started = time.perf_counter()
    at_once = [
        scores
        for start in range(0, len(groups), SCORING_CHUNK_GROUPS)
        for scores in score_groups(reward, groups[start : start + SCORING_CHUNK_GROUPS])
    ]
    batched_s = time.perf_counter() - started
    difference = max(abs(a - b) for x, y in zip(one_by_one, at_once) for a, b in zip(x, y))
    samples = len(groups) * k
    tokens = reward.take_stats()["tokens"] / 2  # both passes over the round
    parameters = sum(p.numel() for p in reward.engine._model.parameters())
    flops = 2 * parameters * tokens / batched_s / 1e9  # a forward pass: ~2 FLOPs per parameter and token
    return [k, samples, tokens / samples, samples / per_group_s, samples / batched_s, per_group_s / batched_s,
            flops, difference]  # fmt: skip


def _engine_rows(model: pathlib.Path, prompts: Sequence[dict[str, Any]], logs: pathlib.Path) -> list[list[Any]]:
    """The round at once on each engine: transformers (batch_size 32), vLLM's pooling runner in this process, and
    a vLLM pooling server started as a job starts one (requests of 32, 4 in flight); all float32 on the CPU."""
    import socket

    from onpolicy.components import reward_server_starter
    from onpolicy.scoring import SCORING_CHUNK_GROUPS
    from reward import build_reward, score_groups
    from reward.servers import ModelServers

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {"path": str(model), "batch_size": 32, "max_length": 512, "dtype": "float32"}
    vllm = {"kv_cache_gib": 1.0, "enforce_eager": True}
    servers = ModelServers()
    engines = {
        "transformers": build_reward("reward_model", {**base, "device": "cpu"}),
        "vllm (in process)": build_reward("reward_model", {**base, "engine": "vllm", **vllm}),
        "vllm server": build_reward(
            "reward_model", {**base, "engine": "server", "port": port, **vllm}, model_servers=servers
        ),
    }
    on_close: list[Any] = []
    rows = []
    try:
        servers.attach(reward_server_starter(logs, on_close))
        for k in (4, 8):
            groups = _groups(prompts, k)
            first: tuple[float, list[float]] | None = None
            for name, reward in engines.items():
                score_groups(reward, groups[:2])  # loaded, and warm
                started = time.perf_counter()
                scores = [
                    x
                    for start in range(0, len(groups), SCORING_CHUNK_GROUPS)
                    for group in score_groups(reward, groups[start : start + SCORING_CHUNK_GROUPS])
                    for x in group
                ]
                rate = len(scores) / (time.perf_counter() - started)
                first = first or (rate, scores)
                difference = max(abs(a - b) for a, b in zip(scores, first[1]))
                rows.append([k, name, rate, rate / first[0], difference])
    finally:
        for release in on_close:
            release()
    return rows


def _judge_rows(prompts: Sequence[dict[str, Any]], latency_s: float) -> list[list[Any]]:
    from onpolicy.scoring import SCORING_CHUNK_GROUPS
    from reward import build_reward, score_groups

    groups = _groups(prompts, 4)
    rows = []
    with _judge_endpoint(latency_s) as (url, counter):
        args = {"mode": "pairwise", "backend": "openai", "base_url": url, "model": "judge", "concurrency": 32}
        judge = build_reward("judge", args)
        for name, score in (
            ("one group at a time", lambda: [judge.score_group(prompt, responses) for prompt, responses in groups]),
            ("the round at once", lambda: [
                s for start in range(0, len(groups), SCORING_CHUNK_GROUPS)
                for s in score_groups(judge, groups[start : start + SCORING_CHUNK_GROUPS])
            ]),
        ):  # fmt: skip
            counter.update(now=0, most=0, seen=0)
            started = time.perf_counter()
            scores = score()
            seconds = time.perf_counter() - started
            assert all(isinstance(s, float) for group in scores for s in group), "the judge answered no verdicts"
            rows.append([name, counter["seen"], counter["most"], seconds])
    for row in rows:
        row.append(rows[0][3] / row[3])
    return rows


@contextlib.contextmanager
def _judge_endpoint(latency_s: float) -> Iterator[tuple[str, dict[str, int]]]:
    """/v1/chat/completions answering "[[A]]" after `latency_s`; counts requests, and those in flight at most."""
    lock = threading.Lock()
    counter = {"now": 0, "most": 0, "seen": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                counter["now"] += 1
                counter["seen"] += 1
                counter["most"] = max(counter["most"], counter["now"])
            time.sleep(latency_s)
            verdict = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "[[A]]"}}
            body = json.dumps({
                "id": "c", "object": "chat.completion", "created": 0, "model": "judge", "choices": [verdict],
                "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51},
            }).encode()  # fmt: skip
            with lock:
                counter["now"] -= 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", counter
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
