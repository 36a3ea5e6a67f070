"""vLLM servers that onpolicy starts and supervises: `vllm serve` processes on this machine, one per port.

A started server writes its log into the run directory, must answer `/health` within its start-up time (or the
job stops with its log's last lines), is checked for life before each use, and is stopped on every way out of
the job (normal end, error, SIGINT/SIGTERM, and the interpreter's exit). It runs with `VLLM_SERVER_DEV_MODE=1`:
onpolicy moves weights in through the dev routes (`/collective_rpc`, `/update_weight_version`). Those routes
would let any local process load other weights into the policy's server, so every route of a started server,
dev routes included, takes an API key of the job's own (`onpolicy.generation.guarded_server`), which onpolicy
sends on each request (through `reward.keyed_http`: no proxy, no redirect). A server starts only on a port where
nothing answers yet: whatever answered there would be sent the key and taken for the job's server.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from onpolicy.errors import OnpolicyError
from onpolicy.generation.placement import ServerPlace
from onpolicy.run.launch import LAUNCHER_VARIABLES
from reward.keyed_http import HTTPStatusError, fetch

ADAPTER_NAME = "policy-lora"  # what the policy's LoRA adapter is served as (`generation.lora_sync: adapter`)


class ManagedServer:
    """One `vllm serve` process (the OpenAI-compatible API server of vLLM) serving `model` on `host:port`."""

    def __init__(
        self,
        model: str | pathlib.Path,
        port: int,
        log_path: pathlib.Path,
        args: Sequence[str] = (),
        host: str = "127.0.0.1",
        served_model_name: str = "policy",
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env`: variables set for the server on top of the job's environment (its `CUDA_VISIBLE_DEVICES`)."""
        self.url = f"http://{host}:{port}"
        self.host, self.port = host, port
        self.log_path = log_path
        self.api_key = api_key if api_key is not None else secrets.token_urlsafe(32)
        # `guarded_server` is `vllm serve` (vLLM's CPU build installs no working `vllm` script) with the API key
        # guarding every route; the module form also runs from this interpreter's environment. `with_parent`: the
        # server ends when the job's process does, even when that is killed.
        self.command = [
            sys.executable, "-m", "onpolicy.generation.with_parent",
            sys.executable, "-m", "onpolicy.generation.guarded_server", "--model", str(model),
            "--served-model-name", served_model_name, "--host", host, "--port", str(port), *args,
        ]  # fmt: skip
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """The server's environment: the job's, without the launcher's variables (the server is not one of the
        trainers), with dev routes for weight syncs, adapters loaded at run time (`generation.lora_sync: adapter`),
        the API key (not `--api-key`: a command line shows in `ps` to every local user) and the server's `env`."""
        env = {
            **os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_NO_USAGE_STATS": "1",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_API_KEY": self.api_key,
        }  # fmt: skip
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # a server runs its engine core in its own process
        for name in LAUNCHER_VARIABLES:
            env.pop(name, None)
        return {**env, **self.env}

    def start(self, port_setting: str = "generation.server.port") -> ManagedServer:
        """Start the server, where its port is free (`port_setting`: the config's name for the port)."""
        check_port_free(self.host, self.port, port_setting)
        env = self.environment()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        atexit.register(self.stop)
        return self

    def wait_until_ready(self, timeout_s: float, setting: str = "generation.server.startup_timeout_s") -> None:
        """Block until `/health` answers; a server that exits or stays silent stops the job, quoting its log
        (`setting`: the config's name for `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            try:
                fetch(f"{self.url}/health", api_key=self.api_key, deadline_s=5, max_bytes=HEALTH_BYTES)
                self.check_alive()  # still running: not one that failed to listen while something else answered
                return
            except (OSError, HTTPStatusError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise OnpolicyError(
                        f"the vLLM server at {self.url} did not come up in {timeout_s:.0f} s "
                        f"({setting}); its log, {self.log_path}, ends:\n{self.log_tail()}"
                    ) from None
                time.sleep(1)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise OnpolicyError(
                f"the vLLM server at {self.url} exited with code {self.process.returncode}; its log, "
                f"{self.log_path}, ends:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 30 s), and whatever of its process group outlived it (an
        engine core whose server was killed); safe to call again."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # its own group (start_new_session): the server's children
        process.wait(timeout=30)


HEALTH_BYTES = 64 * 1024  # of an answer to /health (vLLM's is empty)


def check_port_free(host: str, port: int, setting: str) -> None:
    """Refuse a port where something already answers: a server the job started there would fail to listen,
    while what answers would be sent the job's key and taken for the job's server (`setting`: the config's name
    for the port)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError:
        return  # nothing listens there
    raise OnpolicyError(
        f"port {port} on {host} is taken: something answers there already, and a server the job starts must be its "
        f"own; stop what listens there or choose another port ({setting})"
    )


def start_servers(
    model: str | pathlib.Path,
    places: Sequence[ServerPlace],
    log_folder: pathlib.Path,
    startup_timeout_s: float,
    api_key: str,
) -> list[ManagedServer]:
    """A server of `model` at each of `places` (its port, flags and environment), each taking `api_key` on every
    route; started together, ready on return."""
    servers = [
        ManagedServer(
            model, place.port, log_folder / f"vllm-server-{i}.log", place.args, api_key=api_key, env=place.env
        )
        for i, place in enumerate(places)
    ]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_until_ready(startup_timeout_s)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
