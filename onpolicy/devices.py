"""What the machine offers, and the settings decided from it: the engine's dtype, gradient checkpointing.

Each decision is a pure function of what was detected (CUDA or not, the CPU's flags) and of the config, so that
every branch is tested with a table of machines, whatever machine the tests run on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from onpolicy.config import RefConfig, TrainConfig

# CPU flags under which vLLM's CPU build computes bf16 natively (oneDNN kernels); without them it emulates bf16.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux reports them (empty where /proc/cpuinfo has none, e.g. on Arm)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split()[2:])
    except OSError:
        return frozenset()


def cpu_has_native_bf16(flags: Iterable[str]) -> bool:
    return bool(NATIVE_BF16_FLAGS & frozenset(flags))


def choose_engine_dtype(
    requested: str, cuda: bool, flags: Iterable[str], engine_is_reference: bool = True, train_dtype: str = "float32"
) -> str:
    """The engine dtype for `generation.dtype: requested` on a machine with (`cuda`) a GPU and CPU `flags`.

    auto:
    - GPUs: bfloat16.
    - CPUs without native bf16: float32 (vLLM's bf16 falls back to slow kernels there: ~35 vs ~190 tok/s).
    - CPUs with native bf16 (AVX512_BF16, AMX): bf16 samples ~1.4x faster (421 vs 305 tok/s), but its log-probs
      are not the fp32 trainer's. Where they would serve as the reference (`engine_is_reference`: the reference
      is each round's sampling policy), the trainer's dtype: the reference pass it saves outweighs the slower
      sampling (26.2 vs 28.3 s a round of configs/default.yaml). Where the trainer's pass runs anyway (a frozen
      reference copy, `ref.logps: trainer`, bf16 autocast), bfloat16 (41.6 vs 50.6 s a round of the identity
      demo, whose pairs are edits). Measured with benchmarks/bench_engine_dtype.py: docs/performance.md.
    """
    if requested != "auto":
        return requested
    if cuda:
        return "bfloat16"
    if not cpu_has_native_bf16(flags):
        return "float32"
    return train_dtype if engine_is_reference else "bfloat16"


def engine_may_be_reference(ref: RefConfig, train: TrainConfig) -> bool:
    """Whether an engine computing in the trainer's dtype would stand in for the reference model: the reference
    is each round's sampling policy, `ref.logps` lets the engine's log-probs in, no autocast shifts the trainer's."""
    return ref.is_round_start_policy and ref.logps != "trainer" and not train.bf16


def engine_dtype(requested: str, engine_is_reference: bool = True, train_dtype: str = "float32") -> str:
    """`choose_engine_dtype` on this machine."""
    return choose_engine_dtype(requested, torch.cuda.is_available(), cpu_flags(), engine_is_reference, train_dtype)


def choose_gradient_checkpointing(setting: bool | str, cuda: bool) -> bool:
    """`train.gradient_checkpointing`, `auto` resolved: on with a GPU (TRL's default: GPU memory is the limit), off
    on a CPU (recomputing made updates 1.23x slower there, for 0.9 GiB of plentiful RAM: docs/performance.md)."""
    return cuda if setting == "auto" else bool(setting)
