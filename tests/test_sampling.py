"""The sampling settings as vLLM gets them: one set of parameters (`vllm_sampling`) becomes the same
`SamplingParams` in the in-process engine and, through the completions API's own request model, on a server;
the eval answers' settings fall back on generation's."""

import pytest
from pydantic import ValidationError

from onpolicy.config import EvalConfig, GenerationConfig
from onpolicy.config.sections import Sampling, eval_sampling
from onpolicy.generation.sampling import vllm_sampling

EVERY_SETTING = dict(
    temperature=0.7,
    top_p=0.9,
    top_k=5,
    min_p=0.05,
    repetition_penalty=1.2,
    presence_penalty=0.5,
    frequency_penalty=-0.25,
    stop=["\n\n", "User:"],
    stop_token_ids=[7, 9],
)
SETTING_NAMES = list(Sampling.model_fields)


def _fields(params) -> dict:
    return {name: getattr(params, name) for name in SETTING_NAMES + ["n", "max_tokens", "logprobs"]}


def test_the_engine_and_a_server_build_the_same_sampling_params_from_one_set_of_parameters():
    from vllm import SamplingParams
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    params = vllm_sampling(GenerationConfig(**EVERY_SETTING).sampling(), 4, 32)
    engine = SamplingParams(**params)  # what the in-process engine runs
    request = CompletionRequest(model="policy", prompt=[1, 2, 3], **params)  # what a server reads from the body
    assert set(params) <= set(CompletionRequest.model_fields)  # no field a server would ignore
    served = request.to_sampling_params(32, default_sampling_params={"temperature": 0.1, "top_k": 50, "min_p": 0.3})
    assert _fields(engine) == _fields(served)
    assert {name: _fields(engine)[name] for name in SETTING_NAMES} == EVERY_SETTING
    assert (engine.n, engine.max_tokens, engine.logprobs) == (4, 32, 0)


def test_defaults_are_sent_too_so_a_model_s_generation_config_changes_nothing_on_servers():
    from vllm import SamplingParams
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    params = vllm_sampling(GenerationConfig().sampling(), 2, 8)
    model_defaults = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.1}
    served = CompletionRequest(prompt=[1], **params).to_sampling_params(8, default_sampling_params=model_defaults)
    assert _fields(served) == _fields(SamplingParams(**params))
    assert (served.temperature, served.top_k, served.repetition_penalty) == (1.0, 0, 1.0)


def test_eval_answers_are_greedy_with_generation_s_other_settings_unless_eval_sampling_says_otherwise():
    generation = GenerationConfig(**EVERY_SETTING)
    default = eval_sampling(generation, EvalConfig().sampling)
    assert default == generation.sampling().model_copy(update={"temperature": 0.0})
    given = eval_sampling(generation, EvalConfig(sampling={"temperature": 0.3, "stop": [], "top_k": 0}).sampling)
    assert (given.temperature, given.stop, given.top_k, given.stop_token_ids) == (0.3, [], 0, [7, 9])
    answers = vllm_sampling(given, 1, 16, logprobs=False)
    assert "logprobs" not in answers and answers["n"] == 1


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"top_k": -1}, "greater than or equal to 0"),
        ({"min_p": 1.5}, "less than or equal to 1"),
        ({"repetition_penalty": 0}, "greater than 0"),
        ({"presence_penalty": 3}, "less than or equal to 2"),
        ({"stop": [""]}, "at least 1 character"),
        ({"stop_token_ids": [-1]}, "greater than or equal to 0"),
        ({"temperature": 0}, "samples the same greedy response"),
    ],
)
def test_settings_vllm_would_refuse_are_refused_with_the_config(setting, message):
    with pytest.raises(ValidationError, match=message):
        GenerationConfig(**setting)


def test_eval_sampling_checks_its_settings_like_generation():
    with pytest.raises(ValidationError, match="top_k"):
        EvalConfig(sampling={"top_k": -2})
    with pytest.raises(ValidationError, match="Extra inputs"):
        EvalConfig(sampling={"num_samples": 3})
