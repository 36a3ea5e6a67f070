"""Secrets in a config never reach config.yaml, the W&B config or a printed message."""

import pytest
import yaml

from onpolicy.cli import main
from onpolicy.config import load_config
from onpolicy.config.redaction import is_secret_key, masking, redact, redact_text
from onpolicy.errors import ConfigError, OnpolicyError


def test_secret_looking_keys_are_masked_and_token_counts_are_not():
    assert [is_secret_key(k) for k in ("api_key", "hf-token", "password", "Authorization", "client_secret")] == [
        True
    ] * 5
    assert [is_secret_key(k) for k in ("max_new_tokens", "tokenizer", "api_key_env", "keep_last", "monkey")] == [
        False
    ] * 5
    data = {"args": {"api_key": "sk-123", "max_tokens": 24, "api_key_env": "JUDGE_KEY", "headers": {"token": "t0k3n"}}}
    assert redact(data) == {
        "args": {"api_key": "***", "max_tokens": 24, "api_key_env": "JUDGE_KEY", "headers": {"token": "***"}}
    }


def test_credentials_in_urls_are_masked():
    assert redact_text("http://alice:hunter22@rm.internal:8000/v1") == "http://alice:***@rm.internal:8000/v1"
    assert redact_text("https://api.example.com/v1?api_key=abc123&model=m") == (
        "https://api.example.com/v1?api_key=***&model=m"
    )
    assert redact_text("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_a_config_s_secrets_stay_out_of_its_yaml_and_of_later_messages(tmp_path):
    (tmp_path / "r.py").write_text("def score(completion, prompt, api_key=None):\n    return 1.0\n")
    (tmp_path / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "prompts": {"items": ["hi"]},
                "reward": [{"name": "r.py:score", "args": {"api_key": "sk-live-0123456789"}}],
                "generation": {"backend": "server", "server": {"urls": ["http://bob:pa55word@gpu-1:8000"]}},
            }
        )
    )
    config = load_config(tmp_path / "run.yaml")
    assert config.reward[0].args["api_key"] == "sk-live-0123456789"  # the job itself has it
    saved = config.to_yaml()
    assert "sk-live" not in saved and "pa55word" not in saved
    assert "api_key: '***'" in saved and "http://bob:***@gpu-1:8000" in saved
    # a message that quotes a secret of the loaded config (an exception showing an argument)
    message = "TypeError: score() got api_key='sk-live-0123456789'"
    assert redact_text(message, config.secrets()) == "TypeError: score() got api_key='***'"
    assert redact_text(message) == message  # nothing is remembered: the secrets travel with the config
    with pytest.raises(ConfigError, match=r"^reward\[0\]: api_key='\*\*\*' refused$"):
        with masking(config.secrets()):
            raise ConfigError("reward[0]: api_key='sk-live-0123456789' refused")
    with pytest.raises(OnpolicyError, match="pa55") as raised, masking(["sk-live-0123456789"]):
        raise OnpolicyError("pa55")  # nothing to mask: the same exception
    assert raised.value.__traceback__ is not None


def test_the_cli_masks_a_config_s_secret_quoted_by_an_error_or_a_validation_message(tmp_path, capsys):
    (tmp_path / "r.py").write_text(
        "class Keyed:\n"
        "    name = 'keyed'\n"
        "    def __init__(self, api_key):\n"
        "        raise ValueError(f'the endpoint refused {api_key}')\n"
    )
    keyed = {"name": f"{tmp_path / 'r.py'}:Keyed", "args": {"api_key": "sk-live-0123456789"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"prompts": {"items": ["hi"]}, "reward": [keyed]}))
    assert main(["config", str(tmp_path / "run.yaml")]) == 2
    error = capsys.readouterr().err
    assert "the endpoint refused ***" in error and "sk-live" not in error
    bad = {"prompts": {"items": ["hi"]}, "reward": [keyed], "seed": "sk-live-0123456789"}  # a wrong type, quoted
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["config", str(tmp_path / "bad.yaml")]) == 2
    error = capsys.readouterr().err
    assert "'seed'" in error and "sk-live" not in error


def test_a_run_with_secrets_in_its_config_resumes(tmp_path):
    from onpolicy.components import checkpoint_layout
    from onpolicy.config import Config
    from onpolicy.run.resume import open_run

    config = Config.model_validate(
        {
            "prompts": {"items": ["hi"]},
            "reward": [{"name": "length", "args": {"target": 3}}],
            "generation": {"backend": "server", "server": {"urls": ["http://bob:pa55word@gpu-1:8000"]}},
        }
    )
    open_run(config, tmp_path / "run", checkpoint_layout(config)).lock.release()
    (tmp_path / "run" / "rounds.jsonl").write_text('{"round": 0}\n')
    start = open_run(config, tmp_path / "run", checkpoint_layout(config))  # the saved config masks the password
    start.lock.release()
    assert start.last_complete == 0 and "pa55word" not in (tmp_path / "run" / "config.yaml").read_text()
