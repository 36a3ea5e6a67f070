"""HTTP for judge endpoints where every request has a total deadline and a cap on what it receives.

The OpenAI client's HTTP stack (httpx2 and httpcore2, its forks of httpx and httpcore) times each read, connect
and write on its own: an endpoint that sends a byte now and then never trips them, and nothing bounds how large
an answer may be. Here each logical request (all its retries included) runs inside `limits(deadline_s,
max_bytes)`, and the connections' sockets honour it: every read waits at most until the deadline, and the bytes
received (headers and body) count against the cap. Past either, the read fails as a timeout or a read error,
which the OpenAI client turns into its own errors, and `limits` says which limit it was (`Limits.exceeded`).
The cap counts the bytes as they come over the wire, and httpx would decompress an answer only after them (a
few kilobytes of gzip are gigabytes of JSON): so answers are asked for uncompressed (`Accept-Encoding:
identity`), and one compressed anyway is refused.

The limits live in a thread-local: a sync request, its retries and the reading of its body all run in the
thread that asked, and a connection serves one request at a time.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore2 as httpcore
import httpx2 as httpx

_current = threading.local()


@dataclasses.dataclass
class Limits:
    """One request's deadline (time.monotonic) and byte cap, and which of them it ran past (None: neither);
    `final`: what it ran past, a retry would too (an answer too large or compressed)."""

    deadline: float
    max_bytes: int
    received: int = 0
    exceeded: str | None = None
    final: bool = False

    def refuse(self, why: str) -> None:
        self.exceeded, self.final = why, True


@contextmanager
def limits(deadline_s: float, max_bytes: int) -> Iterator[Limits]:
    """Bound the requests made in this thread inside the block: `deadline_s` seconds in all, `max_bytes`."""
    _current.limits = Limits(time.monotonic() + deadline_s, max_bytes)
    try:
        yield _current.limits
    finally:
        _current.limits = None


def bounded_transport(connections: int) -> httpx.BaseTransport:
    """An httpx transport (for `httpx.Client(transport=...)`) of up to `connections` connections whose sockets
    honour `limits`, for answers that come uncompressed."""
    room = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    transport = httpx.HTTPTransport(limits=room)
    pool = transport._pool  # httpx builds its httpcore pool with the default backend: every socket passes ours
    pool._network_backend = _BoundedBackend(pool._network_backend)
    return _Uncompressed(transport)


class _Uncompressed(httpx.BaseTransport):
    """Asks for each answer uncompressed, and refuses one that comes compressed all the same."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "identity"
        response = self._inner.handle_request(request)
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return response
        response.close()
        why = f"the answer came compressed (Content-Encoding: {encoding}), which was not asked for"
        current: Limits | None = getattr(_current, "limits", None)
        if current is not None:
            current.refuse(why)
        raise httpx.DecodingError(why, request=request)

    def close(self) -> None:
        self._inner.close()


class _BoundedBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, _bounded(timeout), local_address, socket_options)
        return _BoundedStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _BoundedStream(self._inner.connect_unix_socket(path, _bounded(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _BoundedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, _bounded(timeout))
        current: Limits | None = getattr(_current, "limits", None)
        if current is not None:
            current.received += len(data)
            if current.received > current.max_bytes:
                current.refuse(f"the answer ran over {current.max_bytes} bytes")
                raise httpcore.ReadError(current.exceeded)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _BoundedStream(self._inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _bounded(timeout: float | None) -> float | None:
    """`timeout`, shortened to what is left before this thread's request deadline; past it, a timeout now."""
    current: Limits | None = getattr(_current, "limits", None)
    if current is None:
        return timeout
    if current.final:
        raise httpcore.ReadError(current.exceeded)  # a retry of a request refused: it would be again
    left = current.deadline - time.monotonic()
    if left <= 0:
        current.exceeded = "no complete answer before the request's deadline"
        raise httpcore.ReadTimeout(current.exceeded)
    return left if timeout is None else min(timeout, left)
