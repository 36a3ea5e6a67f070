"""The settings decided from the machine, for every kind of machine: pure functions of what was detected."""

import pytest

from onpolicy.config import RefConfig, TrainConfig
from onpolicy.devices import (
    NATIVE_BF16_FLAGS,
    choose_engine_dtype,
    choose_gradient_checkpointing,
    cpu_flags,
    engine_may_be_reference,
)

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}


@pytest.mark.parametrize(
    ("machine", "cuda", "flags", "engine_is_reference", "expected"),
    [
        ("AVX2-only CPU", False, AVX2, True, "float32"),
        ("AVX2-only CPU, trainer's reference pass anyway", False, AVX2, False, "float32"),
        ("AVX-512 CPU without bf16", False, AVX512, False, "float32"),
        ("CPU with AVX512_BF16, engine log-probs as reference", False, AVX512 | {"avx512_bf16"}, True, "float32"),
        ("CPU with AVX512_BF16, trainer's reference pass anyway", False, AVX512 | {"avx512_bf16"}, False, "bfloat16"),
        ("CPU with AMX, engine log-probs as reference", False, AVX512 | {"amx_bf16", "amx_tile"}, True, "float32"),
        ("CPU with AMX, trainer's reference pass anyway", False, AVX512 | {"amx_bf16", "amx_tile"}, False, "bfloat16"),
        ("CPU whose flags cannot be read", False, set(), False, "float32"),
        ("GPU", True, AVX2, True, "bfloat16"),
        ("GPU beside a CPU with AVX512_BF16", True, AVX512 | {"avx512_bf16"}, False, "bfloat16"),
    ],
)
def test_auto_engine_dtype_for_each_machine(machine, cuda, flags, engine_is_reference, expected):
    assert choose_engine_dtype("auto", cuda, flags, engine_is_reference) == expected, machine


def test_a_bf16_trainer_gets_a_bf16_engine_where_the_engine_is_its_reference():
    assert choose_engine_dtype("auto", False, {"avx512_bf16"}, True, train_dtype="bfloat16") == "bfloat16"


@pytest.mark.parametrize(
    ("ref", "train", "expected"),
    [
        ({}, {}, True),  # the defaults: every_round, logps auto, no autocast
        ({"refresh": "every", "every": 1}, {}, True),
        ({"refresh": "never"}, {}, False),  # a frozen copy is the reference
        ({"refresh": "every", "every": 2}, {}, False),
        ({"logps": "trainer"}, {}, False),
        ({}, {"bf16": True}, False),  # autocast shifts the trainer's log-probs
    ],
)
def test_the_engine_may_be_the_reference_only_where_the_reference_is_the_sampling_policy(ref, train, expected):
    assert engine_may_be_reference(RefConfig(**ref), TrainConfig(**train)) is expected


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
