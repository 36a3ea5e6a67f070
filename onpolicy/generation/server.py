"""Generation on vLLM servers: the policy served by one or more OpenAI-compatible `vllm serve` processes, on this
machine or others, instead of an engine inside the job.

Requests carry the prompts' token ids (the chat template applied here, as for the in-process engine) and ask for
each sample's token ids and log-probs (`return_token_ids`, `logprobs: 0`), so training still scores exactly the
sampled tokens, and the engine's log-probs can stand in for the reference's. A round's prompts are spread over
the servers, one batched request each, in parallel, streamed back so that each sample counts as it finishes
(`completion_stream`).

Weights reach the servers after each update without a restart, by one of two routes (`generation.server.sync`):
- transfer: through vLLM's weight-transfer API, broadcast from the job's process to every server's workers
  (`onpolicy.generation.transfer`: NCCL between GPUs, onpolicy's gloo engine on CPUs), no disk touched;
- disk: the policy is written as safetensors into a folder every server can read (a folder of this job's own in
  `generation.server.sync_dir`), and each server reloads it in place through vLLM's own `reload_weights`
  (`/collective_rpc`, dev mode): any machine, across nodes with shared storage, at the cost of one write and one
  read of the weights per round (docs/scaling.md).
Either way each server drops its prefix cache and takes the round as its weight version. Before sampling, every
server's `/weight_info` must show the version last synced: a round never samples from stale weights (say, a
server restarted in between).

Every request has a total deadline (`generation.server.request_timeout_s`) and a cap on its answer (a sampling
answer's grows with the tokens asked for), follows no redirect and goes through no proxy to this machine
(`reward.keyed_http`); a server that fails or does not answer fails the round with an error that names it, and
the run resumes from its last complete round.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import shutil
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any

import torch

from onpolicy.config import GenerationConfig
from onpolicy.config.sections import ServerConfig
from onpolicy.devices import engine_dtype
from onpolicy.errors import ConfigError, OnpolicyError
from onpolicy.generation.completion_stream import streamed_samples
from onpolicy.generation.sampling import GroupSampling
from onpolicy.generation.serving import ADAPTER_NAME
from onpolicy.generation.transfer import WeightTransfer
from onpolicy.generation.weight_check import check_servers, comparable, digest
from onpolicy.interfaces import PhaseProgress
from onpolicy.types import Sample
from reward.keyed_http import HTTPStatusError, fetch, fetch_lines
from reward.servers import served_model

SERVED_NAME = "policy"  # the model name onpolicy's servers serve under (any name does for a server given by URL)
ROUTE_ANSWER_BYTES = 16 * 1024**2  # of an answer to any route but sampling (a weight version, a list of checksums)
# A sampling answer streams at worst one event per sampled token (its text, id, log-prob, `token_id:N` and offset,
# and the event's own id and model name: 380-540 bytes measured with the model name "policy"); a prompt token (its
# id in `prompt_token_ids`, repeated in each choice) takes under 10: a sampling answer may take this much, plus the
# model name's length, per token of each choice, prompt and `max_tokens`, plus ANSWER_BYTES_SLACK.
ANSWER_BYTES_PER_TOKEN = 1024
ANSWER_BYTES_SLACK = 1024**2


class ServerGenerator(GroupSampling):
    """Samples `num_samples` responses per prompt from vLLM servers at `urls`; `check_alive` (optional) is
    asked before each use, for servers this job started."""

    def __init__(
        self,
        urls: Sequence[str],
        tokenizer: Any,
        config: GenerationConfig,
        sync_dir: pathlib.Path,
        check_alive: Callable[[], None] = lambda: None,
        api_key: str | None = None,
        sync: str = "disk",
    ) -> None:
        """`sync`: "disk", or the vLLM transfer engine the servers were started with (`--weight-transfer-config`)."""
        self.urls = [url.rstrip("/").removesuffix("/v1") for url in urls]
        self.api_key = api_key  # sent on every request
        self.tokenizer = tokenizer
        self.config = config
        self.sync_dir = sync_dir
        self.folder = sync_dir / f"onpolicy-{uuid.uuid4().hex[:12]}"  # this job's own: others may share sync_dir
        self.engine_dtype: torch.dtype = getattr(torch, engine_dtype(config.dtype))  # what the servers compute in
        self.check_alive = check_alive
        self.timeout = config.server.request_timeout_s
        self.version: str | None = None  # the weight version last synced (None: the servers' own start-up weights)
        self.model_name = self._served_name(self.urls[0])
        self.transfer = None if sync == "disk" else WeightTransfer(self.urls, sync, self._post, self._get, self.timeout)
        self.syncs = 0  # whole-weight syncs so far
        self.sent_digests: dict[str, str] = {}  # of the last sync's weights a server holds exactly as sent

    def _sample_ids(
        self, prompts: list[list[int]], params: dict[str, Any], progress: PhaseProgress | None
    ) -> list[list[Sample]]:
        """The prompts spread over the servers (one streamed request each, in parallel: a server batches all of
        its share), after checking that every server holds the weights last synced."""
        if not prompts:
            return []
        self.check_alive()
        self._on_every_server(self._check_version)
        shares = [list(range(i, len(prompts), len(self.urls))) for i in range(len(self.urls))]
        n = params["n"]
        request = {"model": self.model_name, "return_token_ids": True, "return_tokens_as_token_ids": True, **params}
        per_token = ANSWER_BYTES_PER_TOKEN + len(self.model_name)
        finished = progress.advance if progress is not None else lambda: None

        def ask(url: str, indices: list[int]) -> list[Sample]:
            if not indices:
                return []
            tokens = sum(len(prompts[i]) + params["max_tokens"] for i in indices) * n
            body = {**request, "prompt": [prompts[i] for i in indices], "stream": True}
            stream = self._stream(url, "/v1/completions", body, tokens * per_token + ANSWER_BYTES_SLACK)
            with contextlib.closing(stream) as lines:  # a stream that fails is hung up at once
                return streamed_samples(lines, len(indices) * n, finished, f"the vLLM server at {url}")

        with concurrent.futures.ThreadPoolExecutor(len(self.urls)) as pool:
            answers = list(pool.map(ask, self.urls, shares))
        samples: list[list[Sample]] = [[] for _ in prompts]
        for indices, answer in zip(shares, answers):
            for position, prompt_index in enumerate(indices):  # samples come prompt-major, n per prompt
                samples[prompt_index] = answer[position * n : (position + 1) * n]
        return samples

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str | None = None) -> None:
        """Send the weights (HF names) to every server, which takes `version` as its weight version: through the
        transfer group, or written into a new folder of `sync_dir` (the previous one deleted) that every server
        reloads in place."""
        version = version if version is not None else str(int(self.version or 0) + 1)
        self.check_alive()
        self.sent_digests = {}
        named = _noting_digests(named_tensors, self.engine_dtype, self.sent_digests)
        if self.transfer is not None:
            self.transfer.send(named, self.engine_dtype, version)
            self._on_every_server(lambda url: self._post(url, "/reset_prefix_cache", None))
            self.version = version
        else:
            self._load_from_disk(named, version)
        self.syncs += 1
        every = self.config.server.check_every
        if every and (self.syncs == 1 or self.syncs % every == 0):
            self.check_weights()

    def check_weights(self) -> None:
        """Raise where a server does not hold the weights the job sent last (`onpolicy.generation.weight_check`)."""
        held = {url: self._post(url, "/weight_checker", {"action": "checksum"})["checksums"] for url in self.urls}
        check_servers(held, self.sent_digests, str(self.version))

    def _load_from_disk(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str) -> None:
        from safetensors.torch import save_file

        folder = self.folder / f"weights-{version}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        save_file(_unshared(named_tensors, self.engine_dtype), folder / "model.safetensors")
        self.check_alive()
        self._on_every_server(lambda url: self._reload(url, folder, version))
        previous, self.version = self.version, version
        if previous is not None and previous != version:
            shutil.rmtree(self.folder / f"weights-{previous}", ignore_errors=True)

    def load_adapter(self, save_adapter: Callable[[pathlib.Path], None], version: str | None = None) -> None:
        """Write the LoRA adapter into a new folder of `sync_dir` (`save_adapter(folder)`), have every server load it
        in place of the one before (`/v1/load_lora_adapter`, `load_inplace`) and take `version` as its weight
        version; requests then ask for the adapter. Servers need `--enable-lora` and
        VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (those the job starts have both)."""
        version = version if version is not None else str(int(self.version or 0) + 1)
        folder = self.folder / f"adapter-{version}"
        shutil.rmtree(folder, ignore_errors=True)
        save_adapter(folder)
        self.check_alive()
        load = {"lora_name": ADAPTER_NAME, "lora_path": str(folder), "load_inplace": True}
        self._on_every_server(lambda url: self._load_adapter(url, load, version))
        self.model_name = ADAPTER_NAME
        previous, self.version = self.version, version
        if previous is not None and previous != version:
            shutil.rmtree(self.folder / f"adapter-{previous}", ignore_errors=True)

    def rest(self) -> bool:
        return False  # servers have devices of their own

    def wake(self) -> None:
        pass

    def close(self) -> None:
        """Leave the transfer group; remove this job's weights from `sync_dir` (and `sync_dir` itself, once nobody
        else's are in it)."""
        if self.transfer is not None:
            self.transfer.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.sync_dir.rmdir()

    def _reload(self, url: str, folder: pathlib.Path, version: str) -> None:
        self._post(url, "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
        self._post(url, "/reset_prefix_cache", None)
        self._post(url, "/update_weight_version", {"new_version": version})

    def _load_adapter(self, url: str, load: dict[str, Any], version: str) -> None:
        self._post(url, "/v1/load_lora_adapter", load)
        self._post(url, "/reset_prefix_cache", None)
        self._post(url, "/update_weight_version", {"new_version": version})

    def _check_version(self, url: str) -> None:
        if self.version is None:
            return
        served = self._get(url, "/weight_info").get("weight_version")
        if served != self.version:
            raise OnpolicyError(
                f"the vLLM server at {url} serves weight version {served!r}, not the policy's {self.version!r} "
                "(restarted or changed by someone else?); resume the run to push its weights again"
            )

    def _on_every_server(self, action: Callable[[str], None]) -> None:
        with concurrent.futures.ThreadPoolExecutor(len(self.urls)) as pool:
            list(pool.map(action, self.urls))

    def _served_name(self, url: str) -> str:
        return served_model(self._get(url, "/v1/models")) or SERVED_NAME

    def _get(self, url: str, path: str) -> dict[str, Any]:
        return self._send(url, path, None)

    def _post(self, url: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        return self._send(url, path, json.dumps(body).encode() if body is not None else b"")

    def _send(self, url: str, path: str, data: bytes | None) -> dict[str, Any]:
        """The JSON answer of the server at `url` to `path` (a GET without `data`), within the request deadline
        and ROUTE_ANSWER_BYTES."""
        with self._failures(url, path):
            body = fetch(url + path, data, self.api_key, deadline_s=self.timeout, max_bytes=ROUTE_ANSWER_BYTES)
        try:
            answer = json.loads(body or b"{}")
        except ValueError:  # some routes answer in plain text
            answer = None
        return answer if isinstance(answer, dict) else {"text": body.decode(errors="replace")}

    def _stream(self, url: str, path: str, body: dict[str, Any], max_bytes: int) -> Generator[bytes, None, None]:
        """The lines of the server's streamed answer to the POST of `body` to `path`, as they come, within the
        request deadline and `max_bytes` in all."""
        with self._failures(url, path):
            data = json.dumps(body).encode()
            yield from fetch_lines(url + path, data, self.api_key, deadline_s=self.timeout, max_bytes=max_bytes)

    @contextlib.contextmanager
    def _failures(self, url: str, path: str) -> Iterator[None]:
        """A request's failure as the job's error, naming the server, the route and what to check."""
        try:
            yield
        except HTTPStatusError as exc:
            hint = ""
            if exc.code == 404 and path == "/v1/load_lora_adapter":
                hint = " (is it running with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True?)"
            elif exc.code == 404 and path != "/v1/completions":
                hint = " (is it running with VLLM_SERVER_DEV_MODE=1?)"
            elif exc.code == 401:
                hint = " (its API key: generation.server.api_key_env names the variable that holds it)"
            raise OnpolicyError(
                f"the vLLM server at {url} answered {path} with HTTP {exc.code}{hint}: {exc.detail}"
            ) from None
        except OSError as exc:
            self.check_alive()  # a started server that died says so, with its log
            raise OnpolicyError(
                f"the vLLM server at {url} failed on {path}: {exc} (timeout: generation.server.request_timeout_s = "
                f"{self.timeout:.0f} s)"
            ) from None


def external_api_key(server: ServerConfig) -> str | None:
    """The API key of the servers at `generation.server.urls`, from the variable `api_key_env` names (None: no
    key). Checked before anything starts."""
    if server.api_key_env is None:
        return None
    key = os.environ.get(server.api_key_env)
    if not key:
        raise ConfigError(
            f"generation.server.api_key_env: the environment variable {server.api_key_env} is not set; it must hold "
            "the API key of the servers at generation.server.urls"
        )
    return key


def _noting_digests(
    named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype, digests: dict[str, str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors as they come, noting into `digests` the digest (in the servers' `dtype`) of each one a server
    holds exactly as sent."""
    for name, tensor in named_tensors:
        if comparable(tensor):
            digests[name] = digest(tensor.detach().to(dtype))
        yield name, tensor


def _unshared(named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors in the engine's dtype, on the CPU, each in storage of its own, as safetensors wants them. Tied
    tensors (embeddings and LM head) are written under both names: vLLM's in-place reload counts the LM head as
    a layer of its own, and one left out of the file is reset (its log-probs come out uniform)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, tensor in named_tensors:
        key = (tensor.data_ptr(), tuple(tensor.shape))
        copy = tensor.detach().to(device="cpu", dtype=dtype).contiguous()
        out[name] = copy.clone() if key in seen else copy
        seen.add(key)
    return out
