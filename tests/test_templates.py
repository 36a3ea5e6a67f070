"""The policy's prompt format: model.chat_template (a file or the template itself), the plain layout for base
models, and the one run that trains a template-less model end to end in it."""

import pathlib

import pytest
import yaml

from onpolicy.config import ModelConfig, load_config
from onpolicy.errors import ConfigError, OnpolicyError
from onpolicy.templates import PLAIN_TEMPLATE, apply_prompt_format, plain_template, policy_tokenizer
from onpolicy.tokens import check_prompts_render, prompt_ids
from onpolicy.types import PromptRecord
from tests.helpers import CHAT_TEMPLATE, _tokenizer, read_jsonl, tiny_config

SFT_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
TURNS = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Name?"},
)
MINIMAL = {"prompts": {"items": ["x"]}, "reward": [{"name": "length", "args": {"target": 1}}]}


def _write(folder: pathlib.Path, data: dict) -> pathlib.Path:
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _ids(tokenizer, text: str, special: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _bos_adding_tokenizer():
    """A Llama-like tokenizer: its `add_special_tokens` puts BOS before every text."""
    from tokenizers import processors

    tokenizer = _tokenizer(512, None)
    bos = ("<|im_start|>", tokenizer.bos_token_id)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[bos])
    return tokenizer


def test_a_template_string_replaces_the_tokenizer_s_own_and_is_not_taken_for_a_path(tmp_path):
    config = load_config(_write(tmp_path, {**MINIMAL, "model": {"chat_template": SFT_TEMPLATE}}))
    assert config.model.chat_template == SFT_TEMPLATE  # not resolved against the config's folder
    tokenizer = apply_prompt_format(_tokenizer(512, CHAT_TEMPLATE), config.model)
    assert prompt_ids(tokenizer, TURNS[1:2]) == _ids(tokenizer, "[user] Hi\n[assistant] ")


def test_a_template_file_is_read_relative_to_the_config_and_saved_with_the_tokenizer(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "sft.jinja").write_text(SFT_TEMPLATE)
    config = load_config(_write(tmp_path, {**MINIMAL, "model": {"chat_template": "templates/sft.jinja"}}))
    assert config.model.chat_template == str(tmp_path / "templates" / "sft.jinja")
    _tokenizer(512, CHAT_TEMPLATE).save_pretrained(tmp_path / "model")
    policy_tokenizer(tmp_path / "model", config.model).save_pretrained(tmp_path / "checkpoint")
    saved = policy_tokenizer(tmp_path / "checkpoint", ModelConfig())  # as the exported model is read
    assert saved.chat_template == SFT_TEMPLATE
    assert prompt_ids(saved, TURNS[:2]) == _ids(saved, "[system] Be brief.\n[user] Hi\n[assistant] ")


def test_a_missing_template_file_is_refused_at_config_load_naming_key_and_path(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, {**MINIMAL, "model": {"chat_template": "sft.jinja"}}))
    assert str(error.value) == (
        f"model.chat_template in {tmp_path / 'run.yaml'}: template file not found: {tmp_path / 'sft.jinja'} "
        "(give a Jinja template file, or the template itself)"
    )
    monkeypatch.chdir(tmp_path)  # on the command line, relative to the working folder
    with pytest.raises(ConfigError, match=r"template file not found: .*/other\.jinja"):
        load_config(_write(tmp_path, MINIMAL), ["model.chat_template=other.jinja"])


def test_plain_joins_the_turns_with_blank_lines_and_ends_where_the_answer_begins():
    tokenizer = apply_prompt_format(_tokenizer(512, None), ModelConfig(prompt_format="plain"))
    text = "Be brief.\n\nHi\n\nHello\n\nName?\n\n"
    assert tokenizer.apply_chat_template(list(TURNS), tokenize=False, add_generation_prompt=True) == text
    assert prompt_ids(tokenizer, TURNS) == _ids(tokenizer, text)  # no BOS: this tokenizer adds none to a text
    assert tokenizer.apply_chat_template(list(TURNS), tokenize=False) == text.removesuffix("\n\n")


def test_plain_starts_with_bos_where_the_tokenizer_adds_one():
    tokenizer = _bos_adding_tokenizer()
    assert plain_template(tokenizer) == "{{ bos_token }}" + PLAIN_TEMPLATE
    apply_prompt_format(tokenizer, ModelConfig(prompt_format="plain"))
    ids = prompt_ids(tokenizer, TURNS[1:2])
    assert (
        ids == _ids(tokenizer, "Hi\n\n", special=True) and ids[0] == tokenizer.bos_token_id and ids.count(ids[0]) == 1
    )


def test_plain_replaces_a_template_the_tokenizer_has():
    tokenizer = apply_prompt_format(_tokenizer(512, CHAT_TEMPLATE), ModelConfig(prompt_format="plain"))
    assert tokenizer.chat_template == PLAIN_TEMPLATE


def test_auto_takes_the_template_where_there_is_one_else_plain():
    assert apply_prompt_format(_tokenizer(512, CHAT_TEMPLATE), ModelConfig()).chat_template == CHAT_TEMPLATE
    assert apply_prompt_format(_tokenizer(512, None), ModelConfig()).chat_template == PLAIN_TEMPLATE
    given = ModelConfig(chat_template=SFT_TEMPLATE)
    assert apply_prompt_format(_tokenizer(512, None), given).chat_template == SFT_TEMPLATE


def test_chat_without_any_template_is_refused_saying_what_to_set():
    with pytest.raises(ConfigError, match=r"give one in model.chat_template .* or set model.prompt_format: plain"):
        apply_prompt_format(_tokenizer(512, None), ModelConfig(prompt_format="chat"))
    chat = ModelConfig(prompt_format="chat", chat_template=SFT_TEMPLATE)
    assert apply_prompt_format(_tokenizer(512, None), chat).chat_template == SFT_TEMPLATE


def test_plain_with_a_chat_template_is_a_config_error(tmp_path):
    model = {"prompt_format": "plain", "chat_template": SFT_TEMPLATE}
    with pytest.raises(ConfigError, match="with model.prompt_format: plain leave it empty"):
        load_config(_write(tmp_path, {**MINIMAL, "model": model}))


def test_a_template_that_refuses_a_prompt_is_one_clear_error_naming_it():
    refusing = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    tokenizer = apply_prompt_format(_tokenizer(512, None), ModelConfig(chat_template=refusing + SFT_TEMPLATE))
    records = [PromptRecord("fine", TURNS[1:2]), PromptRecord("with-system", TURNS)]
    with pytest.raises(OnpolicyError) as error:
        check_prompts_render(records, tokenizer)
    assert str(error.value) == (
        "the policy's chat template cannot render the prompt 'Name?' (TemplateError: System role not supported); "
        "fix model.chat_template, or set model.prompt_format: plain"
    )
    check_prompts_render(records[:1], tokenizer)


def test_the_job_refuses_chat_on_a_tokenizer_without_template_before_any_model_loads(tmp_path):
    from transformers import LlamaConfig

    from onpolicy.components import check_inputs

    LlamaConfig(vocab_size=512).save_pretrained(tmp_path / "base")  # a base model's folder (no weights needed)
    _tokenizer(512, None).save_pretrained(tmp_path / "base")
    config = load_config(_write(tmp_path, {**MINIMAL, "model": {"path": "base", "prompt_format": "chat"}}))
    with pytest.raises(ConfigError, match="the policy's tokenizer has no chat template"):
        check_inputs(config)


def test_a_base_model_trains_a_round_in_the_plain_format_and_its_checkpoints_carry_it(tiny_base_model_path, tmp_path):
    """One round on a tiny Llama without a chat template: the engine sampled from the plain prompts (the pairs
    carry the prompt ids it got), and the checkpoint and final model render prompts the same way."""
    from transformers import AutoTokenizer

    from onpolicy.config import Config
    from onpolicy.loop import run_job

    multi_turn = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                               {"role": "user", "content": "Who are you?"}]}  # fmt: skip
    config = tiny_config(
        tiny_base_model_path,
        rounds=1,
        prompts={"items": ["What is your name?", "Tell me a story.", multi_turn], "system_prompt": "Be brief."},
        wandb={"mode": "disabled"},
    )
    config["generation"].update(max_new_tokens=8, max_model_len=2048)  # room for the judge's rubric
    # the policy judging its own samples renders its judge prompts in the policy's format too
    judge = {"backend": "policy", "constrain": True, "votes": 1, "max_tokens": 8}
    config["reward"].append({"name": "judge", "weight": 0.0, "args": judge})
    run_dir = tmp_path / "run"
    (record,) = run_job(Config.model_validate(config), run_dir, echo=lambda line: None)
    assert record["pairs/kept"] >= 1
    assert record["reward/judge/scored"] == 12 and record["reward/judge/request_errors"] == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model_path)
    assert tokenizer.chat_template is None
    expected = {
        "0": "Be brief.\n\nWhat is your name?\n\n",
        "1": "Be brief.\n\nTell me a story.\n\n",
        "2": "Be brief.\n\nHi\n\nHello\n\nWho are you?\n\n",
    }
    pairs = read_jsonl(run_dir / "rounds/0001/pairs.jsonl")
    for pair in pairs:
        assert pair["tokens"]["prompt"] == _ids(tokenizer, expected[pair["prompt_id"]])
    for folder in (run_dir / "final", run_dir / "checkpoints/round-0001"):
        saved = AutoTokenizer.from_pretrained(folder)
        assert saved.chat_template == PLAIN_TEMPLATE
        for pair in pairs:
            assert prompt_ids(saved, pair["messages"]) == pair["tokens"]["prompt"]
