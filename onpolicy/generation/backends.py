"""Where the policy's samples come from: one kind per mode of `generation.backend`, chosen once
(`generation_backend`).

- `InProcessEngine` (`backend: engine`): one vLLM engine inside the job's process; weights reach it in memory;
  on a GPU it sleeps while the trainer updates beside it;
- `StartedServers` (`backend: server`, `launch: N`): N `vllm serve` processes the job starts on this machine
  (`onpolicy.generation.serving`), each on the GPUs the layout gives it, with a key of the job's own,
  health-checked, logged into the run directory and stopped with the job;
- `GivenServers` (`backend: server`, `urls`): servers someone else runs. They serve whatever they were started
  with, so the job sends them the policy before its first round.

Each kind starts its engines with the arguments the job's layout planned (`onpolicy.generation.placement`).
A kind is asked, before anything starts, whether it can run the job (`check`) and where it runs (`in_process`: a
reward may then generate with the engine itself, the `policy` judge); `start` gives the job's `Generator`, which
samples and takes each round's weights; `close` stops and removes what the kind started and wrote.
"""

from __future__ import annotations

import pathlib
import secrets
import shutil
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from onpolicy.config import GenerationConfig
from onpolicy.config.sections import ServerConfig
from onpolicy.errors import ConfigError
from onpolicy.generation.placement import EnginePlace, Layout, ServerPlace
from onpolicy.interfaces import Generator
from onpolicy.types import EngineStart
from reward.judge import PolicyEngine


class GenerationBackend(Protocol):
    """One way of serving the policy to sample from (see the module docstring)."""

    in_process: bool  # the engine runs in the job's process (a reward may generate with it)
    sends_policy_first: bool  # it serves what it was started with: send the policy before the first round

    def check(self, processes: int) -> None:
        """Refuse, with a `ConfigError`, what cannot work beside `processes` training processes, or without the
        API key it needs. Nothing starts."""
        ...

    def check_reward_ports(self, ports: Sequence[int]) -> None:
        """Refuse servers of the job's rewards on `ports` where this backend's own take them."""
        ...

    def start(self, engine: EngineStart, tokenizer: Any, generation: GenerationConfig, run: pathlib.Path) -> Generator:
        """The generator serving `engine.model` (with LoRA adapters loaded on top, where the layout's arguments
        enable them), sampling as `generation` says; what it writes goes into the run directory `run`."""
        ...

    def close(self) -> None:
        """Stop what `start` started and remove what it wrote (safe to call again, or without a start)."""
        ...


class InProcessEngine:
    """A vLLM engine in the job's process, at `place`; a reward that generates with it gets it through
    `policy_engine`."""

    in_process = True
    sends_policy_first = False

    def __init__(self, place: EnginePlace, policy_engine: PolicyEngine | None = None) -> None:
        self.place = place
        self.policy_engine = policy_engine if policy_engine is not None else PolicyEngine()

    def check(self, processes: int) -> None:
        if processes > 1:  # vLLM joins a torch.distributed group it finds in its process
            raise ConfigError(
                f"generation.backend: engine runs vLLM inside the main training process, where it would join the "
                f"{processes} training processes' torch.distributed group; with several training processes, "
                "generate on a vLLM server: generation.backend=server (onpolicy starts it; docs/scaling.md)"
            )

    def check_reward_ports(self, ports: Sequence[int]) -> None:
        pass  # it takes no port

    def start(self, engine: EngineStart, tokenizer: Any, generation: GenerationConfig, run: pathlib.Path) -> Generator:
        from onpolicy.generation.engine import VLLMGenerator

        generator = VLLMGenerator(engine.model, tokenizer, generation, self.place)
        self.policy_engine.attach(generator.llm, tokenizer.chat_template)
        return generator

    def close(self) -> None:
        pass  # the engine lives as long as the job's process


class StartedServers:
    """`server.launch` vLLM servers the job starts at `places` (ports `server.port`, `server.port + 1`, ...)."""

    in_process = False
    sends_policy_first = False

    def __init__(self, server: ServerConfig, places: Sequence[ServerPlace]) -> None:
        self.server = server
        self.places = tuple(places)
        self._closers: list[Callable[[], None]] = []  # what close() runs: the generator's folder, then the servers

    def check(self, processes: int) -> None:
        pass  # its servers are processes of their own, beside any number of training processes

    def check_reward_ports(self, ports: Sequence[int]) -> None:
        taken = range(self.server.port, self.server.port + self.server.launch)
        for port in ports:
            if port in taken:
                raise ConfigError(
                    f"a reward's vLLM server asks for port {port}, which a generation server takes "
                    f"(generation.server.port {self.server.port}, launch {self.server.launch}); give the reward "
                    "another port"
                )

    def start(self, engine: EngineStart, tokenizer: Any, generation: GenerationConfig, run: pathlib.Path) -> Generator:
        from onpolicy.generation.serving import start_servers

        api_key = secrets.token_urlsafe(32)  # the job's own, for every route of its servers
        servers = start_servers(engine.model, self.places, run, self.server.startup_timeout_s, api_key)
        self._closers = [started.stop for started in servers]

        def check_alive() -> None:
            for started in servers:
                started.check_alive()

        urls = [s.url for s in servers]
        generator = _server_generator(urls, tokenizer, generation, run, api_key, self.places[0].sync, check_alive)
        self._closers.insert(0, generator.close)
        return generator

    def close(self) -> None:
        closers, self._closers = self._closers, []
        for close in closers:
            close()


class GivenServers:
    """The vLLM servers at `server.urls`, run by someone else (with the key in `server.api_key_env`, if any); weights
    reach them as `sync` says ("disk", or the transfer engine they were started with)."""

    in_process = False
    sends_policy_first = True  # they serve what they were started with

    def __init__(self, server: ServerConfig, sync: str) -> None:
        self.server = server
        self.sync = sync
        self._generator: Any = None

    def check(self, processes: int) -> None:
        from onpolicy.generation.server import external_api_key

        external_api_key(self.server)  # a variable named but not set: said before anything starts

    def check_reward_ports(self, ports: Sequence[int]) -> None:
        pass  # its servers run elsewhere, on ports of their own

    def start(self, engine: EngineStart, tokenizer: Any, generation: GenerationConfig, run: pathlib.Path) -> Generator:
        from onpolicy.generation.server import external_api_key

        api_key = external_api_key(self.server)
        self._generator = _server_generator(self.server.urls, tokenizer, generation, run, api_key, self.sync)
        return self._generator

    def close(self) -> None:
        generator, self._generator = self._generator, None
        if generator is not None:
            generator.close()


def generation_backend(
    generation: GenerationConfig, layout: Layout, policy_engine: PolicyEngine | None = None
) -> GenerationBackend:
    """The kind `generation.backend` (and, for servers, `generation.server.urls`) names, where `layout` places it;
    `policy_engine`: where a reward that generates with the in-process engine finds it."""
    if layout.engine is not None:
        return InProcessEngine(layout.engine, policy_engine)
    if generation.server.urls:
        return GivenServers(generation.server, layout.server_sync or "disk")
    return StartedServers(generation.server, layout.servers)


def _server_generator(
    urls: Sequence[str],
    tokenizer: Any,
    generation: GenerationConfig,
    run: pathlib.Path,
    api_key: str | None,
    sync: str,
    check_alive: Callable[[], None] = lambda: None,
) -> Generator:
    """A generator on the servers at `urls`, each round's weights sent as `sync` says: through vLLM's transfer
    engine of that name, or written into `generation.server.sync_dir` (by default the run directory's
    weights-sync/, emptied first: whatever is there, a killed job left; adapters always go this way)."""
    from onpolicy.generation.server import ServerGenerator

    sync_dir = pathlib.Path(generation.server.sync_dir) if generation.server.sync_dir else run / "weights-sync"
    if not generation.server.sync_dir:
        shutil.rmtree(sync_dir, ignore_errors=True)
    return ServerGenerator(urls, tokenizer, generation, sync_dir, check_alive, api_key, sync)
