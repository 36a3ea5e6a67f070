"""What runs a reward model: each engine takes the conversations as token ids (rendered and cut by
`reward.reward_model.RewardModel`) and returns each one's logits.

- `TorchEngine` (`engine: transformers`): the checkpoint in this process with transformers, batched here.
- `VLLMEngine` (`engine: vllm`): vLLM's pooling runner in this process (`runner="pooling"`, `convert="classify"`:
  the score head read at the last token), which schedules the round's conversations itself.
- `ServerEngine` (`engine: server`): a `vllm serve --runner pooling` server, one the job starts or one given by
  URL, through its `/classify` route with token ids as input.

vLLM's classify output applies the head's activation (a sigmoid for one label) unless told not to; every engine
here returns the raw logits (`use_activation: false`), so a score is the same whichever engine computed it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from reward.base import Meter
from reward.keyed_http import HTTPStatusError, fetch
from reward.servers import Server, served_model

SERVED_NAME = "reward-model"  # what a started server serves the reward model as
MAX_ANSWER_BYTES = 16 * 1024**2  # a server's answer to one request (a batch's scores take a few KiB)


class Engine(Protocol):
    def start(self, tokenizer: Any) -> None:
        """Load or connect, once, before the first `logits` call."""

    def logits(self, conversations: Sequence[Sequence[int]], meter: Meter) -> list[list[float]]:
        """Each conversation's logits, in order; `calls` and `tokens` counted in `meter`."""
        ...


def resolved_dtype(dtype: str, cuda: bool) -> str:
    """`auto`: bfloat16 on a GPU, float32 on the CPU (where bfloat16 kernels exist on some CPUs only)."""
    return dtype if dtype != "auto" else ("bfloat16" if cuda else "float32")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class TorchEngine:
    """Batches of at most `batch_size` conversations (and `batch_tokens` padded tokens), longest first: sorted by
    length, a batch pads little, whichever groups its conversations are from."""

    def __init__(self, path: str, batch_size: int, batch_tokens: int | None, device: str, dtype: str) -> None:
        self.path = path
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.device = device
        self.dtype = dtype
        self._model: Any = None
        self._pad_id = 0

    def start(self, tokenizer: Any) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        device = self.device if self.device != "auto" else ("cuda" if _cuda() else "cpu")
        dtype = resolved_dtype(self.dtype, device.startswith("cuda"))
        model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=getattr(torch, dtype))
        # the score is read at each row's last token that is not padding
        self._pad_id = model.config.pad_token_id = tokenizer.pad_token_id
        self._model = model.to(device).eval()

    def logits(self, conversations: Sequence[Sequence[int]], meter: Meter) -> list[list[float]]:
        import torch

        order = sorted(range(len(conversations)), key=lambda i: len(conversations[i]), reverse=True)
        rows: list[list[float]] = [[] for _ in conversations]
        with torch.inference_mode():
            for batch in self.batches(order, conversations):
                longest = len(conversations[batch[0]])
                ids = torch.full((len(batch), longest), self._pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, i in enumerate(batch):
                    ids[row, : len(conversations[i])] = torch.tensor(conversations[i])
                    mask[row, : len(conversations[i])] = 1
                device = self._model.device
                out = self._model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                for i, logits in zip(batch, out.tolist()):
                    rows[i] = logits
                meter.add(calls=1, tokens=sum(len(conversations[i]) for i in batch))
        return rows

    def batches(self, order: Sequence[int], conversations: Sequence[Sequence[int]]) -> list[list[int]]:
        """`order` (longest first) cut into batches of at most `batch_size`, and `batch_tokens` padded tokens."""
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < self.batch_size:
                longest = len(conversations[batches[-1][0]])  # the batch's first is its longest
                if self.batch_tokens is None or longest * (len(batches[-1]) + 1) <= self.batch_tokens:
                    batches[-1].append(i)
                    continue
            batches.append([i])
        return batches


def vllm_arguments(dtype: str, max_length: int, kv_cache_gib: float, enforce_eager: bool) -> dict[str, Any]:
    """vLLM engine arguments for a reward model, the same in this process and for a started server. The KV cache
    is bounded: vLLM's CPU build otherwise sizes it from all free RAM."""
    return {
        "runner": "pooling",
        "convert": "classify",
        "dtype": resolved_dtype(dtype, _cuda()),
        "max_model_len": max_length,
        "kv_cache_memory_bytes": int(kv_cache_gib * 1024**3),
        "enforce_eager": enforce_eager,
        "seed": 0,
    }


class VLLMEngine:
    """The reward model on vLLM's pooling runner in this process, started on first use; the round's
    conversations go to it in one call, and vLLM batches them."""

    def __init__(self, path: str, arguments: dict[str, Any]) -> None:
        self.path = path
        self.arguments = arguments
        self._llm: Any = None

    def start(self, tokenizer: Any) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        from vllm import LLM

        self._llm = LLM(model=self.path, **self.arguments)  # a failure names the model: `RewardModel` says which

    def logits(self, conversations: Sequence[Sequence[int]], meter: Meter) -> list[list[float]]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        outputs = self._llm.classify(
            [TokensPrompt(prompt_token_ids=list(ids)) for ids in conversations],
            pooling_params=PoolingParams(use_activation=False),
            use_tqdm=False,
        )
        meter.add(calls=1, tokens=sum(map(len, conversations)))
        return [list(map(float, out.outputs.probs)) for out in outputs]


class ServerEngine:
    """A vLLM pooling server's `/classify`: requests of `batch_size` conversations, `concurrency` of them in
    flight (the server batches what is in flight), each within `timeout_s` in all and MAX_ANSWER_BYTES
    (`reward.keyed_http`: no redirect followed, no proxy to this machine)."""

    def __init__(self, server: Callable[[], Server], batch_size: int, concurrency: int, timeout_s: float) -> None:
        self.server = server  # the running server, checked for life at each call
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self._model: str | None = None  # what the server serves, asked at the first call

    def start(self, tokenizer: Any) -> None:
        pass  # nothing loads here: a server that does not answer yet is asked again at the next call

    def logits(self, conversations: Sequence[Sequence[int]], meter: Meter) -> list[list[float]]:
        if self._model is None:
            self._model = self._served_model()
        chunks = [list(conversations[i : i + self.batch_size]) for i in range(0, len(conversations), self.batch_size)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = list(pool.map(self._classify, chunks))
        meter.add(calls=len(chunks), tokens=sum(map(len, conversations)))
        return [row for answer in answers for row in answer]

    def _classify(self, chunk: list[Sequence[int]]) -> list[list[float]]:
        body = {"model": self._model, "input": [list(ids) for ids in chunk], "use_activation": False}
        data = sorted(self._post("/classify", body)["data"], key=lambda item: item["index"])
        if len(data) != len(chunk):
            raise RuntimeError(f"the reward model server answered {len(data)} scores for {len(chunk)} inputs")
        return [list(map(float, item["probs"])) for item in data]

    def _served_model(self) -> str:
        model = served_model(self._get("/v1/models"))
        if model is None:
            raise RuntimeError(f"the vLLM server at {self.server().url} names no model it serves in /v1/models")
        return model

    def _get(self, route: str) -> Any:
        return self._request(route, None)

    def _post(self, route: str, body: dict[str, Any]) -> Any:
        return self._request(route, json.dumps(body).encode())

    def _request(self, route: str, body: bytes | None) -> Any:
        server = self.server()
        try:
            answer = fetch(
                server.url + route, body, server.api_key, deadline_s=self.timeout_s, max_bytes=MAX_ANSWER_BYTES
            )
        except HTTPStatusError as exc:
            raise RuntimeError(
                f"the reward model server at {server.url} refused {route} ({exc.code}): {exc.detail}"
            ) from None
        except OSError as exc:
            raise RuntimeError(
                f"the reward model server at {server.url} did not answer {route}: {exc} (timeout_s: {self.timeout_s:g})"
            ) from None
        try:
            return json.loads(answer)
        except ValueError:
            raise RuntimeError(f"the reward model server at {server.url} answered {route} with no JSON") from None
