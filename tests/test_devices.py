"""The settings decided from the machine, for every kind of machine: pure functions of what was detected."""

import pytest

from onpolicy.devices import NATIVE_BF16_FLAGS, choose_engine_dtype, choose_gradient_checkpointing, cpu_flags

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}


@pytest.mark.parametrize(
    ("machine", "cuda", "flags", "expected"),
    [
        ("AVX2-only CPU", False, AVX2, "float32"),
        ("AVX-512 CPU without bf16", False, AVX512, "float32"),
        ("CPU with AVX512_BF16", False, AVX512 | {"avx512_bf16"}, "bfloat16"),
        ("CPU with AMX", False, AVX512 | {"amx_bf16", "amx_tile"}, "bfloat16"),
        ("CPU whose flags cannot be read", False, set(), "float32"),
        ("GPU", True, AVX2, "bfloat16"),
        ("GPU beside a CPU with AVX512_BF16", True, AVX512 | {"avx512_bf16"}, "bfloat16"),
    ],
)
def test_auto_engine_dtype_for_each_machine(machine, cuda, flags, expected):
    assert choose_engine_dtype("auto", cuda, flags) == expected, machine


@pytest.mark.parametrize("requested", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("cuda", [False, True])
def test_an_explicit_engine_dtype_is_kept_on_every_machine(requested, cuda):
    assert choose_engine_dtype(requested, cuda, AVX512 | NATIVE_BF16_FLAGS) == requested


@pytest.mark.parametrize(
    ("setting", "cuda", "expected"),
    [("auto", False, False), ("auto", True, True), (True, False, True), (False, True, False)],
)
def test_gradient_checkpointing_auto_is_on_with_a_gpu_only(setting, cuda, expected):
    assert choose_gradient_checkpointing(setting, cuda) is expected


def test_this_machine_s_flags_are_read():
    flags = cpu_flags()
    assert isinstance(flags, frozenset) and not {"flags", ":"} & flags  # the flags alone, not the line's label
    assert not flags or "fpu" in flags  # every x86 CPU lists it; other CPUs have no "flags" line: nothing
