"""Sharded training: the policy's weights, gradients and optimizer states split over the training processes with
PyTorch FSDP2 (`fully_shard`), applied by accelerate exactly as a TRL job launched with an FSDP2 accelerate config
gets it.

A job shards when `train.sharding: fsdp2` is set (`onpolicy run --processes N`, torchrun) or when `accelerate
launch` started it with an FSDP2 config (`configs/accelerate/fsdp2.yaml`); `fsdp_variables` says which. The policy
is sharded once, when the updater loads it (`shard`), not by the first round's trainer: from then on every
snapshot of it (`ShardedState`), every reference and every optimizer holds 1/N of each weight on each process, and
each round's trainer finds the policy already sharded (accelerate prepares an FSDP module as it is).

Whatever reads the whole policy is collective: every process takes part, in the same order, and only the main one
keeps the result (`full_weights`: one weight gathered at a time, so the main process holds at most one full copy
of the policy, as it writes it or sends it to the generation servers). Whatever changes a shard (a refresh, a mix,
a reload from a checkpoint) runs on every process on its own shard.

accelerate 1.15 turns FSDP on only for accelerator devices: a job of CPU processes (`MULTI_CPU`) would quietly
train as DDP. PyTorch's `fully_shard` itself runs on CPU processes over gloo, so `enable_on_cpus` sets accelerate's
state to FSDP there, with the plugin accelerate built from the same variables; everything after that (wrapping,
gradient reduce-scatter, the optimizer) is accelerate's and PyTorch's own code, the one a GPU job runs.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import torch

from onpolicy.config.sections import LORA_REFUSAL
from onpolicy.errors import ConfigError

# What `accelerate launch --config_file configs/accelerate/fsdp2.yaml` sets in every process, and what
# `train.sharding: fsdp2` sets where another launcher (torchrun) started the job. Per-layer wrapping (by the
# model's own `_no_split_modules`) keeps one decoder layer at a time gathered in full during a forward pass.
FSDP2_VARIABLES = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
}


def _flag(environment: Mapping[str, str], name: str) -> bool:
    return environment.get(name, "false").lower() in ("true", "1", "yes")


def sharded_job(sharding: str, environment: Mapping[str, str]) -> bool:
    """Whether this job shards the policy: `train.sharding: fsdp2`, or an accelerate launch with an FSDP2
    config. Refuses the sharded launches onpolicy does not run (FSDP1, DeepSpeed), with the reason."""
    if _flag(environment, "ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError(
            "accelerate launched this job with DeepSpeed, which onpolicy does not run: shard with FSDP2 instead "
            "(configs/accelerate/fsdp2.yaml, or train.sharding=fsdp2 with onpolicy run --processes N / torchrun), "
            "or train data-parallel (configs/accelerate/ddp.yaml); docs/scaling.md"
        )
    if _flag(environment, "ACCELERATE_USE_FSDP"):
        if environment.get("FSDP_VERSION", "1") != "2":
            raise ConfigError(
                "accelerate launched this job with FSDP version 1; onpolicy shards with FSDP2 (fully_shard): set "
                "fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp2.yaml)"
            )
        return True
    return sharding == "fsdp2"


def fsdp_variables(environment: MutableMapping[str, str]) -> None:
    """Set accelerate's FSDP2 variables where the launcher did not (torchrun with `train.sharding: fsdp2`); an
    accelerate config's own values stay."""
    for name, value in FSDP2_VARIABLES.items():
        environment.setdefault(name, value)


def check_shardable(lora: bool) -> None:
    """Refuse what sharded training does not support, before any model loads."""
    if lora:
        raise ConfigError(LORA_REFUSAL)


def _accelerator(mixed_precision: str) -> Any:
    """The job's accelerate state with FSDP on, on CPU processes too (`enable_on_cpus`); round trainers made later
    share it (accelerate's state is one per process)."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    enable_on_cpus(accelerator)
    return accelerator


def enable_on_cpus(accelerator: Any) -> None:
    """Where accelerate made a job of CPU processes plain data-parallel (`MULTI_CPU`) although it was launched for
    FSDP, set its state to FSDP with the FSDP plugin accelerate built from the launch's variables, as it does for
    accelerator devices. The state is shared by every `Accelerator` of the process, so each round's trainer then
    sees FSDP too."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # an `AcceleratorState` made later copies the process's partial state over its own: it must say FSDP too
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def shard(model: torch.nn.Module, mixed_precision: str = "no") -> torch.nn.Module:
    """`model` sharded over the job's processes in place, by accelerate's FSDP2 preparation (per-layer units, the
    tied embedding and head in one unit): every process must call it, with the same model."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(_accelerator(mixed_precision), model)


def reshard(model: torch.nn.Module) -> None:
    """Every FSDP unit of `model` back to its shards. A unit that does not reshard after a forward pass
    (accelerate's tail unit: embedding, final norm and head) keeps its gathered weights registered on the module
    after a pass without backward (TRL's reference pass, the KL estimate), so that `parameters()` would then
    return full plain tensors: an optimizer made from those would step copies, and a snapshot would copy whole
    weights. Whatever reads the policy's parameters after such a pass reshards first."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """`model.named_parameters()`, sharded (`reshard` first)."""
    reshard(model)
    return model.named_parameters()


def weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """`model`'s state dict items, the sharded parameters themselves (`keep_vars`; `reshard` first)."""
    reshard(model)
    return iter(model.state_dict(keep_vars=True).items())


def is_main() -> bool:
    """This process writes what a collective step gathers (rank 0)."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded weight (the weight itself where it is not sharded); in place changes to
    it change the weight."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_weights(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Each sharded weight of `named` (a state dict's items with `keep_vars=True`: the parameters themselves)
    gathered in full, one at a time, as a CPU tensor on the main process (collective: every process iterates it to
    the end, in the same order; the others get nothing). A weight under two names (a tied embedding) is gathered
    once."""
    from torch.distributed.tensor import DTensor

    named = list(named)  # references only
    names_left: dict[int, int] = {}
    for _, tensor in named:
        names_left[id(tensor)] = names_left.get(id(tensor), 0) + 1
    main = is_main()
    gathered: dict[int, torch.Tensor | None] = {}  # weights still to be given under another name (None: not main)
    for name, tensor in named:
        key = id(tensor)
        if key in gathered:
            full = gathered[key]
        else:
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            full = full.detach().to("cpu") if main else None
        names_left[key] -= 1
        if names_left[key]:
            gathered[key] = full
        else:
            gathered.pop(key, None)
        if main:
            yield name, full


def any_process(flag: bool) -> bool:
    """`flag` agreed by every process: true when it is true on any (collective)."""
    import torch.distributed as dist

    value = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_shards(folder: str | pathlib.Path, policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """This process's part of every weight of the HF model folder `folder`, laid out like the sharded `policy`'s:
    each process reads one full tensor at a time (from storage every process sees) and keeps its shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    read = _saved_weights(pathlib.Path(folder))
    shards = {}
    for name, weight in parameters(policy):
        full = read(name).to(weight.dtype)
        if isinstance(weight, DTensor):
            full = distribute_tensor(full, weight.device_mesh, weight.placements, src_data_rank=None).to_local()
        shards[name] = full.to(local(weight).device)
    return shards


def as_sharded(shards: dict[str, torch.Tensor], policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's state dict (parameters themselves, `keep_vars`) with `shards` (this process's part of each
    parameter, by name) in place of its own weights, laid out as the policy's: what `full_weights` gathers to save
    a state other than the policy's."""
    from torch.distributed.tensor import DTensor

    name_of = {id(p): name for name, p in parameters(policy)}
    made: dict[int, torch.Tensor] = {}
    for name, tensor in weights(policy):
        key = id(tensor)
        if key in name_of and isinstance(tensor, DTensor):
            if key not in made:  # a tied weight: the same tensor under its second name
                made[key] = DTensor.from_local(
                    shards[name_of[key]], tensor.device_mesh, tensor.placements, shape=tensor.shape,
                    stride=tensor.stride(),
                )  # fmt: skip
            tensor = made[key]
        yield name, tensor


def _saved_weights(folder: pathlib.Path) -> Any:
    """name -> tensor for an HF model folder's safetensors (one file or an index of shards)."""
    import json

    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    files = (
        json.loads(index.read_text())["weight_map"]
        if index.is_file()
        else dict.fromkeys(_names(folder / "model.safetensors"), "model.safetensors")
    )

    def read(name: str) -> torch.Tensor:
        with safe_open(folder / files[name], framework="pt") as handle:
            return handle.get_tensor(name)

    return read


def _names(path: pathlib.Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return list(handle.keys())
