"""The HTTP clients that carry a job's key (generation servers, the reward model's server, a started server's health
check) against toy servers on loopback ports: redirects refused, no proxy for this machine, a total deadline and
a capped answer on every request, and no server started on a port where something already answers."""

import contextlib
import gzip
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from onpolicy.config import GenerationConfig
from onpolicy.errors import OnpolicyError
from onpolicy.types import Sample
from reward.keyed_http import HTTPStatusError, fetch, fetch_lines
from reward.reward_model_engines import ServerEngine
from reward.servers import Server

KEY = "the-job-key"
MODELS = json.dumps({"data": [{"id": "policy"}]}).encode()


@contextlib.contextmanager
def toy_server(reply):
    """A server on a loopback port answering every request with `reply(handler)`; yields its URL and the
    (method, path, Authorization) of every request it got."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _any(self):
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                reply(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as it should

        do_GET = do_POST = _any

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def answer(body: bytes, status: int = 200, **headers: str):
    def reply(handler):
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body)

    return reply


def models_then(reply):
    """`/v1/models` answered (a generator asks it when built), every other path by `reply`."""
    return lambda handler: (answer(MODELS) if handler.path == "/v1/models" else reply)(handler)


def generator(url, tmp_path, timeout_s=5.0):
    from onpolicy.generation.server import ServerGenerator

    config = GenerationConfig(server={"request_timeout_s": timeout_s})
    return ServerGenerator([url], None, config, tmp_path / "sync", api_key=KEY)


def generation_get(url, tmp_path, timeout_s=5.0):
    return generator(url, tmp_path, timeout_s)._get(url, "/weight_info")


def reward_model_get(url, tmp_path, timeout_s=5.0):
    return ServerEngine(lambda: Server(url, KEY), 2, 1, timeout_s)._get("/weight_info")


CLIENTS = pytest.mark.parametrize("client", [generation_get, reward_model_get], ids=["generation", "reward model"])
FAILURE = (OnpolicyError, RuntimeError)  # what each client raises


@CLIENTS
def test_a_redirect_is_refused_naming_where_it_points_and_the_key_goes_nowhere(client, tmp_path):
    with (
        toy_server(answer(b"{}")) as (elsewhere, taken),
        toy_server(models_then(answer(b"", 307, Location=f"{elsewhere}/steal"))) as (url, _),
    ):
        with pytest.raises(FAILURE, match=rf"307.*a redirect to '{elsewhere}/steal', not followed"):
            client(url, tmp_path)
    assert taken == []


@CLIENTS
def test_a_proxy_variable_is_not_used_for_this_machine(client, tmp_path, monkeypatch):
    with (
        toy_server(answer(b'{"weight_version": "proxy"}')) as (proxy, proxied),
        toy_server(models_then(answer(b'{"weight_version": "3"}'))) as (url, seen),
    ):
        _proxy_variable(monkeypatch, proxy)
        assert client(url, tmp_path) == {"weight_version": "3"}
        assert client(url.replace("127.0.0.1", "localhost"), tmp_path) == {"weight_version": "3"}
    assert proxied == [] and {key for _, _, key in seen} == {f"Bearer {KEY}"}


def _proxy_variable(monkeypatch, proxy):
    """`http_proxy` set to `proxy` (no `no_proxy`), as in a process started with it: urllib's default opener,
    which reads the variables once, is made afresh."""
    import urllib.request

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)


def test_other_hosts_go_through_the_proxy_unless_no_proxy_names_them(monkeypatch):
    with toy_server(answer(b"through the proxy")) as (proxy, proxied):
        _proxy_variable(monkeypatch, proxy)
        elsewhere = "http://server.onpolicy-test.invalid:8000/health"
        assert fetch(elsewhere, deadline_s=5, max_bytes=10_000) == b"through the proxy"
        monkeypatch.setenv("no_proxy", "onpolicy-test.invalid")
        with pytest.raises(OSError):  # straight to a name that does not resolve
            fetch(elsewhere, deadline_s=5, max_bytes=10_000)
    assert [path for _, path, _ in proxied] == [elsewhere]


def drip(data: bytes, every_s: float = 0.1):
    """The whole answer, status line and headers included, a byte at a time."""

    def reply(handler):
        for byte in data:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(every_s)

    return reply


SLOW = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"  # 40 bytes: 4 s at a byte every 0.1 s


@CLIENTS
def test_a_server_that_drips_its_answer_is_cut_at_the_request_s_deadline(client, tmp_path):
    with toy_server(models_then(drip(SLOW))) as (url, _):
        started = time.monotonic()
        with pytest.raises(FAILURE, match=r"no complete answer within 0.5 s"):
            client(url, tmp_path, timeout_s=0.5)
    assert time.monotonic() - started < 2


@CLIENTS
def test_an_answer_too_large_or_compressed_is_refused(client, tmp_path):
    with toy_server(models_then(answer(b" " * (17 * 1024**2)))) as (url, _):
        with pytest.raises(FAILURE, match=r"the answer ran over 16777216 bytes"):
            client(url, tmp_path)
    compressed = answer(gzip.compress(b'{"weight_version": "3"}'), Content_Encoding="gzip")
    with toy_server(models_then(compressed)) as (url, _):
        with pytest.raises(FAILURE, match=r"the answer came compressed \(Content-Encoding: gzip\)"):
            client(url, tmp_path)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", r"no HTTP answer \(BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", r"no HTTP answer \(IncompleteRead"),
    ],
    ids=["not HTTP", "cut short"],
)
def test_what_is_not_an_http_answer_is_an_os_error(data, reason):
    def reply(handler):
        handler.wfile.write(data)
        handler.close_connection = True

    with toy_server(reply) as (url, _):
        with pytest.raises(OSError, match=reason):
            fetch(url, deadline_s=5, max_bytes=1000)


def test_a_status_error_keeps_its_code_and_the_start_of_its_body():
    with toy_server(answer(b"x" * 5000, 503)) as (url, _):
        with pytest.raises(HTTPStatusError, match=r"HTTP 503: x{500}$") as error:
            fetch(url, b"{}", KEY, deadline_s=5, max_bytes=100_000)
    assert error.value.code == 503


def stream(*events: dict, padding: int = 0) -> bytes:
    """A streamed answer (server-sent events, as vLLM sends them) of `events`, a comment of `padding` bytes, and
    the closing `[DONE]`."""
    lines = [f"data: {json.dumps(event)}\n\n" for event in events]
    return ("".join(lines) + (f":{' ' * padding}\n\n" if padding else "") + "data: [DONE]\n\n").encode()


def delta(index: int, text: str, token: int, finish: str | None = None) -> dict:
    choice = {"index": index, "text": text, "token_ids": [token], "logprobs": {"token_logprobs": [-0.5]}}
    return {"choices": [{**choice, "finish_reason": finish}]}


def completions(prompts: int, n: int, padding: int = 0) -> bytes:
    """Each of the `prompts` x `n` choices in two deltas: "h" (token 5), then "i" (token 6) and its finish."""
    choices = range(prompts * n)
    return stream(*(delta(i, "h", 5) for i in choices), *(delta(i, "i", 6, "stop") for i in choices), padding=padding)


SAMPLING = {"n": 2, "max_tokens": 4, "temperature": 1.0}


def test_a_streamed_sampling_answer_is_joined_into_samples_and_capped_by_the_tokens_asked_for(tmp_path):
    """Two prompts of 3 tokens, 2 samples of at most 4 tokens each: 28 tokens, so 28 times 1030 bytes (1024 and
    the model name's 6) and 1 MiB of slack."""
    with toy_server(models_then(answer(completions(2, 2)))) as (url, _):
        samples = generator(url, tmp_path)._sample_ids([[1, 2, 3], [4, 5, 6]], SAMPLING, None)
    assert samples == [[Sample("hi", (5, 6), (-0.5, -0.5), "stop")] * 2] * 2
    with toy_server(models_then(answer(completions(2, 2, padding=1024**2 + 30 * 1024)))) as (url, _):
        with pytest.raises(OnpolicyError, match=r"failed on /v1/completions: the answer ran over 1077416 bytes"):
            generator(url, tmp_path)._sample_ids([[1, 2, 3], [4, 5, 6]], SAMPLING, None)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"choices": []}', r"ended its stream of /v1/completions before \[DONE\]"),
        (completions(1, 2), r"ended its stream of /v1/completions with 2 choices unfinished"),
        (stream({"choices": [{"index": 0}]}), r"streamed /v1/completions without the 4 choices asked for"),
        (stream(delta(4, "x", 1)), r"streamed /v1/completions without the 4 choices asked for"),
        (stream({"choices": 5}), r"streamed /v1/completions without the 4 choices asked for"),
        (stream({"error": {"message": "Internal server error", "code": 500}}), r"failed while streaming.*: Internal"),
        (stream(delta(0, "x", 1, "abort")), r"aborted a request \(it is shutting down or out of memory\)"),
    ],
    ids=["a whole answer", "too few choices", "choices without text", "an index out of range", "choices not a list",
         "an error event", "an aborted choice"],
)  # fmt: skip
def test_a_streamed_sampling_answer_without_its_samples_fails_naming_the_server(body, reason, tmp_path):
    with toy_server(models_then(answer(body))) as (url, _):
        with pytest.raises(OnpolicyError, match=rf"^the vLLM server at {url} {reason}"):
            generator(url, tmp_path)._sample_ids([[1, 2, 3], [4, 5, 6]], SAMPLING, None)


def chunked(*parts: bytes, between: Callable[[int], None]) -> Callable:
    """An answer in chunked transfer encoding (as vLLM streams), its status line and headers included, that calls
    `between(i)` before sending part i."""

    def reply(handler):
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, part in enumerate(parts):
            between(i)
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
        handler.close_connection = True

    return reply


def test_each_line_of_a_stream_comes_as_soon_as_it_has_arrived_and_the_stream_keeps_the_deadline():
    read = threading.Event()
    lines = []
    with toy_server(chunked(b"data: 1\n\n", b"data: 2\n", between=lambda i: i and read.wait(5))) as (url, _):
        for line in fetch_lines(url, b"{}", KEY, deadline_s=10, max_bytes=1000):
            lines.append(line)
            read.set()  # the second part is sent only once the first line was read
    assert lines == [b"data: 1\n", b"\n", b"data: 2\n"]
    endless = chunked(*[b"data: {}\n\n"] * 100, between=lambda i: time.sleep(0.1))
    with toy_server(endless) as (url, _):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no complete answer within 0.5 s"):
            list(fetch_lines(url, deadline_s=0.5, max_bytes=100_000))
        assert time.monotonic() - started < 2
        with pytest.raises(OSError, match=r"the answer ran over 300 bytes"):
            list(fetch_lines(url, deadline_s=5, max_bytes=300))


def test_a_server_is_not_started_on_a_port_where_something_answers(tmp_path, monkeypatch):
    from onpolicy.generation.serving import ManagedServer

    def no_start(*args, **kwargs):
        raise AssertionError("a server process was started")

    monkeypatch.setattr(subprocess, "Popen", no_start)
    with toy_server(answer(b"")) as (url, seen):
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(OnpolicyError, match=rf"^port {port} on 127.0.0.1 is taken: something answers there"):
            ManagedServer("model", port, tmp_path / "vllm.log").start()
    assert seen == []  # nothing was asked, and no key sent


def test_a_started_server_s_health_check_goes_through_no_proxy(tmp_path, monkeypatch):
    """A cluster's `http_proxy` (here a port where nothing listens) does not stop the job's own server from
    coming up, and its key reaches only the server."""
    from onpolicy.generation.serving import ManagedServer
    from tests.helpers import free_port

    _proxy_variable(monkeypatch, f"http://127.0.0.1:{free_port()}")
    with toy_server(answer(b"")) as (url, seen):
        server = ManagedServer("model", int(url.rsplit(":", 1)[1]), tmp_path / "vllm.log", api_key=KEY)
        # the server's process: one of the test's own, alive while the toy server answers for it
        server.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        try:
            server.wait_until_ready(5)
        finally:
            server.stop()
    assert seen == [("GET", "/health", f"Bearer {KEY}")]
