"""vLLM servers a job starts for its rewards (a reward model too large to sit beside the trainer).

Rewards are built, and checked, before the job has a run directory or starts anything, so a reward that wants a
server of its own asks this holder for one (`serve`) when it is built and gets a `ServedModel` handle. The job
attaches its way of starting servers once its run is open (`attach`): every server asked for starts then, and is
health-checked, so a reward model that cannot be served stops the job at setup, before any round. The job stops
them when it ends. A holder nobody attaches (`onpolicy check`) starts nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from reward.base import RewardConfigError


@dataclasses.dataclass(frozen=True)
class ServerRequest:
    """A `vllm serve` of `model` with the engine arguments `arguments` (as `vllm.LLM` takes them), serving it as
    `served_name` on `port` of 127.0.0.1; `startup_timeout_s` to come up."""

    model: str
    arguments: Mapping[str, Any]
    served_name: str
    port: int
    startup_timeout_s: float


@dataclasses.dataclass(frozen=True)
class Server:
    """A running server: its base URL, the API key its routes take, and a check that raises when it has died."""

    url: str
    api_key: str | None
    check_alive: Callable[[], None] = lambda: None


def served_model(answer: Any) -> str | None:
    """The first model a vLLM server names in its answer to `/v1/models` (`{"data": [{"id": ...}, ...]}`); None
    where the answer names none."""
    models = answer.get("data") if isinstance(answer, dict) else None
    first = models[0] if isinstance(models, list) and models else None
    return first["id"] if isinstance(first, dict) and isinstance(first.get("id"), str) else None


def api_key_from_environment(variable: str | None, url: str, who: str) -> str | None:
    """The API key for the endpoint at `url`, from the environment variable `variable` (None: no key); a variable
    named but not set is refused, naming `who` (the reward) and the endpoint."""
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise RewardConfigError(
            f"{who}: the environment variable {variable} (named by api_key_env) is not set; it must hold the API "
            f"key for {url}"
        )
    return key


# How a job starts a server: ready (health-checked) on return, stopped by the job when it ends.
StartServer = Callable[[ServerRequest], Server]


class ServedModel:
    """The server a reward asked for: `get()` once the job has started it."""

    def __init__(self, request: ServerRequest) -> None:
        self.request = request
        self._server: Server | None = None

    def get(self) -> Server:
        if self._server is None:
            raise RuntimeError(
                f"the vLLM server for {self.request.model} (port {self.request.port}) has not been started: only a "
                "job (`onpolicy run`) starts the servers its rewards ask for"
            )
        self._server.check_alive()
        return self._server


class ModelServers:
    """The servers the job's rewards ask for; started when the job attaches its starter (see the module)."""

    def __init__(self) -> None:
        self._asked: list[ServedModel] = []

    def serve(
        self, model: str, arguments: Mapping[str, Any], served_name: str, port: int, startup_timeout_s: float
    ) -> ServedModel:
        taken = {served.request.port for served in self._asked}
        if port in taken:
            raise RewardConfigError(f"port {port} is asked for by another reward's server; give each its own port")
        served = ServedModel(ServerRequest(model, dict(arguments), served_name, port, startup_timeout_s))
        self._asked.append(served)
        return served

    @property
    def requests(self) -> list[ServerRequest]:
        return [served.request for served in self._asked]

    def attach(self, start: StartServer) -> None:
        """Start every server asked for, one after the other, each ready on return."""
        for served in self._asked:
            served._server = start(served.request)
