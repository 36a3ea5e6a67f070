import os
import pathlib

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny_model import build_tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> pathlib.Path:
    """A tiny random Llama folder shared by the whole session (read-only for tests)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def embedded_model_path(tmp_path_factory) -> pathlib.Path:
    """The embedded SmolLM2 converted once per session into a fresh cache folder (~30 s)."""
    from onpolicy.model_store import embedded_model_folder

    return embedded_model_folder(tmp_path_factory.mktemp("onpolicy-cache"))
