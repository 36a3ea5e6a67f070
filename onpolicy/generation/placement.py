"""Where a job's parts run on a node, decided once before anything loads: the layout.

From the config, the training processes the launcher started on this node and the GPUs this process sees,
`plan_layout` says which GPUs each training process and each vLLM server the job starts uses, the exact vLLM
arguments each engine starts with (and each server's `CUDA_VISIBLE_DEVICES`), how weights reach it, and whether
the in-process engine sleeps while the trainer updates beside it. The job prints the plan at start and logs it to
W&B's config; `onpolicy layout` prints it without loading anything.

The rules, as TRL, OpenRLHF and verl lay a node out:
- training process r (its LOCAL_RANK) takes the r-th visible GPU, where accelerate puts it;
- the servers the job starts take the GPUs after the trainers', `tensor_parallel_size` at a time: a server never
  shares a GPU with a trainer;
- the in-process engine shares the one trainer's GPU and sleeps while the update runs (vLLM's sleep mode), unless
  told not to and the GPU holds both;
- without GPUs, the arguments are the CPU ones: a bounded KV cache (vLLM's CPU build otherwise sizes it from all
  free RAM, starving the trainer), eager mode (compiling costs a minute of start-up for ~5-10% of speed).
An impossible plan stops the job with one line that says what fits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from onpolicy.devices import choose_engine_dtype, cpu_flags, engine_may_be_reference
from onpolicy.errors import ConfigError

if TYPE_CHECKING:
    from onpolicy.config import Config, GenerationConfig

GpuId = int | str  # a GPU as CUDA_VISIBLE_DEVICES names it: an index, or a UUID / MIG name
# the adapter ranks vLLM's LoRA support is built for (vllm.config.lora.MaxLoRARanks)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
COLOCATED_GPU_SHARE = 0.3  # the in-process engine's share of the GPU it shares with the trainer (TRL's colocate)
OWN_GPU_SHARE = 0.9  # a server's share of GPUs of its own (vLLM's default)
CPU_KV_CACHE_GIB = 1.0
# the vLLM weight-transfer engine between the job and its servers: NCCL between GPUs, onpolicy's gloo engine on CPUs
TRANSFER_ENGINES = {True: "nccl", False: "onpolicy_gloo"}


@dataclasses.dataclass(frozen=True)
class Machine:
    """The GPUs a job's process sees (none: a CPU machine) and the memory of each."""

    gpus: tuple[GpuId, ...] = ()
    gpu_memory_gib: float | None = None  # None: not known (the plan then checks no memory)

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)


def visible_gpus(cuda_visible_devices: str | None, count: int) -> tuple[GpuId, ...]:
    """The `count` GPUs torch sees, as the launching environment's CUDA_VISIBLE_DEVICES names them (so that a
    server started with a subset of them gets the same physical GPUs)."""
    if cuda_visible_devices is None:
        return tuple(range(count))
    names = [name.strip() for name in cuda_visible_devices.split(",") if name.strip()][:count]
    return tuple(int(name) if name.isdigit() else name for name in names)


def this_machine() -> Machine:
    """What this process sees: torch's CUDA devices, and the first one's memory."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return Machine()
    memory = torch.cuda.get_device_properties(0).total_memory / 1024**3
    return Machine(visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), count), memory)


@dataclasses.dataclass(frozen=True)
class TrainerPlace:
    rank: int  # the training process's local rank
    gpus: tuple[GpuId, ...]


@dataclasses.dataclass(frozen=True)
class ServerPlace:
    """A `vllm serve` process the job starts."""

    port: int
    gpus: tuple[GpuId, ...]
    env: Mapping[str, str]  # set for the server on top of the job's environment
    args: tuple[str, ...]  # its `vllm serve` flags after the model, name, host and port
    sync: str  # how each round's weights reach it: "disk", or the name of its vLLM transfer engine


@dataclasses.dataclass(frozen=True)
class EnginePlace:
    """The vLLM engine inside the job's process."""

    gpus: tuple[GpuId, ...]
    args: Mapping[str, Any]  # `vllm.LLM(model, **args)`
    sleep_level: int  # vLLM's sleep level while the trainer updates (0: it stays awake)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The plan (see the module docstring)."""

    machine: Machine
    engine_dtype: str  # what the engine or servers compute in
    trainers: tuple[TrainerPlace, ...]
    servers: tuple[ServerPlace, ...]  # the servers the job starts
    given_servers: tuple[str, ...]  # URLs of servers run by someone else
    engine: EnginePlace | None  # None on the server backend
    server_sync: str | None = None  # how weights reach the servers, started or given (None: no servers)
    memory_note: str | None = None  # what the memory check found (or why it could not run)

    @property
    def idle_gpus(self) -> tuple[GpuId, ...]:
        """The GPUs no part of the job uses."""
        used = {gpu for part in (*self.trainers, *self.servers) for gpu in part.gpus}
        used.update(self.engine.gpus if self.engine is not None else ())
        return tuple(gpu for gpu in self.machine.gpus if gpu not in used)

    def as_json(self) -> dict[str, Any]:
        """`{"trainers": [{"rank", "gpus"}], "servers": [{"gpus", "env", "args", "sync"}], "engine": {"gpus",
        "args", "sleep_level"}}`, with the machine and the engine dtype beside them."""
        servers = [
            {"port": s.port, "gpus": list(s.gpus), "env": dict(s.env), "args": list(s.args), "sync": s.sync}
            for s in self.servers
        ] + [
            {"url": url, "gpus": None, "env": None, "args": None, "sync": self.server_sync} for url in self.given_servers
        ]
        engine = self.engine
        return {
            "gpus": len(self.machine.gpus),
            "gpu_memory_gib": self.machine.gpu_memory_gib,
            "engine_dtype": self.engine_dtype,
            "trainers": [{"rank": t.rank, "gpus": list(t.gpus)} for t in self.trainers],
            "servers": servers,
            "engine": None
            if engine is None
            else {"gpus": list(engine.gpus), "args": dict(engine.args), "sleep_level": engine.sleep_level},
            "idle_gpus": list(self.idle_gpus),
        }

    def describe(self) -> list[str]:
        """The plan as the job prints it at start, one line per part."""
        machine = self.machine
        memory = f" of {machine.gpu_memory_gib:g} GiB" if machine.gpu_memory_gib else ""
        where = f"{len(machine.gpus)} GPU(s){memory}" if machine.cuda else "CPU only (no GPU visible)"
        lines = [f"layout: {where}; engine dtype {self.engine_dtype}"]
        for trainer in self.trainers:
            lines.append(f"  trainer {trainer.rank}: {_gpus(trainer.gpus)}")
        for server in self.servers:
            env = "".join(f" {key}={value}" for key, value in server.env.items())
            lines.append(
                f"  server on port {server.port}: {_gpus(server.gpus)}, weights by {server.sync};"
                f"{env} vllm serve {' '.join(server.args)}"
            )
        for url in self.given_servers:
            lines.append(f"  server at {url} (run elsewhere): weights by {self.server_sync}")
        if self.engine is not None:
            engine = self.engine
            sleeps = f"sleeps at level {engine.sleep_level} while training" if engine.sleep_level else "stays awake"
            arguments = ", ".join(f"{key}={value!r}" for key, value in engine.args.items())
            lines.append(f"  engine in process: {_gpus(engine.gpus)}, {sleeps}; LLM({arguments})")
        if self.memory_note:
            lines.append(f"  memory: {self.memory_note}")
        if self.idle_gpus:
            lines.append(
                f"  idle: {_gpus(self.idle_gpus)} (generation servers could take them: generation.backend=server, "
                "generation.server.launch, generation.tensor_parallel_size)"
            )
        return lines


def _gpus(gpus: Sequence[GpuId]) -> str:
    return "GPU " + ",".join(map(str, gpus)) if gpus else "CPU"


def engine_arguments(
    generation: GenerationConfig,
    dtype: str,
    cuda: bool,
    colocated: bool,
    lora_rank: int | None = None,
    sleep_level: int = 0,
) -> dict[str, Any]:
    """vLLM's engine arguments from `generation.*` on a machine with or without GPUs (`cuda`), for the in-process
    engine (`colocated`: it shares its GPU with the trainer) or a server; `lora_rank`: it serves LoRA adapters of
    this rank, one at a time; `sleep_level` > 0: it will be put to sleep."""
    arguments: dict[str, Any] = {
        "dtype": dtype,
        "seed": generation.seed,
        "max_model_len": generation.max_model_len,
        "enforce_eager": (not cuda) if generation.enforce_eager == "auto" else generation.enforce_eager,
        "enable_prefix_caching": True,
        "tensor_parallel_size": generation.tensor_parallel_size,
    }
    if generation.kv_cache_gib is not None or not cuda:  # given, it bounds the cache; on GPUs vLLM sizes it
        arguments["kv_cache_memory_bytes"] = int((generation.kv_cache_gib or CPU_KV_CACHE_GIB) * 1024**3)
    if cuda:
        share = generation.gpu_memory_utilization
        arguments["gpu_memory_utilization"] = (
            (COLOCATED_GPU_SHARE if colocated else OWN_GPU_SHARE) if share == "auto" else share
        )
    if sleep_level:
        arguments["enable_sleep_mode"] = True
    if lora_rank is not None:
        fitting = [rank for rank in VLLM_LORA_RANKS if rank >= lora_rank]
        if not fitting:
            raise ConfigError(f"train.lora.r={lora_rank}: vLLM serves adapters up to rank {VLLM_LORA_RANKS[-1]}")
        arguments.update(enable_lora=True, max_lora_rank=fitting[0], max_loras=1)
    return arguments


def server_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A server's engine arguments: the sampled token's own log-prob is all onpolicy asks it for."""
    return {**arguments, "max_logprobs": 1}


def cli_flags(arguments: Mapping[str, Any]) -> list[str]:
    """Engine arguments as `vllm serve` flags: `--max-model-len 1024`; True as the bare flag, False left out
    (vLLM's default for the switches `engine_arguments` sets)."""
    flags: list[str] = []
    for key, value in arguments.items():
        if value is False:
            continue
        flags.append("--" + key.replace("_", "-"))
        if value is not True:
            flags.append(str(value))
    return flags


def plan_layout(
    config: Config,
    processes: int,
    machine: Machine,
    lora_rank: int | None = None,
    model_folder: pathlib.Path | None = None,
) -> Layout:
    """The plan for `config` with `processes` training processes on this node, on `machine`; `lora_rank`: the
    generator serves LoRA adapters of this rank; `model_folder`: the initial model, where its size can be read
    (for the memory check of an engine sharing its GPU). Raises `ConfigError` with what fits."""
    generation = config.generation
    cuda = machine.cuda
    dtype = choose_engine_dtype(
        generation.dtype, cuda, cpu_flags(), engine_may_be_reference(config.ref, config.train), config.model.train_dtype
    )
    if cuda and processes > len(machine.gpus):
        raise ConfigError(
            f"{processes} training processes on {len(machine.gpus)} GPUs: launch at most {len(machine.gpus)} "
            "(one GPU each)"
        )
    trainers = tuple(TrainerPlace(rank, (machine.gpus[rank],) if cuda else ()) for rank in range(processes))
    if generation.backend == "engine":
        engine, note = _engine_place(config, machine, dtype, lora_rank, model_folder)
        return Layout(machine, dtype, trainers, (), (), engine, memory_note=note)
    if generation.sleep_level not in ("auto", 0):
        raise ConfigError(
            f"generation.sleep_level={generation.sleep_level}: generation servers run on GPUs of their own and do "
            "not sleep; sleep mode is for the in-process engine (generation.backend=engine)"
        )
    sync = _server_sync(generation.server.sync, bool(generation.server.urls), cuda, lora_rank)
    if generation.server.urls:
        return Layout(machine, dtype, trainers, (), tuple(generation.server.urls), None, server_sync=sync)
    flags = cli_flags(server_arguments(engine_arguments(generation, dtype, cuda, colocated=False, lora_rank=lora_rank)))
    if sync != "disk":
        flags += ["--weight-transfer-config", json.dumps({"backend": sync})]
    args = (*flags, *generation.server.extra_args)
    blocks = _server_gpus(machine, processes, generation.server.launch, generation.tensor_parallel_size)
    servers = tuple(
        ServerPlace(
            port=generation.server.port + i,
            gpus=gpus,
            env={"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if cuda else {},
            args=args,
            sync=sync,
        )
        for i, gpus in enumerate(blocks)
    )
    return Layout(machine, dtype, trainers, servers, (), None, server_sync=sync)


def _server_sync(setting: str, given: bool, cuda: bool, lora_rank: int | None) -> str:
    """How weights reach the servers: "disk", or the vLLM transfer engine both ends use (NCCL between GPUs)."""
    if lora_rank is not None:  # vLLM loads an adapter from a folder
        if setting == "transfer":
            raise ConfigError(
                "generation.server.sync=transfer: an adapter (generation.lora_sync: adapter) reaches the servers as a "
                "folder they load it from; use sync: disk or auto, or lora_sync: merged"
            )
        return "disk"
    if setting == "disk" or (setting == "auto" and given):
        return "disk"
    return TRANSFER_ENGINES[cuda]


def _server_gpus(machine: Machine, processes: int, launch: int, tp: int) -> list[tuple[GpuId, ...]]:
    """Each started server's GPUs: `tp` at a time from those the trainers leave (none on a CPU machine)."""
    if not machine.cuda:
        return [() for _ in range(launch)]
    free = machine.gpus[processes:]
    if launch * tp > len(free):
        fits = len(free) // tp
        what_fits = (
            f"{fits} server(s) of tensor_parallel_size {tp} fit (generation.server.launch={fits})"
            if fits
            else f"no server of tensor_parallel_size {tp} fits; launch fewer training processes"
        )
        raise ConfigError(
            f"generation.server.launch={launch} x generation.tensor_parallel_size={tp} needs {launch * tp} GPUs beside "
            f"the {processes} training process(es), and {len(machine.gpus)} GPUs leave {len(free)}: {what_fits}"
        )
    return [free[i * tp : (i + 1) * tp] for i in range(launch)]


def _engine_place(
    config: Config, machine: Machine, dtype: str, lora_rank: int | None, model_folder: pathlib.Path | None
) -> tuple[EnginePlace, str | None]:
    generation = config.generation
    if generation.tensor_parallel_size > 1:
        raise ConfigError(
            f"generation.tensor_parallel_size={generation.tensor_parallel_size}: the in-process engine runs on its "
            "trainer's one GPU, where each round's weights are handed over in memory (with tensor parallelism vLLM "
            "runs its workers in processes of their own); spread the policy over GPUs on servers: "
            "generation.backend=server"
        )
    sleep_level = _sleep_level(generation.sleep_level, machine.cuda, lora_rank)
    arguments = engine_arguments(generation, dtype, machine.cuda, True, lora_rank, sleep_level)
    gpus = machine.gpus[:1]
    note = None
    if machine.cuda:
        note = _check_colocated_memory(config, machine, arguments["gpu_memory_utilization"], sleep_level, model_folder)
    return EnginePlace(gpus, arguments, sleep_level), note


def _sleep_level(setting: int | str, cuda: bool, lora_rank: int | None) -> int:
    if not cuda:
        if setting not in ("auto", 0):
            raise ConfigError(
                f"generation.sleep_level={setting}: vLLM's sleep mode needs a GPU (on CPUs it does nothing); leave "
                "it at auto or 0"
            )
        return 0
    if setting == "auto":
        return 1 if lora_rank is not None else 2
    if setting == 2 and lora_rank is not None:
        raise ConfigError(
            "generation.sleep_level=2 drops the engine's base weights, which an adapter sync "
            "(generation.lora_sync: adapter) never sends again; use 1 (the weights wait in CPU memory)"
        )
    return int(setting)


def _check_colocated_memory(
    config: Config, machine: Machine, engine_share: float, sleep_level: int, model_folder: pathlib.Path | None
) -> str | None:
    """Refuse an in-process engine that, beside the trainer on one GPU, leaves the trainer too little memory; the
    estimate counts weights, gradients, AdamW's two moments and a reference copy (not activations)."""
    parameters = parameter_count(model_folder) if model_folder is not None else None
    total = machine.gpu_memory_gib
    if parameters is None or total is None:
        return "not checked (the model's size or the GPU's memory is not known)"
    weight_bytes = 2 if config.model.train_dtype == "bfloat16" else 4
    copies = 1 + (not config.ref.is_round_start_policy)  # the policy, and a frozen reference copy
    resident = parameters * weight_bytes * copies / 1024**3  # on the GPU while the engine samples
    training = resident + parameters * (weight_bytes * 3) / 1024**3  # + gradients and AdamW's two moments
    if config.train.lora is not None:
        training = resident = parameters * weight_bytes / 1024**3  # a frozen base (the adapter is small)
    left = total * (1 - engine_share)
    summary = (
        f"the engine takes {engine_share:g} of {total:g} GiB, leaving {left:.1f} GiB; the trainer needs about "
        f"{training:.1f} GiB to train {parameters / 1e9:.2f}B parameters, {resident:.1f} GiB while the engine samples"
    )
    own_gpus = "generation.backend=server, the engine on GPUs of its own"
    if resident > left:  # awake, the engine holds its share while the trainer's weights stay
        highest = math.floor((1 - resident / total) * 100) / 100
        fits = f"generation.gpu_memory_utilization={highest:g} or less" if highest >= 0.05 else own_gpus
        raise ConfigError(f"the in-process engine and the trainer share one GPU: {summary}; it fits with {fits}")
    if training > (total if sleep_level else left):  # asleep, the engine gives its share back while training
        fits = "the engine asleep while training (generation.sleep_level=1 or 2, or auto)"
        raise ConfigError(
            f"the in-process engine and the trainer share one GPU: {summary}; it fits with "
            f"{fits if training <= total else own_gpus}"
        )
    return summary


def parameter_count(folder: pathlib.Path) -> int | None:
    """The parameters in a model folder's safetensors files, from their headers alone (None: no such files, or
    one whose header is not a safetensors header)."""
    files = sorted(pathlib.Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
        except (OSError, ValueError, struct.error, RecursionError, TypeError, KeyError, AttributeError):
            return None  # not a safetensors header (a damaged or hand-made file): the memory check is skipped
    return total
