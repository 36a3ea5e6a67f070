"""The one place that builds a job's parts: what the user gave is checked before any model loads."""

import pytest

from onpolicy.components import check_inputs
from onpolicy.config import Config
from onpolicy.correction import CORRECTORS
from onpolicy.errors import ConfigError, OnpolicyError
from reward.registry import REWARDS


def _config(**changes) -> Config:
    return Config.model_validate(
        {
            "prompts": {"items": ["Who are you?", {"prompt": "Hello", "category": "other"}]},
            "reward": [{"name": "contains", "args": {"words": ["Athene"]}}],
            **changes,
        }
    )


def test_inputs_are_built_without_loading_a_model():
    inputs = check_inputs(
        _config(
            pairs={"correction": {"corrector": "replace_name", "args": {"target": "Athene"}}},
            eval={
                "prompts": {"items": ["What is your name?"]},
                "metrics": [{"name": "n", "function": "length", "args": {"target": 3}}],
            },
        )
    )
    assert [record.prompt for record in inputs.prompts] in (["Who are you?", "Hello"], ["Hello", "Who are you?"])
    assert inputs.correction is not None and inputs.evaluator is not None
    with pytest.raises(RuntimeError, match="none is attached"):  # the engine comes later, from build_components
        inputs.policy_engine.get()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reward": [{"name": "contans"}]}, r"reward\[0\] \(contans\): unknown reward 'contans'"),
        (
            {"pairs": {"correction": {"corrector": "rename"}}},
            r"unknown corrector 'rename': use a built-in \(replace_name\)",
        ),
        (
            {"eval": {"prompts": {"items": ["Hi"]}, "metrics": [{"name": "x", "function": "nope"}]}},
            r"eval.metrics\[0\] \(x\)",
        ),
        (
            {"reward": [{"name": "length", "args": {"target": 3}, "when": {"category": "identity"}}]},
            r"reward\[0\] \(length\): no prompt matches when=\{'category': 'identity'\}, so it would never score",
        ),
        (
            {"reward": [{"name": "human", "args": {"share": 0.5, "fallback": [{"name": "lenght"}]}}]},
            r"reward\[0\].args.fallback\[0\] \(lenght\): unknown reward 'lenght'",
        ),
        (
            {"reward": [{"name": "human", "args": {"fallback": [{"weight": 1}]}}]},
            r"reward\[0\].args.fallback\[0\].name: Field required",
        ),
        (
            {
                "reward": [{"name": "human", "args": {"count": 1, "fallback": [{"name": "judge"}]}}],
                "generation": {"backend": "server", "server": {"urls": ["http://localhost:1"]}},
            },
            r"reward\[0\].args.fallback\[0\] \(judge\): it generates with the in-process policy engine, and with "
            r"generation.backend: server there is none; use backend: openai",
        ),
        (
            {"eval": {"prompts": {"items": ["Hi"]}, "reward": [{"name": "human"}]}},
            r"eval.reward: people do not judge eval answers",
        ),
        (
            {"reward": [{"name": "human"}], "eval": {"prompts": {"items": ["Hi"]}}},
            r"eval.reward: job would ask people to compare every eval answer",
        ),
        (
            {"reward": [{"name": "human"}], "pairs": {"correction": {"corrector": "replace_name"}}},
            r"pairs.correction: a corrected answer is scored again by the reward, and reward\[0\] \(human\) scores "
            r"only the answers shown to people",
        ),
    ],
)
def test_a_wrong_part_is_a_config_error_naming_it(changes, message):
    with pytest.raises(ConfigError, match=message):
        check_inputs(_config(**changes))


def test_a_policy_judge_needs_the_in_process_engine():
    judge = [{"name": "judge", "args": {"backend": "policy"}}]
    with pytest.raises(ConfigError, match=r"reward\[0\] \(judge\): it generates with the in-process policy engine"):
        check_inputs(_config(reward=judge, generation={"backend": "server"}))
    assert check_inputs(_config(reward=judge)).reward is not None  # with the engine: fine
    with pytest.raises(ConfigError, match=r"the engine's base model, which with generation.lora_sync: adapter"):
        check_inputs(_config(reward=judge, generation={"lora_sync": "adapter"}, train={"lora": {"r": 8}}))


def test_reward_servers_are_asked_for_at_check_and_refused_on_a_generation_servers_port(tiny_reward_model_path):
    served = {"name": "reward_model", "args": {"path": str(tiny_reward_model_path), "engine": "server", "port": 8201}}
    inputs = check_inputs(_config(reward=[served]))
    assert [request.port for request in inputs.model_servers.requests] == [8201]  # asked for; nothing started
    [unscored] = inputs.reward.score_group({"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}, ["Hello"])
    assert unscored.kind == "error" and "has not been started" in unscored.reason  # the term's own failure
    starting = {"backend": "server", "server": {"port": 8200, "launch": 2}}
    with pytest.raises(ConfigError, match=r"port 8201, which a generation server takes \(generation.server.port 8200"):
        check_inputs(_config(reward=[served], generation=starting))
    given = {"backend": "server", "server": {"urls": ["http://127.0.0.1:8201"]}}
    assert check_inputs(_config(reward=[served], generation=given)).model_servers.requests  # no port of the job's


def test_a_reward_that_needs_a_gpu_is_refused_where_torch_sees_none(tmp_path, monkeypatch):
    import torch

    (tmp_path / "on_gpu.py").write_text(
        "from reward import Needs\n\n"
        "class OnGPU:\n"
        "    name = 'on_gpu'\n"
        "    needs = Needs(gpu=True)\n"
        "    def score_group(self, prompt, responses):\n"
        "        return [0.0] * len(responses)\n"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    term = {"name": "contains", "args": {"words": ["x"]}}
    fallback = {"name": "human", "args": {"count": 1, "fallback": [{"name": f"{tmp_path / 'on_gpu.py'}:OnGPU"}]}}
    with pytest.raises(ConfigError, match=r"reward\[1\].args.fallback\[0\] \(.*:OnGPU\): it runs on a CUDA device"):
        check_inputs(_config(reward=[term, fallback]))


def test_the_reward_package_stands_alone():
    import subprocess
    import sys

    imports = "import sys, reward, reward.judge, reward.reward_model, reward.rules; "
    check = "print(sorted(m for m in sys.modules if m.split('.')[0] == 'onpolicy'))"
    done = subprocess.run([sys.executable, "-c", imports + check], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_rewards_and_correctors_are_named_through_one_kind_of_registry():
    assert {"contains", "forbids", "judge", "reward_model", "human"} <= set(REWARDS.names())  # human: onpolicy's
    assert CORRECTORS.names() == ["replace_name"]
    assert CORRECTORS.resolve("onpolicy.correction:replace_name") is CORRECTORS.resolve("replace_name")


def test_train_extra_values_trl_refuses_are_config_errors_before_any_model_loads():
    with pytest.raises(ConfigError, match=r"train.extra: trl.DPOConfig refuses \{'optim': 'adamw_nonsense'\}"):
        check_inputs(_config(train={"extra": {"optim": "adamw_nonsense"}}))
    assert check_inputs(_config(train={"extra": {"label_smoothing": 0.1}})) is not None


def test_a_model_folder_transformers_cannot_load_is_refused_naming_it(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(OnpolicyError, match=rf"model.path {tmp_path}: transformers cannot load its config.json"):
        check_inputs(_config(model={"path": str(tmp_path)}))


def test_onpolicy_config_is_a_dry_run_of_what_run_checks_before_loading_models(tmp_path, capsys):
    from onpolicy.cli import main

    (tmp_path / "run.yaml").write_text(
        "prompts: {items: [hi]}\n"
        "reward: [{name: length, args: {target: 3}}]\n"
        "eval: {prompts: {items: [hi]}, metrics: [{name: m, function: missing.py:f}]}\n"
    )
    assert main(["config", str(tmp_path / "run.yaml")]) == 2
    assert "eval.metrics[0] (m)" in capsys.readouterr().err
