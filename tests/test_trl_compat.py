"""onpolicy.train.trl_compat against the installed TRL: every attribute it replaces or overrides is there, a missing one
stops the job with the versions onpolicy is written against, and those are the versions pyproject.toml pins."""

import pathlib
import re

import pytest
import torch

from onpolicy.errors import OnpolicyError
from onpolicy.train import trl_compat

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


def _pin(package: str) -> tuple[str, str]:
    """The lower and upper bound of `package` in pyproject.toml's dependencies."""
    match = re.search(rf'"{package}>=([\d.]+),<([\d.]+)"', PYPROJECT.read_text())
    assert match, f"pyproject.toml pins no range for {package}"
    return match.group(1), match.group(2)


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def test_the_versions_named_in_errors_are_the_pinned_ones_and_the_installed_ones():
    import transformers
    import trl

    low, high = _pin("trl")
    assert (low, high) == (trl_compat.TRL_LINE, f"{_minor(low)[0]}.{_minor(low)[1] + 1}")
    assert trl.__version__.startswith(trl_compat.TRL_LINE + ".")
    low, high = _pin("transformers")
    first, last = trl_compat.TRANSFORMERS_LINE.split("-")
    assert _minor(low) == _minor(first) and _minor(high) == (_minor(last)[0], _minor(last)[1] + 1)
    assert _minor(first) <= _minor(transformers.__version__) <= _minor(last)


def test_every_adjustment_finds_its_target_in_the_installed_trl():
    with trl_compat.adjusted_trl():
        pass
    trl_compat._tokenized_trainer_class()


@pytest.mark.parametrize(
    ("adjustment", "module", "attribute"),
    [
        ("lm_head_on_completions_only", "trl.trainer.utils", "_use_triton"),
        ("unique_model_hash", "trl.trainer.dpo_trainer", "hash_module"),
    ],
)
def test_a_replacement_whose_target_is_gone_fails_naming_the_expected_versions(
    adjustment, module, attribute, monkeypatch
):
    import importlib

    monkeypatch.delattr(importlib.import_module(module), attribute)
    with pytest.raises(OnpolicyError, match=rf"{module}\.{attribute}.*TRL {trl_compat.TRL_LINE}\.x"):
        with getattr(trl_compat, adjustment)():
            pass


@pytest.mark.parametrize("method", ["_get_train_sampler", "_set_signature_columns_if_needed", "_precompute_ref_logps"])
def test_an_override_whose_target_is_gone_fails_naming_the_expected_versions(method, monkeypatch):
    from trl import DPOTrainer

    for owner in DPOTrainer.__mro__:  # gone from TRL's class and from transformers' Trainer below it
        if method in vars(owner):
            monkeypatch.delattr(owner, method)
    with pytest.raises(OnpolicyError, match=rf"trl\.DPOTrainer\.{method}.*TRL {trl_compat.TRL_LINE}\.x"):
        trl_compat._tokenized_trainer_class()


def test_a_schedule_gives_the_value_of_the_latest_round_at_or_before_this_one():
    schedule = {3: 0.05, 5: 0.01}
    assert [trl_compat.for_round(0.1, schedule, n) for n in range(1, 7)] == [0.1, 0.1, 0.05, 0.05, 0.01, 0.01]
    assert trl_compat.for_round(0.1, None, 4) == 0.1


def test_selective_log_softmax_is_log_softmax_then_gather():
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([[0, 6, 3], [2, 2, 5]])
    expected = torch.log_softmax(logits, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(trl_compat.selective_log_softmax(logits, index), expected)


def test_the_reference_adapter_is_the_one_trl_adds():
    import inspect

    from trl.trainer import dpo_trainer

    from onpolicy.train import lora

    assert f'add_adapter("{trl_compat.REFERENCE_ADAPTER}"' in inspect.getsource(dpo_trainer)
    assert lora.REFERENCE_ADAPTER == trl_compat.REFERENCE_ADAPTER
