"""What the machine offers, and the settings decided from it: the engine's dtype, gradient checkpointing.

Each decision is a pure function of what was detected (CUDA or not, the CPU's flags), so that every branch is
tested with a table of machines, whatever machine the tests run on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

# CPU flags under which vLLM's CPU build computes bf16 natively (oneDNN kernels); without them it emulates bf16.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux reports them (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split()[2:])
    except OSError:
        return frozenset()


def choose_engine_dtype(requested: str, cuda: bool, flags: Iterable[str]) -> str:
    """The engine dtype for `generation.dtype: requested` on a machine with (`cuda`) a GPU and CPU `flags`.

    auto: bfloat16 on GPUs and on CPUs that compute bf16 natively, float32 on other CPUs (there vLLM's bf16
    falls back to slow kernels: ~35 vs ~190 tok/s measured)."""
    if requested != "auto":
        return requested
    return "bfloat16" if cuda or cpu_has_native_bf16(flags) else "float32"


def engine_dtype(requested: str) -> str:
    """`choose_engine_dtype` on this machine."""
    return choose_engine_dtype(requested, torch.cuda.is_available(), cpu_flags())


def choose_gradient_checkpointing(setting: bool | str, cuda: bool) -> bool:
    """`train.gradient_checkpointing`, `auto` resolved: on with a GPU (TRL's default: GPU memory is the limit), off
    on a CPU (recomputing made updates 1.23x slower there, for 0.9 GiB of plentiful RAM: docs/performance.md)."""
    return cuda if setting == "auto" else bool(setting)


def cpu_has_native_bf16(flags: Iterable[str]) -> bool:
    return bool(NATIVE_BF16_FLAGS & frozenset(flags))
