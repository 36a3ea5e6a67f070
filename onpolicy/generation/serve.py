"""`onpolicy serve`: a generation server for a job on another machine, started as the job starts its own.

The server runs the same command with the same flags as one the job would start (`placement`: the config's engine
settings, the first `tensor_parallel_size` GPUs of this machine, vLLM's weight-transfer engine, `extra_args`), and
the same guard: every route, the dev routes included, takes the key held in the variable
`generation.server.api_key_env` names, which the job sends too. A job reaches it with `generation.server.urls`
(and `generation.server.sync: transfer` to send its weights through vLLM's transfer API; `disk` works as well).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

from onpolicy.config import Config
from onpolicy.errors import ConfigError, OnpolicyError
from onpolicy.generation.placement import Machine, ServerPlace, plan_layout
from onpolicy.generation.server import external_api_key
from onpolicy.generation.serving import ManagedServer


def served_place(config: Config, machine: Machine, port: int, lora_rank: int | None = None) -> ServerPlace:
    """Where and how the server runs: as the one server a job of `config` would start on `port`, on a node where it
    trains nothing."""
    server = config.generation.server.model_copy(update={"urls": [], "launch": 1, "port": port})
    own = config.model_copy(update={"generation": config.generation.model_copy(update={"server": server})})
    return plan_layout(own, 0, machine, lora_rank).servers[0]


def serve(
    config: Config,
    model: str | pathlib.Path,
    place: ServerPlace,
    host: str,
    log_path: pathlib.Path,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve `model` at `place` on `host` until the server exits or the user interrupts (the server stops with
    this process, however it ends)."""
    key = external_api_key(config.generation.server)
    if key is None:
        raise ConfigError(
            "onpolicy serve: a server other machines reach takes a key; set generation.server.api_key_env to the "
            "environment variable holding it (the job reads the same setting)"
        )
    server = ManagedServer(model, place.port, log_path, place.args, host=host, api_key=key, env=dict(place.env))
    gpus = ",".join(map(str, place.gpus)) or "CPU"
    echo(f"starting a vLLM server of {model} on {gpus} (log: {log_path}); weights by {place.sync}")
    server.start("--port")
    try:
        server.wait_until_ready(config.generation.server.startup_timeout_s)
        echo(f"serving at {server.url} (key from ${config.generation.server.api_key_env}); Ctrl-C stops it")
        assert server.process is not None
        code = server.process.wait()
        raise OnpolicyError(f"the vLLM server exited with code {code}; its log, {log_path}, ends:\n{server.log_tail()}")
    except KeyboardInterrupt:
        echo("stopping the server")
    finally:
        server.stop()
