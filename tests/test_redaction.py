"""Secrets in a config never reach config.yaml, the W&B config or a printed message."""

import re

import pytest
import yaml

from onpolicy.cli import main
from onpolicy.config import load_config
from onpolicy.config.redaction import is_secret_key, masking, redact, redact_text, secrets_in
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


def test_secrets_under_any_common_spelling_of_their_name_are_masked_whatever_their_shape():
    secret_names = ("accessToken", "secretKey", "clientSecret", "APIKey", "X-Api-Key", "api_keys", "hfTokens", "sig")
    assert all(is_secret_key(name) for name in (*secret_names, "Cookie", "set-cookie", "X-Amz-Signature", "passphrase"))
    assert not any(is_secret_key(name) for name in ("maxNewTokens", "stop_tokens", "tokens", "sigma", "keyfile"))
    assert not is_secret_key("apiKeyEnv")  # it names a variable
    data = {
        "accessToken": "at-0123", "api_keys": ["k-0001", "k-0002"], "auth": {"user": "ana", "pin": 98765},
        "password": 123456, "hf_token": True, "maxNewTokens": 64, "clientSecret": "",
    }  # fmt: skip
    assert redact(data) == {
        "accessToken": "***", "api_keys": ["***", "***"], "auth": {"user": "***", "pin": "***"},
        "password": "***", "hf_token": True, "maxNewTokens": 64, "clientSecret": "",
    }  # fmt: skip
    assert sorted(secrets_in(data)) == sorted(["at-0123", "k-0001", "k-0002", "ana", "98765", "123456"])


SIGNED = "https://b.s3.amazonaws.com/m.bin?X-Amz-Credential=AKIA0123&X-Amz-Signature=f00dcafe&x-id=GetObject"


def test_signed_urls_cookies_and_authorization_headers_are_masked_in_any_string():
    assert redact_text(SIGNED) == SIGNED.replace("AKIA0123", "***").replace("f00dcafe", "***")
    assert redact_text("https://acct.blob.core.windows.net/c/m?sv=2022-11-02&sig=c2lnbmF0dXJl%3D&se=2026") == (
        "https://acct.blob.core.windows.net/c/m?sv=2022-11-02&sig=***&se=2026"
    )
    page = "http://127.0.0.1:8765/#token=t0k3n"  # the labelling page's link: printed for the people who label
    assert redact_text(page) == page
    assert redact_text("http://rm:8000/v1?token=t0k3n") == "http://rm:8000/v1?token=***"
    assert redact_text("Cookie: session=s3ss10n; theme=dark") == "Cookie: ***"
    assert redact_text("the endpoint said {'Authorization': 'Basic dXNlcjpwYXNz', 'Accept': '*/*'}") == (
        "the endpoint said {'Authorization': '***', 'Accept': '*/*'}"
    )
    assert redact_text("401 for Bearer sk-live-0123456789") == "401 for Bearer ***"
    ordinary = "unexpected token: '}' in a basic answer; the bearer instruments; a chip cookie: sweet; &tokens=3"
    assert redact_text(ordinary) == ordinary


def test_secrets_named_in_any_spelling_stay_out_of_config_yaml_and_of_messages(tmp_path):
    (tmp_path / "r.py").write_text("def score(completion, prompt, **options):\n    return 1.0\n")
    options = {
        "accessToken": "at-live-0123", "api_keys": ["k-live-0001", "k-live-0002"], "url": SIGNED,
        "headers": ["Cookie: session=c-live-0123", "Authorization: Bearer b-live-0123456789"],
    }  # fmt: skip
    (tmp_path / "run.yaml").write_text(
        yaml.safe_dump({"prompts": {"items": ["hi"]}, "reward": [{"name": "r.py:score", "args": options}]})
    )
    config = load_config(tmp_path / "run.yaml")
    saved = config.to_yaml()
    assert not re.search(r"live|AKIA|f00dcafe", saved), saved
    assert "X-Amz-Signature=***" in saved and "Cookie: ***" in saved
    message = f"refused k-live-0002, {options['url']}, session=c-live-0123 and the token b-live-0123456789"
    assert not re.search(r"live|AKIA|f00dcafe", redact_text(message, config.secrets()))
