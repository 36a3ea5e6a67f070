"""A real OpenAI-compatible judge for tests: `vllm serve` (vLLM's API server, CPU) on a loopback port, and a
small proxy in front of it that can rewrite the judge's answers, delay them or check the API key - so tests can
inject the bad answers and slow responses real endpoints sometimes give."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_server(model: pathlib.Path, name: str = "judge", log: pathlib.Path | None = None) -> Iterator[str]:
    """`vllm serve model` on a free loopback port; yields its base URL (…/v1) once it answers."""
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--seed", "0",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {process.returncode}; see {log}")
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("vllm serve did not come up in 240 s") from None
                time.sleep(1)
        yield f"{url}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        if log:
            out.close()


class JudgeProxy:
    """Forwards chat requests to `upstream`. `rewrite(request, index, answer) -> new answer` changes each answer,
    `delay` holds the reply back (seconds), `api_key` (when set) must be the bearer token. `seen` keeps every
    request's JSON body and headers."""

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
                    return self._reply(401, {"error": {"message": "bad API key", "type": "auth"}})
                time.sleep(proxy.delay)
                request = urllib.request.Request(
                    proxy.upstream + self.path.removeprefix("/v1"),
                    data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
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
