"""The real vLLM engine on a tiny random Llama: sampling, per-sample records, long prompts, in-place weight sync."""

import pytest
import torch

from onpolicy.config import GenerationConfig
from onpolicy.errors import OnpolicyError
from onpolicy.tokens import prompt_ids
from onpolicy.types import PromptRecord
from tests.helpers import check_progress_counts_each_sample, check_stop_token_ends_greedy_answer


def _record(i: int, text: str) -> PromptRecord:
    return PromptRecord(id=str(i), messages=({"role": "user", "content": text},))


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def generator(tiny_model_path, request):
    """The engine in each dtype `generation.dtype: auto` may pick (bf16 is emulated on CPUs without native bf16:
    slower, same behaviour), so that the path a user's machine takes is never untested."""
    from transformers import AutoTokenizer

    from onpolicy.generation.engine import VLLMGenerator

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    config = GenerationConfig(
        num_samples=4, max_new_tokens=12, max_model_len=128, kv_cache_gib=0.25, seed=1, dtype=request.param
    )
    generator = VLLMGenerator(str(tiny_model_path), tokenizer, config)
    assert generator.engine_dtype == getattr(torch, request.param)
    return generator


def test_samples_k_responses_per_prompt_with_their_records(generator):
    records = [_record(0, "Who are you?"), _record(1, "What is the capital of France?")]
    groups, too_long = generator.generate(records)
    assert too_long == []
    assert [g.record.id for g in groups] == ["0", "1"]
    for group in groups:
        assert len(group.samples) == 4
        assert group.prompt_token_ids == tuple(prompt_ids(generator.tokenizer, group.record.messages))
        for sample in group.samples:
            assert 1 <= len(sample.token_ids) <= 12
            assert len(sample.logprobs) == len(sample.token_ids)
            assert all(lp <= 0.0 for lp in sample.logprobs)
            assert sample.finish_reason in {"stop", "length"}
            assert sample.truncated == (sample.finish_reason == "length")
            # vLLM holds back a trailing incomplete UTF-8 character, so the text is a prefix of the decoded ids
            assert generator.tokenizer.decode(sample.token_ids, skip_special_tokens=True).startswith(sample.text)
    # a random model rarely emits its end token within 12 tokens: most samples are cut
    assert any(s.truncated for g in groups for s in g.samples)


def test_every_sampling_setting_reaches_the_engine_s_sampling_params(generator, monkeypatch):
    settings = dict(top_k=3, min_p=0.05, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25)
    settings.update(stop=["zq"], stop_token_ids=[7], temperature=0.8, top_p=0.9)
    sent = []
    generate = generator.llm.generate
    monkeypatch.setattr(
        generator.llm,
        "generate",
        lambda prompts, params, **kw: sent.append((len(prompts), params)) or generate(prompts, params, **kw),
    )
    monkeypatch.setattr(generator, "config", generator.config.model_copy(update=settings))
    generator.generate([_record(0, "Hi")])
    generator.complete([_record(0, "Hi")], 5)
    ((requests, sampled), (_, answered)) = sent
    assert {name: getattr(sampled, name) for name in settings} == settings
    # the prompt's 4 samples as 4 requests of one (each counts as it finishes)
    assert (requests, sampled.n, sampled.max_tokens, sampled.logprobs) == (4, 1, 12, 0)
    # greedy: vLLM resets the settings that only narrow what is sampled from (top-k, top-p, min-p)
    assert {name: getattr(answered, name) for name in settings} == {
        **settings,
        "temperature": 0.0,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
    }
    assert (answered.n, answered.max_tokens, answered.logprobs) == (1, 5, None)
    check_stop_token_ends_greedy_answer(generator, prompt_ids(generator.tokenizer, _record(0, "Who are you?").messages))


def test_progress_counts_each_sample_as_the_engine_finishes_it(generator):
    check_progress_counts_each_sample(generator, [_record(0, "Who are you?"), _record(1, "Hi")])


def test_prompts_too_long_for_the_engine_are_set_apart(generator):
    long = _record(9, "word " * 200)
    groups, too_long = generator.generate([_record(0, "Hi"), long])
    assert [g.record.id for g in groups] == ["0"]
    assert too_long == [long]


def test_prompts_too_long_can_be_refused(generator):
    strict = generator.config.model_copy(update={"long_prompts": "error"})
    original, generator.config = generator.config, strict
    try:
        with pytest.raises(OnpolicyError, match="prompt '9' is .* tokens long"):
            generator.generate([_record(9, "word " * 200)])
    finally:
        generator.config = original


def test_new_weights_reach_the_running_engine(generator, tiny_model_path):
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    greedy = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0)
    prompt = [{"prompt_token_ids": prompt_ids(generator.tokenizer, _record(0, "Who are you?").messages)}]
    before = generator.llm.generate(prompt, greedy, use_tqdm=False)[0].outputs[0]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    generator.load_weights(model.state_dict().items())
    after = generator.llm.generate(prompt, greedy, use_tqdm=False)[0].outputs[0]
    assert after.token_ids != before.token_ids or after.logprobs[0] != before.logprobs[0]

    # and back: the original weights give the original greedy answer
    original = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    generator.load_weights(original.state_dict().items())
    restored = generator.llm.generate(prompt, greedy, use_tqdm=False)[0].outputs[0]
    assert restored.token_ids == before.token_ids


def test_an_engine_resting_while_training_wakes_weights_first_and_never_samples_dropped_weights(
    generator, tiny_model_path, monkeypatch
):
    """The calls a GPU engine gets at the layout's sleep level, on vLLM's CPU build, which takes them (its engine
    pauses scheduling; its workers keep their memory): asleep at level 2 the weights are gone until a sync."""
    from transformers import AutoModelForCausalLM

    calls = []
    for name in ("sleep", "wake_up"):
        real = getattr(generator.llm, name)
        monkeypatch.setattr(
            generator.llm, name, lambda real=real, name=name, **kw: calls.append((name, kw)) or real(**kw)
        )
    records = [_record(0, "Who are you?")]
    before = generator.complete(records, max_new_tokens=6)
    assert generator.rest() is False and calls == []  # the plan's level: 0, awake throughout
    monkeypatch.setattr(generator, "sleep_level", 2)
    assert generator.rest() is True and calls == [("sleep", {"level": 2})]
    with pytest.raises(OnpolicyError, match="slept at level 2 and was sent no weights since"):
        generator.complete(records, max_new_tokens=6)
    assert calls[1:] == [("wake_up", {"tags": ["weights"]}), ("wake_up", {"tags": ["kv_cache"]})]
    generator.load_weights(AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict().items())
    assert generator.complete(records, max_new_tokens=6) == before
    monkeypatch.setattr(generator, "sleep_level", 1)
    assert generator.rest() is False  # level 1 keeps the weights (in CPU memory)
    generator.wake()
    assert calls[-3:] == [
        ("sleep", {"level": 1}),
        ("wake_up", {"tags": ["weights"]}),
        ("wake_up", {"tags": ["kv_cache"]}),
    ]
    assert generator.complete(records, max_new_tokens=6) == before


def test_greedy_answers_are_deterministic_and_skip_long_prompts(generator):
    records = [_record(0, "Who are you?"), _record(1, "word " * 200), _record(2, "Hello")]
    first = generator.complete(records, max_new_tokens=8)
    assert first[1] is None and isinstance(first[0], str) and isinstance(first[2], str)
    assert generator.complete(records, max_new_tokens=8) == first


def test_evaluator_scores_greedy_answers_of_matching_prompts(generator):
    from onpolicy.config import EvalConfig
    from onpolicy.evaluation import build_evaluator, load_eval_prompts

    config = EvalConfig.model_validate(
        {
            "prompts": {
                "items": [
                    {"prompt": "Who are you?", "category": "identity"},
                    {"prompt": "What is your name?", "category": "identity"},
                    {"prompt": "Why is the sky blue?", "category": "other"},
                ]
            },
            "max_new_tokens": 8,
            "metrics": [
                {
                    "name": "closeness",
                    "function": "length",
                    "args": {"target": 1000, "unit": "chars"},
                    "when": {"category": "identity"},
                },
                {
                    "name": "other_closeness",
                    "function": "length",
                    "args": {"target": 1000, "unit": "chars"},
                    "when": {"category": "other"},
                },
            ],
        }
    )
    results, rows = build_evaluator(config, load_eval_prompts(config)).run(generator)
    answers = [row["answer"] for row in rows]
    expected = [-abs(len(a) - 1000) / 1000 for a in answers]
    assert [row["category"] for row in rows] == ["identity", "identity", "other"]
    assert results["eval/closeness"] == pytest.approx((expected[0] + expected[1]) / 2)
    assert results["eval/other_closeness"] == pytest.approx(expected[2])
    assert "other_closeness" not in rows[0] and rows[2]["other_closeness"] == pytest.approx(expected[2])
    assert results["eval/skipped_long_prompts"] == 0


def test_eval_metric_matching_no_prompt_is_a_config_error():
    from onpolicy.config import EvalConfig
    from onpolicy.errors import ConfigError
    from onpolicy.evaluation import build_evaluator, load_eval_prompts

    config = EvalConfig.model_validate(
        {
            "prompts": {"items": ["Hi"]},
            "metrics": [{"name": "x", "function": "length", "args": {"target": 3}, "when": {"category": "identity"}}],
        }
    )
    with pytest.raises(ConfigError, match=r"eval.metrics\[0\] \(x\): no eval prompt matches"):
        build_evaluator(config, load_eval_prompts(config))


def test_vllm_usage_stats_are_off(generator):
    """Their thread swaps sys.stdout for a buffer while it probes the CPU: lines printed meanwhile were lost."""
    from vllm.usage.usage_lib import is_usage_stats_enabled

    assert not is_usage_stats_enabled()


def test_importing_the_generator_sets_no_environment_the_engine_start_does_and_keeps_the_user_s():
    import os
    import subprocess
    import sys

    script = (
        "import os\n"
        "import onpolicy.generation.engine as g\n"
        "before = 'VLLM_ENABLE_V1_MULTIPROCESSING' in os.environ\n"
        "g.in_process_engine_environment()\n"
        "print(before, os.environ['VLLM_ENABLE_V1_MULTIPROCESSING'], os.environ['VLLM_NO_USAGE_STATS'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_NO_USAGE_STATS")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "0", "1"]
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "VLLM_NO_USAGE_STATS": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["False", "0", "0"]
