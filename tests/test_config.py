"""Config loading: every shipped YAML validates; bad keys, types and files give one clear message; precedence."""

import pathlib
import subprocess
import sys

import pytest
import yaml

from onpolicy.config import Config, describe_fields, load_config
from onpolicy.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
# job configs; configs/accelerate/ holds accelerate's own launch configs (test_distributed runs them)
SHIPPED = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts)


def _write(tmp_path, data, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


MINIMAL = {"prompts": {"items": ["hi"]}, "reward": [{"name": "contains", "args": {"words": ["x"]}}]}


def test_configs_folder_is_found_and_not_empty():
    assert ROOT / "configs" / "default.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates_with_its_rewards(path, tiny_reward_model_path):
    from onpolicy.components import build_reward_from_terms
    from onpolicy.prompts import load_prompts

    config = load_config(path)
    assert load_prompts(config.prompts)
    terms = list(config.reward)
    for i, term in enumerate(terms):
        if term.name == "reward_model":  # made by `onpolicy train-reward-model`; a tiny one stands in here
            assert pathlib.Path(term.args["path"]).is_relative_to(ROOT / "configs")
            terms[i] = term.model_copy(update={"args": {**term.args, "path": str(tiny_reward_model_path)}})
    build_reward_from_terms(terms)


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = _write(tmp_path, {**MINIMAL, "rounds": 5, "generation": {"num_samples": 4}})
    config = load_config(path, ["generation.num_samples=6", "train.beta=0.5"])
    assert config.rounds == 5  # YAML over default
    assert config.generation.num_samples == 6  # override over YAML
    assert config.train.beta == 0.5 and config.generation.max_new_tokens == 64  # override over default; default
    assert config.train.learning_rate == Config.model_fields["train"].default_factory().learning_rate


def test_the_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), ["reward.0.weight=2"])
    again = Config.model_validate(yaml.safe_load(config.to_yaml()))
    assert again == config


@pytest.mark.parametrize(
    ("data", "overrides", "message"),
    [
        (
            {**MINIMAL, "generation": {"num_sample": 4}},
            [],
            r"unknown key 'generation.num_sample' in .*run.yaml; did you mean 'generation.num_samples'\?",
        ),
        ({**MINIMAL, "num_samples": 4}, [], r"unknown key 'num_samples' .*did you mean 'generation.num_samples'\?"),
        (
            MINIMAL,
            ["generation.temprature=0.5"],
            r"unknown key 'generation.temprature' in command-line override 'generation.temprature=0.5'; did you mean 'generation.temperature'\?",
        ),
        (MINIMAL, ["reward.0.wieght=2"], r"did you mean 'reward\[0\].weight'\?"),
        (MINIMAL, ["eval.prompts={items: [a], pth: p.txt}"], r"did you mean 'eval.prompts.path'\?"),
        (
            MINIMAL,
            ["eval.prompts={items: [a]}", "eval.metrics=[{name: a, function: contains, wen: {}}]"],
            r"unknown key 'eval.metrics\[0\].wen' .*did you mean 'eval.metrics\[0\].when'\?",
        ),
        (
            MINIMAL,
            ["generation.temperature=hot"],
            r"'generation.temperature' in command-line override .*valid number.*got 'hot'",
        ),
        ({**MINIMAL, "rounds": "many"}, [], r"'rounds' in .*run.yaml: Input should be a valid integer"),
        ({**MINIMAL, "rounds": 0}, [], r"'rounds' .*greater than or equal to 1"),
        (MINIMAL, ["generation.num_samples=1"], r"greater than or equal to 2"),
        (MINIMAL, ["ref.refresh=sometimes"], r"'every_round', 'every', 'never' or 'mix'"),
        (
            MINIMAL,
            ["train.loss_type=sigmod"],
            r"train.loss_type: unknown DPO loss type 'sigmod'; did you mean 'sigmoid'\?",
        ),
        (MINIMAL, ["train.extra={beta: 0.3}"], r"train.extra.beta is set by onpolicy; it follows train.beta"),
        (
            MINIMAL,
            ["train.extra={labl_smoothing: 0.1}"],
            r"no field 'labl_smoothing'; did you mean 'label_smoothing'\?",
        ),
        (
            MINIMAL,
            ["generation.max_new_tokens=2048"],
            r"command-line override .*max_new_tokens \(2048\) must be below generation.max_model_len",
        ),
        ({"reward": MINIMAL["reward"]}, [], r"missing key 'prompts'"),
        ({"prompts": {"items": ["hi"]}}, [], r"missing key 'reward'"),
        (
            {**MINIMAL, "prompts": {"items": ["a"], "path": "p.txt"}},
            [],
            r"exactly one of prompts.path .* or prompts.items",
        ),
        (MINIMAL, ["rounds"], r"not of the form key.path=value"),
        (MINIMAL, ["train.beta=.inf"], r"'train.beta' in command-line override .*finite number"),
        (MINIMAL, ["train.beta_by_round={0: 0.1}"], r"train.beta_by_round: \{0: 0.1\}: rounds start at 1"),
        (MINIMAL, ["train.learning_rate_by_round={2: -1}"], r"rounds start at 1, values above 0"),
        (MINIMAL, ["train.loss_type=[sigmoid, sfd]"], r"unknown DPO loss type 'sfd'; did you mean 'sft'\?"),
        (
            MINIMAL,
            ["train.loss_type=[sigmoid, sft]", "train.loss_weights=[1.0]"],
            r"train.loss_weights has 1 weights for 2 loss types \(sigmoid, sft\)",
        ),
        (MINIMAL, ["seed=-3"], r"'seed' in command-line override .*greater than or equal to 0"),
        (MINIMAL, ["generation.temperature=.inf"], r"'generation.temperature' .*finite number"),
        (MINIMAL, ["reward.0.weight=.nan"], r"'reward\[0\].weight' .*finite number"),
        (MINIMAL, ["train.extra={logging_steps: 5}"], r"train.extra.logging_steps is set by onpolicy; it follows"),
        (MINIMAL, ["train.extra={push_to_hub: true}"], r"train.extra.push_to_hub: a job never publishes weights"),
        (MINIMAL, ["train.extra={hub_model_id: me/m}"], r"train.extra.hub_model_id: a job never publishes weights"),
        (
            MINIMAL,
            ["generation.server.extra_args=[--host=0.0.0.0]"],
            r"generation.server.extra_args: --host is set by onpolicy; started servers listen on 127.0.0.1 only",
        ),
        (
            MINIMAL,
            ["generation.server.extra_args=[--max-num-seqs, '8', --port, '9000']"],
            r"extra_args: --port is set by onpolicy; it follows generation.server.port",
        ),
        (
            MINIMAL,
            ["generation.server.extra_args=[--tensor-parallel-size, '2']"],
            r"extra_args: --tensor-parallel-size is set by onpolicy; set generation.tensor_parallel_size",
        ),
        (
            MINIMAL,
            ["generation.server.extra_args=[--api-key, k]"],
            r"extra_args: --api-key is set by onpolicy; started servers take a key of the job's own",
        ),
        (MINIMAL, ["generation.server.api_key_env=not a name"], r"'generation.server.api_key_env' .*pattern"),
        (MINIMAL, ['prompts.system_prompt="\\ud800"'], r"'prompts.system_prompt' in .*lone surrogate"),
        (MINIMAL, ["ref.refresh=mix", "train.lora={r: 8}"], r"ref.refresh: mix needs full fine-tuning"),
        (MINIMAL, ["ref.refresh=mix", "ref.mix=0"], r"'ref.mix' in command-line override .*greater than 0"),
        (
            MINIMAL,
            ["eval.prompts={items: [a]}", "eval.metrics=[{name: win_rate, function: length}]"],
            r"eval.metrics\[0\].name 'win_rate' is taken: eval/win_rate is logged by onpolicy",
        ),
        (
            MINIMAL,
            ["eval.prompts={items: [a]}", "eval.metrics=[{name: x, function: length}, {name: x, function: length}]"],
            r"eval.metrics\[1\].name 'x' is given twice",
        ),
    ],
)
def test_bad_config_gives_one_clear_error(tmp_path, data, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, data), overrides)


DEEP = "[" * 2000 + "]" * 2000


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("a: &a [*a]\n", [], r"run.yaml: holds itself \(a YAML alias inside its own anchor\)"),
        ("prompts: &p {items: [x], more: *p}\n", [], r"run.yaml: holds itself"),
        (f"prompts: {DEEP}\n", [], r"run.yaml: nested deeper than 100 levels"),
        ("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 400)), [], r"run.yaml: nested deeper than 100 levels"),
        (  # an alias bomb: nine levels of ten repeats, a billion strings once expanded
            "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)),
            [],
            r"run.yaml: its YAML aliases repeat the same values over 100000 times",
        ),
        (yaml.safe_dump(MINIMAL), [f"train.extra={{x: {DEEP}}}"], r"the value of override 'train.extra': nested deep"),
        (yaml.safe_dump(MINIMAL), ['train.extra={"\\ud800": 1}'], r"key 'train.extra.\\ud800' in command-line over"),
        ('prompts: {items: [x]}\nreward: [{name: length, args: {"\\udc80": 1}}]\n', [], r"key 'reward\[0\].args.\\u"),
        ('prompts: {path: "\\ud800.jsonl"}\n', [], r"'prompts.path' in .*run.yaml: holds '\\ud800'"),
        (yaml.safe_dump(MINIMAL), ['model.path="\\ud800"'], r"'model.path' in command-line override .*lone surrogate"),
    ],
    ids=[
        "alias-in-itself", "alias-in-itself-mapping", "deep-flow", "deep-block", "alias-bomb", "deep-override",
        "surrogate-override-key", "surrogate-file-key", "surrogate-file-path", "surrogate-override-path",
    ],  # fmt: skip
)
def test_yaml_no_parser_or_walker_survives_is_refused_in_one_line_naming_the_file(tmp_path, text, overrides, message):
    """Recursive, deep or exploding YAML, and keys or paths no file (or file system) can hold."""
    from onpolicy.errors import OnpolicyError

    with pytest.raises(OnpolicyError, match=message):
        load_config(_write(tmp_path, text), overrides)


OWNED_BY = r"\(vLLM may read it as {}\) is set by onpolicy"
SHOWN_IN_PS = r"--hf-token\)? would show its secret on the server's command line .*the environment variable HF_TOKEN"


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        (["--hos", "0.0.0.0"], r"extra_args: --hos " + OWNED_BY.format("--host") + "; started servers listen on 127"),
        (["--api_key=k"], r"extra_args: --api_key " + OWNED_BY.format("--api-key")),
        (["--api-k", "k"], r"extra_args: --api-k " + OWNED_BY.format("--api-key")),
        (["--served_model", "x"], OWNED_BY.format("--served-model-name")),
        (["-t", "2"], r"extra_args: -t " + OWNED_BY.format("-tp") + "; set generation.tensor_parallel_size"),
        (["-tp=2"], r"extra_args: -tp is set by onpolicy"),
        (["--weight-transfer-config.backend", "nccl"], OWNED_BY.format("--weight-transfer-config")),
        (["--max-num-seqs", "8", "--hf-token", "hf_live_0123"], r"extra_args: " + SHOWN_IN_PS),
        (["--hf_tok=hf_live_0123"], r"extra_args: --hf_tok \(vLLM may read it as " + SHOWN_IN_PS),
        (["--model-loader-extra-config", '{"s3": {"secretKey": "hf_live_0123"}}'], r"extra_args\[1\] holds a secret"),
        (["--model-loader-extra-config.aws_secret_access_key", "hf_live_0123"], r"extra_args\[0\] holds a secret"),
        (["--tokenizer", "https://me:hf_live_0123@hub.internal/tok"], r"extra_args\[1\] holds a secret, which would"),
        (["--config", "flags.yaml"], r"extra_args: --config would have vLLM read more flags from a file"),
    ],
)
def test_server_extra_args_are_read_as_vllm_reads_them_and_may_not_set_onpolicy_s_flags_or_a_secret(
    tmp_path, extra_args, message
):
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(_write(tmp_path, {**MINIMAL, "generation": {"server": {"extra_args": extra_args}}}))
    assert "hf_live" not in str(refused.value)


def test_server_extra_args_that_only_look_like_onpolicy_s_flags_or_a_secret_pass():
    from onpolicy.config import Config

    extra_args = [
        "--max-num-seqs", "512", "--enforce-eager", "--model-impl", "vllm", "--max-logprobs", "-1",
        "--long-prefill-token-threshold", "32", "--hf-overrides", '{"rope_theta": 1e6}', "--tokenizer-mode=auto",
    ]  # fmt: skip
    server = Config.model_validate({**MINIMAL, "generation": {"server": {"extra_args": extra_args}}}).generation.server
    assert server.extra_args == extra_args


def test_each_flag_extra_args_may_not_set_is_read_by_vllm_s_server_in_the_spellings_refused_and_abbreviates_none():
    """vLLM's own parser (its server's): the refused flags are its options, no option of its is a prefix of one (so
    refusing abbreviations refuses no real option), and it reads each refused spelling as the flag refused."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from onpolicy.config.server_flags import OWNED_FLAGS, SECRET_FLAGS, check_extra_args

    parser = make_arg_parser(FlexibleArgumentParser())
    options = {option for action in parser._actions for option in action.option_strings}
    refused = {*OWNED_FLAGS, *SECRET_FLAGS}
    assert refused <= options
    assert not [(option, flag) for option in options for flag in refused if flag.startswith(option) and option != flag]
    spellings = {
        ("--hos", "0.0.0.0"): ("host", "0.0.0.0"),
        ("--api_key", "k"): ("api_key", ["k"]),
        ("--hf-tok=t",): ("hf_token", "t"),
        ("-t", "2"): ("tensor_parallel_size", 2),
        ("--served_model", "x"): ("served_model_name", ["x"]),
        ("--weight-transfer-config.backend", "nccl"): ("weight_transfer_config", "nccl"),
    }
    for args, (dest, value) in spellings.items():
        parsed = getattr(parser.parse_args(list(args)), dest)
        assert (parsed.backend if dest == "weight_transfer_config" else parsed) == value
        with pytest.raises(ValueError, match="is set by onpolicy|would show its secret"):
            check_extra_args(args, "extra_args")


def test_servers_given_by_url_with_a_key_variable_that_is_not_set_are_refused_before_anything_starts(monkeypatch):
    from onpolicy.components import check_inputs
    from onpolicy.config import Config

    monkeypatch.delenv("ONPOLICY_TEST_SERVER_KEY", raising=False)
    server = {"urls": ["http://127.0.0.1:9"], "api_key_env": "ONPOLICY_TEST_SERVER_KEY"}
    config = Config.model_validate({**MINIMAL, "generation": {"backend": "server", "server": server}})
    with pytest.raises(
        ConfigError, match=r"the environment variable ONPOLICY_TEST_SERVER_KEY is not set; it must hold"
    ):
        check_inputs(config)


def test_several_errors_are_listed_together(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, {**MINIMAL, "rounds": "x", "seeed": 1}))
    assert str(info.value).startswith("invalid config:")
    assert "'rounds'" in str(info.value) and "did you mean 'seed'" in str(info.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    path = _write(tmp_path, {**MINIMAL, "prompts": {"path": "missing.jsonl"}})
    with pytest.raises(ConfigError, match=r"prompt file not found: .*missing.jsonl"):
        load_config(path)
    with pytest.raises(ConfigError, match="is not a model folder"):
        load_config(_write(tmp_path, {**MINIMAL, "model": {"path": str(tmp_path)}}))


def test_yaml_that_is_not_a_mapping_or_not_yaml(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(b"rounds: 2\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 15\)"):
        load_config(tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(_write(tmp_path, "rounds: [1, 2\n"))


def test_relative_paths_in_yaml_are_relative_to_the_yaml_and_on_the_command_line_to_cwd(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.txt").write_text("hello\n")
    (tmp_path / "data" / "r.py").write_text("def f(completion, prompt):\n    return 1.0\n")
    sub = tmp_path / "configs"
    sub.mkdir()
    data = {"prompts": {"path": "../data/p.txt"}, "reward": [{"name": "../data/r.py:f"}]}
    monkeypatch.chdir(tmp_path / "data")
    config = load_config(_write(sub, data))
    assert config.prompts.path == str(tmp_path / "data" / "p.txt")
    assert config.reward[0].name == f"{tmp_path / 'data' / 'r.py'}:f"
    config = load_config(_write(sub, data), ["prompts.path=p.txt"])
    assert config.prompts.path == str(tmp_path / "data" / "p.txt")
    metric = {"name": "m", "function": "../data/r.py:f"}  # an eval metric's file, like a reward's
    config = load_config(_write(sub, {**data, "eval": {"prompts": {"items": ["x"]}, "metrics": [metric]}}))
    assert config.eval.metrics[0].function == f"{tmp_path / 'data' / 'r.py'}:f"


def test_the_paths_a_reward_declares_are_relative_to_the_yaml_in_nested_terms_too(tmp_path):
    reward_model = {"name": "reward_model", "args": {"path": "rm"}}
    local_judge = {"name": "judge", "args": {"backend": "vllm", "model": "judge-model"}}
    data = {
        "prompts": {"items": ["hi"]},
        "reward": [{"name": "human", "args": {"count": 1, "fallback": [reward_model, {"name": "r.py:f"}]}}],
        "eval": {"prompts": {"items": ["x"]}, "reward": [local_judge, {"name": "judge", "args": {"model": "m"}}]},
    }
    config = load_config(_write(tmp_path, data))
    fallback = config.reward[0].args["fallback"]
    assert fallback[0]["args"]["path"] == str(tmp_path / "rm") and fallback[1]["name"] == f"{tmp_path / 'r.py'}:f"
    assert config.eval.reward[0].args["model"] == str(tmp_path / "judge-model")
    assert config.eval.reward[1].args["model"] == "m"  # a served model's name (backend policy: refused later)


def test_every_key_is_documented():
    rows = describe_fields()
    keys = {key for key, _, _ in rows}
    assert {"rounds", "generation.num_samples", "train.beta", "ref.refresh", "reward[].name"} <= keys
    assert all(description for _, _, description in rows), [k for k, _, d in rows if not d]


def _schema_leaf_keys(schema: dict, defs: dict, prefix: str = "") -> list[str]:
    """Every leaf key of the config's JSON schema, spelled `section.key` / `section[].key`: a walk of pydantic's
    own schema, independent of `describe_fields`."""
    keys = []
    for name, prop in schema["properties"].items():
        nested = None
        for alternative in prop.get("anyOf", [prop]):  # Optional[...] is anyOf [..., null]
            if "$ref" in alternative:
                nested = (alternative["$ref"], ".")
            elif alternative.get("type") == "array" and "$ref" in alternative.get("items", {}):
                nested = (alternative["items"]["$ref"], "[].")
        if nested is None:
            keys.append(prefix + name)
        else:
            ref, joint = nested
            keys.extend(_schema_leaf_keys(defs[ref.rpartition("/")[2]], defs, prefix + name + joint))
    return keys


def _cli_docs(capsys) -> dict[str, str]:
    """`onpolicy config --docs` as {key: description}."""
    from onpolicy.cli import main

    assert main(["config", "--docs"]) == 0
    docs: dict[str, str] = {}
    key = None
    for line in capsys.readouterr().out.splitlines():
        if line and not line[0].isspace():
            key = line.split("  (default: ")[0]
            assert key not in docs, f"{key} documented twice"
            docs[key] = ""
        elif line.strip():
            docs[key] = (docs[key] + " " + line.strip()).strip()
    return docs


def test_config_docs_describe_every_leaf_key_nested_ones_included(capsys):
    schema = Config.model_json_schema()
    leaves = _schema_leaf_keys(schema, schema["$defs"])
    assert {"eval.prompts.path", "eval.metrics[].name", "reward[].weight", "pairs.correction.min_reward"} <= set(leaves)
    docs = _cli_docs(capsys)
    assert [key for key in leaves if key not in docs] == []
    assert [key for key in leaves if not docs[key]] == []


def _cli_run(config_path, run_dir):
    return subprocess.run(
        [sys.executable, "-m", "onpolicy.cli", "run", str(config_path), "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_cli_prints_one_line_and_no_traceback_for_a_bad_config(tmp_path):
    path = _write(tmp_path, {**MINIMAL, "generation": {"num_sample": 4}})
    done = _cli_run(path, tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"onpolicy: error: unknown key 'generation.num_sample' in {path}; did you mean 'generation.num_samples'?"
    ]
    assert not (tmp_path / "run").exists()  # nothing was started


def test_cli_refuses_an_unknown_reward_before_loading_any_model(tmp_path):
    path = _write(tmp_path, {**MINIMAL, "reward": [{"name": "no_such_module_abc:f"}]})
    done = _cli_run(path, tmp_path / "run")
    assert done.returncode == 2
    assert "reward[0] (no_such_module_abc:f): cannot import module 'no_such_module_abc'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
