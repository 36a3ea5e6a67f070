"""The embedded SmolLM2: converted once into an HF folder that transformers and vLLM load; never half-written."""

import pytest

from onpolicy import model_store
from onpolicy.config import ModelConfig


def test_an_interrupted_conversion_leaves_nothing_a_later_run_would_trust(tmp_path, monkeypatch):
    def crash(gguf, target):
        (target / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_store, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        model_store.embedded_model_folder(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_folder_without_the_completion_mark_is_converted_again(tmp_path, monkeypatch):
    stale = tmp_path / model_store.embedded_gguf().stem
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(model_store, "_convert", lambda gguf, target: calls.append(target))
    assert model_store.embedded_model_folder(tmp_path) == stale
    assert len(calls) == 1 and not (stale / "config.json").exists()
    model_store.embedded_model_folder(tmp_path)
    assert len(calls) == 1  # converted once


@pytest.mark.slow
def test_embedded_model_converts_to_an_ordinary_hf_folder(embedded_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert model_store.resolve_model(ModelConfig(cache_dir=str(embedded_model_path.parent))) == embedded_model_path
    model = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert not hasattr(model.config, "quantization_config")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


def test_model_path_overrides_the_embedded_model(tiny_model_path):
    assert model_store.resolve_model(ModelConfig(path=str(tiny_model_path))) == tiny_model_path
