"""Each round's weights into vLLM servers through vLLM's weight-transfer API, without touching a disk.

One process group carries them to every server: the job's process is rank 0, and each server's workers follow it
(server i's first worker at rank 1 + the worker counts of the servers before it), so that one broadcast reaches
every server. The servers' side is vLLM's own transfer engine, chosen when the server starts
(`--weight-transfer-config`): `nccl` between GPUs, or on CPUs `onpolicy_gloo` (`onpolicy.generation.gloo_transfer`,
the NCCL engine's twin on gloo).

A sync follows vLLM's RL routes: `/start_weight_update` on every server, then the weights in chunks of at most
`chunk_bytes`, each chunk's names, dtypes and shapes posted to every server's `/update_weights` while the job
broadcasts its tensors (both sides meet inside the same collective calls), then `/finish_weight_update` with the
round as the weight version. Chunks bound what the job holds at once (a gathered FSDP2 policy arrives one tensor at
a time); the servers' layer-wise reload completes each layer as its last weight arrives.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from onpolicy.errors import OnpolicyError

Post = Callable[[str, str, "dict[str, Any] | None"], dict[str, Any]]  # (server url, path, body) -> answer
Get = Callable[[str, str], dict[str, Any]]
CHUNK_BYTES = 512 * 1024**2


class WeightTransfer:
    """The job's end of the transfer group to the servers at `urls` (`backend`: their transfer engine's name);
    `post` and `get` reach a server's routes with the job's key. Opened at the first sync."""

    def __init__(
        self,
        urls: Sequence[str],
        backend: str,
        post: Post,
        get: Get,
        timeout_s: float,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.urls = list(urls)
        self.backend = backend
        self.post, self.get = post, get
        self.timeout_s = timeout_s
        self.chunk_bytes = chunk_bytes
        self._broadcast: Callable[[torch.Tensor], None] | None = None
        self._close_group: Callable[[], None] = lambda: None
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype, version: str) -> None:
        """The weights (HF names) into every server, in `dtype`, as weight version `version`."""
        if self._broadcast is None:
            self._open()
        self._on_every_server(lambda url: self.post(url, "/start_weight_update", None))
        for chunk in _chunks(named_tensors, dtype, self.device, self.chunk_bytes):
            self._send_chunk(chunk)
        self._on_every_server(lambda url: self.post(url, "/finish_weight_update", {"weight_version": version}))

    def close(self) -> None:
        """Leave the group (the servers' side ends with them, or at their next init)."""
        close, self._close_group = self._close_group, lambda: None
        self._broadcast = None
        with contextlib.suppress(Exception):
            close()

    def _open(self) -> None:
        sizes = [int(self.get(url, "/get_world_size")["world_size"]) for url in self.urls]
        world_size = 1 + sum(sizes)
        address = _address_towards(self.urls[0])
        # the group's store listens on a socket bound here first: no other process can take its port in between,
        # and the store is this process's own (under torchrun, a rendezvous by address would join the launcher's)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, 0))
        listener.listen()
        port = listener.getsockname()[1]
        offsets = [1 + sum(sizes[:i]) for i in range(len(self.urls))]
        init = {"master_address": address, "master_port": port, "world_size": world_size}
        if self.backend == "onpolicy_gloo":
            init["timeout_s"] = self.timeout_s
        # each server's workers wait inside init for the group to form: ask them while this end opens it
        with concurrent.futures.ThreadPoolExecutor(len(self.urls)) as pool:
            asked = [
                pool.submit(self.post, url, "/init_weight_transfer_engine", {"init_info": {**init, "rank_offset": o}})
                for url, o in zip(self.urls, offsets)
            ]
            self._broadcast, self._close_group = self._open_group(listener, world_size)
            for answer in asked:
                answer.result()

    def _open_group(
        self, listener: socket.socket, world_size: int
    ) -> tuple[Callable[[torch.Tensor], None], Callable[[], None]]:
        address, port = listener.getsockname()[:2]
        if self.backend == "nccl":  # as vLLM's own NCCL trainer engine opens its end (its store binds the port)
            from vllm.distributed.weight_transfer.nccl_common import stateless_init_process_group

            listener.close()
            communicator = stateless_init_process_group(address, port, 0, world_size, self.device)
            stream = torch.cuda.current_stream()
            return (lambda tensor: communicator.broadcast(tensor, src=0, stream=stream)), lambda: None
        from vllm.distributed.utils import stateless_init_torch_distributed_process_group

        timeout = datetime.timedelta(seconds=self.timeout_s)
        group = stateless_init_torch_distributed_process_group(
            address, port, 0, world_size, "gloo", listen_socket=listener, timeout=timeout
        )
        return (lambda tensor: group.broadcast(tensor, 0).wait()), group.shutdown

    def _send_chunk(self, chunk: list[tuple[str, torch.Tensor]]) -> None:
        info = {
            "names": [name for name, _ in chunk],
            "dtype_names": [str(tensor.dtype).removeprefix("torch.") for _, tensor in chunk],
            "shapes": [list(tensor.shape) for _, tensor in chunk],
        }
        assert self._broadcast is not None
        pool = concurrent.futures.ThreadPoolExecutor(len(self.urls))
        try:
            # the servers receive inside /update_weights: post it while this end broadcasts
            asked = [pool.submit(self.post, url, "/update_weights", {"update_info": info}) for url in self.urls]
            for _, tensor in chunk:
                if any(answer.done() and answer.exception() for answer in asked):
                    break  # a server refused the chunk: it will not meet the next broadcast
                self._broadcast(tensor)
            refused = [answer.exception() for answer in asked if answer.done() and answer.exception()]
            if refused:
                raise refused[0]
            for answer in asked:
                answer.result()
        except Exception as exc:
            self.close()  # the group is out of step: the next sync opens a new one
            if isinstance(exc, OnpolicyError):
                raise
            raise OnpolicyError(f"the weight transfer to the vLLM servers failed ({self.backend}): {exc}") from exc
        finally:
            pool.shutdown(wait=False)  # never wait on a server still blocked in a broadcast this end left

    def _on_every_server(self, action: Callable[[str], Any]) -> None:
        with concurrent.futures.ThreadPoolExecutor(len(self.urls)) as pool:
            list(pool.map(action, self.urls))


def _chunks(
    named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype, device: torch.device, limit: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The tensors in `dtype` on `device`, contiguous, grouped in chunks of at most `limit` bytes (a tensor larger
    than that is a chunk of its own)."""
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        tensor = tensor.detach().to(device=device, dtype=dtype).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and size + nbytes > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, tensor))
        size += nbytes
    if chunk:
        yield chunk


def _address_towards(url: str) -> str:
    """This machine's address on the route to the server at `url` (127.0.0.1 for a server on this machine)."""
    host = urllib.parse.urlsplit(url).hostname or "127.0.0.1"
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # no packet is sent: it only picks a route
        probe.connect((host, 9))
        return probe.getsockname()[0]
