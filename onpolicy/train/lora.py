"""LoRA: the policy trains a PEFT adapter (`train.lora`, PEFT's `LoraConfig` fields) instead of every weight.

- The reference needs no second model: TRL computes reference log-probs with the adapter it adds beside the
  trained one (`trl_compat.REFERENCE_ADAPTER`): a copy of it (the round's starting policy, `ref.refresh:
  every_round`), the adapter off (the base model: the initial policy, `ref.refresh: never`, since LoRA starts
  as a no-op), or the reference adapter holding the snapshot taken when the reference was last refreshed
  (`every: N`).
- The engine gets merged weights (base + scale·B·A per adapted layer), computed without touching the trained
  model, so the engine and whatever reads the policy's weights see an ordinary checkpoint.
- Checkpoints are ordinary merged HF folders (final/ loads anywhere), written without a second copy of the
  model, with the adapter beside them in `adapter/`, from which a resumed run continues it on the base model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from onpolicy.train.trl_compat import REFERENCE_ADAPTER  # the name TRL gives the reference adapter it adds beside it

ADAPTER = "default"  # PEFT's name of the trained adapter
ADAPTER_FOLDER = "adapter"  # in a checkpoint: the adapter alone, for resuming


def rank(settings: Mapping[str, Any]) -> int:
    """The adapter's rank as PEFT reads `settings` (`train.lora`; PEFT's own default where `r` is not given)."""
    from peft import LoraConfig

    return int(LoraConfig(task_type="CAUSAL_LM", **settings).r)


def add_adapter(model: torch.nn.Module, settings: Mapping[str, Any], seed: int) -> Any:
    """`model` with a fresh LoRA adapter (seeded: PEFT draws A at random; B starts at zero, so the wrapped
    model computes what `model` did)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **settings))


def load_adapter(model: torch.nn.Module, folder: str) -> Any:
    """`model` with the trainable adapter saved in `folder` (a checkpoint's adapter/)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, folder, is_trainable=True)


def adapter_state(model: Any) -> dict[str, torch.Tensor]:
    """A CPU copy of the trained adapter's weights (a reference snapshot)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()}


def saved_adapter_state(folder: Any) -> dict[str, torch.Tensor]:
    """The adapter weights saved in `folder` (a checkpoint's adapter/), as `adapter_state` gives them."""
    from peft.utils import load_peft_weights

    return load_peft_weights(str(folder), device="cpu")


@contextlib.contextmanager
def adapter_swapped(model: Any, state: Mapping[str, torch.Tensor]) -> Iterator[Any]:
    """`model` with its trained adapter's weights replaced by `state` (an `adapter_state`) for the block, then
    given back."""
    from peft import set_peft_model_state_dict

    trained = adapter_state(model)
    set_peft_model_state_dict(model, dict(state), adapter_name=ADAPTER)
    try:
        yield model
    finally:
        set_peft_model_state_dict(model, trained, adapter_name=ADAPTER)


def use_base_as_reference(model: Any) -> None:
    """After TRL added its reference adapter (a copy of the trained one): drop it, so that the reference is the
    base model (the adapter off)."""
    model.delete_adapter(REFERENCE_ADAPTER)


def load_reference_adapter(model: Any, state: Mapping[str, torch.Tensor]) -> None:
    """After TRL added its reference adapter: load an adapter snapshot (`adapter_state`) into it."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, dict(state), adapter_name=REFERENCE_ADAPTER)


def drop_reference(model: Any) -> None:
    """Remove TRL's reference adapter after a round, leaving the trained adapter active."""
    if REFERENCE_ADAPTER in model.peft_config:
        model.delete_adapter(REFERENCE_ADAPTER)
    model.set_adapter(ADAPTER)


def merged_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under their plain HF names, each adapted layer's merged (base + its adapter's delta),
    computed one layer at a time without changing the model."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapted = {
        f"{name}.base_layer.weight": module
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A
    }
    with torch.no_grad():
        for name, tensor in base.state_dict().items():
            if ".lora_" in name:
                continue
            if name in adapted:
                tensor = tensor + adapted[name].get_delta_weight(ADAPTER).to(tensor.dtype)
            yield name.replace(".base_layer.", "."), tensor


def save_merged(model: Any, folder: Any) -> None:
    """Save the policy with merged weights as an ordinary HF model folder, one adapted layer merged at a time
    (no second copy of the model), and the adapter alone in `folder`/adapter/."""
    base = model.get_base_model()
    base.save_pretrained(folder, state_dict=dict(merged_weights(model)))
    model.save_pretrained(folder / ADAPTER_FOLDER)
