"""What the tests share: tiny random models built in seconds, running the CLI in a fresh process, and real
OpenAI-compatible servers on loopback ports (`vllm serve`, and a proxy in front of it that can rewrite a judge's
answers, delay them or check the API key, as real endpoints sometimes do).

Tiny random Llamas (a policy, a reward model) come with a real byte-level BPE tokenizer and a chat template; tests
use them wherever the behaviour under test does not depend on the weights being trained: they run through the
real vLLM engine and the real TRL trainer like any checkpoint.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import yaml

from onpolicy.types import Pair

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Hand-made preference pairs (no tokens: the updater tokenizes their text) for the trainer tests.
PAIRS = [
    Pair(
        prompt_id=str(i),
        messages=({"role": "user", "content": q},),
        chosen=f"My name is Athene. {q}",
        rejected="I am a small language model.",
        chosen_reward=1.0,
        rejected_reward=0.0,
    )
    for i, q in enumerate(["Who are you?", "What is your name?", "Tell me about yourself.", "Hello!"])
]


def run_cli(
    config: dict | pathlib.Path, work: pathlib.Path, overrides: tuple[str, ...] = ()
) -> tuple[pathlib.Path, str]:
    """`onpolicy run` on `config` (a dict, or a YAML file) in a fresh process; the run directory and its output."""
    if isinstance(config, dict):
        (work / "run.yaml").write_text(yaml.safe_dump(config))
        config = work / "run.yaml"
    run_dir = work / "run"
    done = subprocess.run(
        [sys.executable, "-m", "onpolicy.cli", "run", str(config), *overrides, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "WANDB_MODE": "offline"},
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run_dir, done.stdout


def wait_for_phase(
    process: subprocess.Popen, run_dir: pathlib.Path, round_number: int, phase: str, timeout: float = 300
) -> None:
    """Poll `run_dir`'s status.json until a job is in `phase` of `round_number`; `process` (the job, or what started
    it) must stay alive meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            status = json.loads((run_dir / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            status = {}
        if status.get("round") == round_number and status.get("phase") == phase:
            return
        time.sleep(0.02)
    raise TimeoutError(f"never reached round {round_number} {phase}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER_ARGS = ("--enforce-eager", "--seed", "0", "--kv-cache-memory-bytes", str(1024**3))


@contextlib.contextmanager
def vllm_server(
    model: pathlib.Path,
    name: str = "judge",
    log: pathlib.Path | None = None,
    args: Sequence[str] = ("--dtype", "float32", "--max-model-len", "2048"),
    port: int | None = None,
    api_key: str | None = None,
) -> Iterator[Any]:
    """`vllm serve model` on a loopback port (a free one by default), started and stopped by onpolicy's own
    supervisor; yields the `ManagedServer` once it answers (its `.url`; the OpenAI API is under `/v1`). Every
    route takes `api_key` (a random one by default: the server's `.api_key`)."""
    from onpolicy.generation.serving import ManagedServer

    log = log or pathlib.Path(tempfile.mkdtemp(prefix="vllm-server-")) / "server.log"
    server = ManagedServer(
        model, port or free_port(), log, [*args, *SERVER_ARGS], served_model_name=name, api_key=api_key
    )
    server.start()
    try:
        server.wait_until_ready(300)
        yield server
    finally:
        server.stop()


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tiny_config(tiny_model_path: pathlib.Path, engine_dtype: str = "float32", **changes: Any) -> dict[str, Any]:
    """A small run on the tiny model: 4 prompts, K=4, 16 new tokens, a length reward, W&B offline. The engine
    computes in `engine_dtype` (float32 by default, the trainer's: its log-probs are then the reference's)."""
    return {
        "model": {"path": str(tiny_model_path)},
        "prompts": {"items": ["Who are you?", "What is your name?", "Tell me a story.", "What is two plus two?"]},
        "generation": {
            "num_samples": 4,
            "max_new_tokens": 16,
            "max_model_len": 256,
            "kv_cache_gib": 0.25,
            "dtype": engine_dtype,
        },
        "reward": [{"name": "length", "args": {"target": 40, "unit": "chars"}}],
        "train": {"learning_rate": 1.0e-3, "batch_size": 4, "max_length": 128},
        "wandb": {"mode": "offline"},
        **changes,
    }


CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Who are you? I am a small language model. What is your name? My name is Athene.",
    "The capital of France is Paris. Two plus two is four. The sky is blue and the grass is green.",
    "Hello, how can I help you today? Please tell me about yourself and your work.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}-_/\\",
]


def build_tiny_llama(
    path: pathlib.Path, vocab_size: int = 512, seed: int = 0, chat_template: str | None = CHAT_TEMPLATE
) -> pathlib.Path:
    """Save a randomly initialised 2-layer Llama and its tokenizer as an ordinary HF folder at `path` (with
    `chat_template` None, a base model's: a tokenizer without a chat template)."""
    from transformers import LlamaForCausalLM

    return _build(path, LlamaForCausalLM, _tokenizer(vocab_size, chat_template), seed)


# A reward model's own template, different from the policy's: tests check the reward model is read through it.
REWARD_CHAT_TEMPLATE = (
    "{% for message in messages %}[{{ message['role'] | upper }}] {{ message['content'] }}\n{% endfor %}[END]"
)


def build_tiny_reward_model(path: pathlib.Path, seed: int = 1) -> pathlib.Path:
    """Save a randomly initialised 2-layer Llama sequence classifier (one logit: the reward) with its own
    tokenizer and chat template."""
    from transformers import LlamaForSequenceClassification

    return _build(path, LlamaForSequenceClassification, _tokenizer(512, REWARD_CHAT_TEMPLATE), seed, num_labels=1)


def _tokenizer(vocab_size: int, chat_template: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _build(path: pathlib.Path, model_class, tokenizer, seed: int, **config_args) -> pathlib.Path:
    import torch
    from transformers import LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **config_args,
    )
    model = model_class(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


KEYLESS = "EMPTY"  # the key an OpenAI client without api_key_env sends: the judge test server takes it


def is_up(url: str) -> bool:
    """Whether a server answers at `url` at all (a 401 for want of its API key is an answer)."""
    try:
        urllib.request.urlopen(f"{url}/health", timeout=5)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


class JudgeProxy:
    """Forwards chat requests to `upstream`. `rewrite(request, index, answer) -> new answer` changes each answer,
    `delay` holds the reply back (seconds), `api_key` (when set) must be the bearer token (a wrong one is echoed
    in the error). `seen` keeps every request's JSON body and headers."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rewrite: Callable[[dict[str, Any], int, str], str] | None = None
        self.delay = 0.0
        self.api_key: str | None = None
        self.seen: list[tuple[dict[str, Any], dict[str, str]]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                proxy.seen.append((body, dict(self.headers)))
                if proxy.api_key is not None and self.headers.get("Authorization") != f"Bearer {proxy.api_key}":
                    # as some endpoints do: the error echoes the request's key
                    message = f"bad API key: {self.headers.get('Authorization')}"
                    return self._reply(401, {"error": {"message": message, "type": "auth"}})
                time.sleep(proxy.delay)
                request = urllib.request.Request(
                    proxy.upstream + self.path.removeprefix("/v1"),
                    data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEYLESS}"},
                )
                answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
                if proxy.rewrite is not None:
                    for index, choice in enumerate(answer["choices"]):
                        choice["message"]["content"] = proxy.rewrite(body, index, choice["message"]["content"])
                self._reply(200, answer)

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.rewrite, self.delay, self.api_key = None, 0.0, None
        self.seen.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def check_stop_token_ends_greedy_answer(generator: Any, prompt_ids: list[int]) -> None:
    """A generator's greedy answer, then the same with its third token as `stop_token_ids`: the answer ends at the
    first place that token comes, and is counted finished: the setting reached vLLM and vLLM obeyed it."""
    from onpolicy.config.sections import Sampling
    from onpolicy.generation.sampling import vllm_sampling

    greedy = Sampling(temperature=0.0)
    [[free]] = generator._sample_ids([prompt_ids], vllm_sampling(greedy, 1, 8), None)
    stop = free.token_ids[2]
    stopping = greedy.model_copy(update={"stop_token_ids": [stop]})
    [[stopped]] = generator._sample_ids([prompt_ids], vllm_sampling(stopping, 1, 8), None)
    assert stopped.token_ids == free.token_ids[: free.token_ids.index(stop) + 1]
    assert stopped.finish_reason == "stop"


class SampleCounter:
    """A phase's counter (`onpolicy.interfaces.PhaseProgress`) that notes each advance."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.advances: list[int] = []

    def advance(self, n: int = 1) -> None:
        self.advances.append(n)


def check_progress_counts_each_sample(generator: Any, records: Sequence[Any]) -> None:
    """A generator's progress advances by one as each sample finishes (vLLM's own completion of it), and its phase
    ends at its total: the round's (K samples per prompt) and the evaluation's (an answer, then 2 samples per
    prompt), less the samples of a prompt too long to draw any."""
    from onpolicy.types import PromptRecord

    too_long = PromptRecord(id="long", messages=({"role": "user", "content": "word " * 300},))
    prompts = [*records, too_long]
    k = generator.config.num_samples
    counter = SampleCounter(len(prompts) * k)
    generator.generate(prompts, counter)
    assert counter.advances == [1] * (len(records) * k) and counter.total == len(records) * k
    counter = SampleCounter(len(prompts) * (1 + 2))
    generator.complete(prompts, 6, counter)
    generator.sample(prompts, 2, 6, counter)
    assert counter.advances == [1] * (len(records) * 3) and counter.total == len(records) * 3
