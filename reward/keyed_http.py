"""HTTP to the servers a job sends its key to: the vLLM servers it starts or is given (generation, reward models).

urllib's defaults do not fit a request that carries a key in its `Authorization` header:
- it follows redirects, and takes the header along to wherever a server points it: here a redirect is an error
  that names where it pointed;
- it sends every request through the proxy of `http_proxy`, 127.0.0.1 included, so a cluster's proxy variable
  hands the job's key to the proxy in clear (and the job's own servers never seem to come up): here a loopback
  address never goes through a proxy, and other hosts do as `http_proxy`, `https_proxy` and `no_proxy` say;
- its timeout bounds each read of the socket, so a server that sends a byte now and then holds a request for as
  long as it likes, and nothing bounds an answer's size: here a request has a total deadline (connecting,
  sending and reading), and its answer a cap on the bytes that come over the wire, headers included (nothing
  is decompressed: no compression is asked for, and an answer compressed anyway is refused).

An answer read line by line as it comes (`fetch_lines`: a stream of events) keeps to the same deadline and cap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import io
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any


class HTTPStatusError(Exception):
    """The server answered with a status other than 2xx (a redirect included): its `code`, and `detail`, where
    a redirect points or the start of the answer's body."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"HTTP {code}: {detail}")
        self.code = code
        self.detail = detail


def fetch(
    url: str, body: bytes | None = None, api_key: str | None = None, *, deadline_s: float, max_bytes: int
) -> bytes:
    """The body of the answer to a GET of `url` (a POST of the JSON `body`, when given), sent with `api_key` as
    bearer token, within `deadline_s` seconds in all and `max_bytes` received. A status other than 2xx raises
    `HTTPStatusError`; no connection, and no (HTTP) answer in time, or one too large or compressed, `OSError`."""
    with _answer(url, body, api_key, deadline_s, max_bytes) as answer:
        return answer.read()


def fetch_lines(
    url: str, body: bytes | None = None, api_key: str | None = None, *, deadline_s: float, max_bytes: int
) -> Iterator[bytes]:
    """The lines of the answer `fetch` would return (newline included), each as soon as it has arrived: for an
    answer that comes as a stream of events (a vLLM server's `"stream": true`). The deadline and the byte cap
    hold for the whole stream, and so do `fetch`'s errors, raised where the stream fails."""
    with _answer(url, body, api_key, deadline_s, max_bytes) as answer:
        yield from answer


@contextlib.contextmanager
def _answer(
    url: str, body: bytes | None, api_key: str | None, deadline_s: float, max_bytes: int
) -> Iterator[http.client.HTTPResponse]:
    """The answer to `url` (as `fetch` describes), open for reading while the block runs; what goes wrong while
    it is read there is raised as `fetch` raises it."""
    headers = {"Accept-Encoding": "identity"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    limits = _Limits(time.monotonic() + deadline_s, deadline_s, max_bytes)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler(_proxies(url)),
        _NoRedirects(),
        _HTTPHandler(limits),
        _HTTPSHandler(limits),
    )
    try:
        with opener.open(urllib.request.Request(url, body, headers), timeout=deadline_s) as answer:
            encoding = answer.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise OSError(f"the answer came compressed (Content-Encoding: {encoding}), which was not asked for")
            yield answer
    except urllib.error.HTTPError as exc:
        with exc:
            if 300 <= exc.code < 400:
                where = urllib.parse.urljoin(url, exc.headers.get("Location", ""))
                detail = f"a redirect to {where!r}, not followed (it would carry the key)"
            else:
                detail = _start_of(exc)
        raise HTTPStatusError(exc.code, detail) from None
    except urllib.error.URLError as exc:  # no connection: urllib wraps the reason
        reason = exc.reason
        raise (reason if isinstance(reason, OSError) else OSError(str(reason))) from None
    except http.client.HTTPException as exc:  # a status line or body that is not HTTP's, an answer cut short
        raise OSError(f"no HTTP answer ({type(exc).__name__}: {str(exc)[:200]})") from None


def _is_loopback(host: str) -> bool:
    """Whether `host` (a URL's host name) is this machine's loopback: `localhost`, 127.0.0.0/8, ::1 (or the
    unspecified address, which connects there too)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _proxies(url: str) -> dict[str, str]:
    """The proxies for `url`: none for a loopback host; otherwise the environment's, which urllib skips for the
    hosts of `no_proxy`."""
    if _is_loopback(urllib.parse.urlsplit(url).hostname or ""):
        return {}
    return urllib.request.getproxies()


def _start_of(error: urllib.error.HTTPError) -> str:
    try:
        return error.read(2000).decode(errors="replace")[:500]
    except (OSError, http.client.HTTPException):
        return "(its body could not be read)"


@dataclasses.dataclass
class _Limits:
    deadline: float  # time.monotonic()
    deadline_s: float
    max_bytes: int
    received: int = 0

    def left(self) -> float:
        """Seconds left before the deadline; past it, a timeout."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out()
        return left

    def timed_out(self) -> TimeoutError:
        return TimeoutError(f"no complete answer within {self.deadline_s:g} s")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the redirect as an HTTPError


class _Bounded:
    """What makes an `http.client` connection keep to `limits`: each connect and send within what is left before
    the deadline, and the answer read through `_BoundedReader`."""

    def __init__(self, *args: Any, limits: _Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.response_class = functools.partial(_BoundedResponse, limits=limits)

    def connect(self) -> None:
        self.timeout = self.limits.left()
        super().connect()

    def send(self, data: Any) -> None:
        if self.sock is not None:
            self.sock.settimeout(self.limits.left())
        super().send(data)


class _BoundedHTTPConnection(_Bounded, http.client.HTTPConnection):
    pass


class _BoundedHTTPSConnection(_Bounded, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, limits: _Limits) -> None:
        super().__init__()
        self.limits = limits

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_BoundedHTTPConnection, limits=self.limits), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, limits: _Limits) -> None:
        super().__init__()
        self.limits = limits

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_BoundedHTTPSConnection, limits=self.limits)
        return self.do_open(connection, req, context=self._context)


class _BoundedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, limits: _Limits, **kwargs: Any) -> None:
        super().__init__(_ReadsWithin(sock, limits), *args, **kwargs)


class _ReadsWithin:
    """A socket as `http.client.HTTPResponse` reads it (`makefile`), through `_BoundedReader`."""

    def __init__(self, sock: socket.socket, limits: _Limits) -> None:
        self.sock = sock
        self.limits = limits

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_BoundedReader(self.sock, self.limits))


class _BoundedReader(io.RawIOBase):
    """The socket's bytes, each read waiting at most until the deadline, all of them counted against the cap."""

    def __init__(self, sock: socket.socket, limits: _Limits) -> None:
        self.sock = sock
        self.raw = sock.makefile("rb", buffering=0)  # holds the socket open while the answer is read, as urllib wants
        self.limits = limits

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.sock.settimeout(self.limits.left())
        try:
            count = self.raw.readinto(buffer) or 0
        except TimeoutError:
            raise self.limits.timed_out() from None
        self.limits.received += count
        if self.limits.received > self.limits.max_bytes:
            raise OSError(f"the answer ran over {self.limits.max_bytes} bytes")
        return count

    def close(self) -> None:
        self.raw.close()
        super().close()
