"""Whether a saved model folder holds everything loading it needs, each file readable to its end.

A resume loads a round checkpoint with `from_pretrained` (config, every weight shard, the tokenizer and, for
LoRA, the adapter alone in adapter/); a checkpoint missing any of them, or with a file a power cut cut short,
is not one to continue from (`onpolicy.run.resume` falls back past it).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # a sharded save: which shard holds each weight
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_VOCABULARIES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")  # one at least
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def is_whole_model_folder(folder: pathlib.Path, tokenizer: bool = True, adapters: Sequence[str] = ()) -> bool:
    """A saved HF model folder: a config and every weight file it names, with `tokenizer` a tokenizer, a PEFT
    adapter in each subfolder `adapters` names; each of its JSON and safetensors files complete."""
    return not missing_parts(folder, tokenizer, adapters)


def missing_parts(folder: pathlib.Path, tokenizer: bool = True, adapters: Sequence[str] = ()) -> list[str]:
    """What `folder` lacks of a whole model folder (see `is_whole_model_folder`): names of missing or damaged
    files, empty when it is whole."""
    if not folder.is_dir():
        return [str(folder)]
    needed = [CONFIG, *_weight_files(folder)]
    if tokenizer:
        needed.append(TOKENIZER_CONFIG)
        if not any((folder / name).is_file() for name in TOKENIZER_VOCABULARIES):
            needed.append(" or ".join(TOKENIZER_VOCABULARIES))
    needed += [f"{adapter}/{name}" for adapter in adapters for name in ADAPTER_FILES]
    missing = [name for name in needed if not (folder / name).is_file()]
    damaged = [str(file.relative_to(folder)) for file in _readable_files(folder) if not _is_complete(file)]
    return missing + damaged


def _weight_files(folder: pathlib.Path) -> list[str]:
    index = folder / WEIGHTS_INDEX
    if not index.is_file():
        return [WEIGHTS]
    try:
        return [WEIGHTS_INDEX, *sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return [f"{WEIGHTS_INDEX} (unreadable)"]


def _readable_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(file for pattern in ("*.json", "*.safetensors") for file in folder.rglob(pattern) if file.is_file())


def _is_complete(file: pathlib.Path) -> bool:
    from safetensors import safe_open

    try:
        if file.suffix == ".json":
            json.loads(file.read_text(encoding="utf-8"))
        else:
            with safe_open(str(file), "pt"):  # checks that the header's tensors cover the file exactly
                pass
    except Exception:
        return False
    return True
