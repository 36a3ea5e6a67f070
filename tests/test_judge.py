"""LLM judges: strict parsing, pairwise aggregation, and the real backends - a `vllm serve` process on a loopback
port (with a proxy in front to inject bad answers, delays and key checks) and an in-process vLLM engine."""

import contextlib
import gzip
import json
import random
import re
import time

import numpy as np
import pytest

from reward import Failed, RewardConfigError, build_reward
from reward.judge.judges import bradley_terry, choose_pairs
from reward.judge.templates import RUBRICS, build_pairwise
from tests.helpers import KEYLESS, JudgeProxy, vllm_server

PROMPT = {"id": "q1", "prompt": "Who are you?", "messages": [{"role": "user", "content": "Who are you?"}]}
RESPONSES = ["I am Athene.", "I am a model.", "Hello there.", "No idea."]


def test_rubric_answers_are_parsed_strictly():
    additive = RUBRICS["additive5"]
    assert additive.parse("Relevant, helpful. Score: 4") == 4.0
    assert additive.parse("Score: 2 ... on reflection, Score: 3") == 3.0  # the last statement counts
    assert additive.parse("Score: 7") is None  # out of range: not clipped
    assert additive.parse("I would give it 4 points") is None  # wrong format: not guessed
    assert additive.parse("") is None
    assert RUBRICS["scale10"].parse("Good answer. Rating: [[8]]") == 8.0
    assert RUBRICS["scale10"].parse("Rating: [[0]]") is None
    pairwise = build_pairwise(None)
    assert [pairwise.parse(a) for a in ("so [[A]]", "[[B]]", "a tie: [[C]]", "A is better")] == ["A", "B", "tie", None]


def test_bradley_terry_orders_by_wins_and_stays_finite_for_an_unbeaten_response():
    wins = np.array([[0, 2, 2, 2], [0, 0, 2, 1], [0, 0, 0, 1], [0, 1, 1, 0]], dtype=float)
    strengths = bradley_terry(wins)
    assert np.all(np.isfinite(strengths)) and abs(strengths.sum()) < 1e-9
    assert strengths[0] > strengths[1] > strengths[3] > strengths[2]


def test_bounded_comparisons_still_compare_every_response():
    for k, bound in [(8, 8), (8, 10), (5, 3), (3, 100)]:
        pairs = choose_pairs(k, bound, random.Random(k))
        assert len(pairs) == min(bound, k * (k - 1) // 2) and len(set(pairs)) == len(pairs)
        if bound >= k:
            assert {i for p in pairs for i in p} == set(range(k))


def test_the_policy_judge_uses_the_engine_its_job_hands_it():
    from reward.judge import PolicyEngine

    engine = PolicyEngine()
    judge = build_reward("judge", {"backend": "policy"}, policy_engine=engine)
    chat = judge.asker.backend
    with pytest.raises(RuntimeError, match="needs the running policy engine, and none is attached"):
        chat.engine  # noqa: B018  (built before any model loads: no engine yet)
    running = object()  # what the job attaches: its vllm.LLM
    engine.attach(running)
    assert chat.engine is running
    with pytest.raises(RewardConfigError, match="policy_engine is not an argument a config can set"):
        build_reward("judge", {"backend": "policy", "policy_engine": running})


def test_a_missing_api_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ONPOLICY_TEST_JUDGE_KEY", raising=False)
    args = {
        "backend": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "m",
        "api_key_env": "ONPOLICY_TEST_JUDGE_KEY",
    }
    with pytest.raises(RewardConfigError, match="ONPOLICY_TEST_JUDGE_KEY .* is not set"):
        build_reward("judge", args)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"timeout": 0}, "timeout must be a positive number of seconds, not 0"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"deadline": "soon"}, "deadline must be a positive number of seconds, not 'soon'"),
        ({"max_retries": -1}, "max_retries must be a whole number from 0 to 20, not -1"),
        ({"max_retries": 2.5}, "max_retries must be a whole number"),
        ({"concurrency": 0}, "concurrency must be a whole number from 1"),
        ({"max_tokens": 0}, "max_tokens must be a whole number of at least 1, not 0"),
        ({"temperature": -0.1}, "temperature must be a number of at least 0, not -0.1"),
        ({"temperature": float("inf")}, "temperature must be a number of at least 0"),
    ],
)
def test_request_and_sampling_settings_are_checked_when_the_judge_is_built(args, problem):
    base = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    with pytest.raises(RewardConfigError, match=re.escape(problem)):
        build_reward("judge", {**base, **args})


COMPLETION = (
    '{"id": "c", "object": "chat.completion", "created": 0, "model": "m", '
    '"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Score: 4"}}]}'
)


@contextlib.contextmanager
def canned_endpoint(reply):
    """An HTTP endpoint on a loopback port that answers every POST with `reply(write)`, which writes raw bytes."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))

            def write(data):
                self.wfile.write(data)
                self.wfile.flush()

            try:
                reply(write)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as it should

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _headers(length, kind="application/json", more=""):
    return f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n{more}\r\n".encode()


def _gzipped(text):
    data = gzip.compress(text.encode())
    return lambda write: write(_headers(len(data), more="Content-Encoding: gzip\r\n") + data)


def _completion_with(**changes):
    """COMPLETION with its fields changed: `choices` (whole), or the first choice's `content`."""
    completion = json.loads(COMPLETION)
    if "choices" in changes:
        completion["choices"] = changes["choices"]
    if "content" in changes:
        completion["choices"][0]["message"]["content"] = changes["content"]
    data = json.dumps(completion).encode()
    return lambda write: write(_headers(len(data)) + data)


def _trickle(data, every_s=0.1):
    def reply(write):
        for byte in data:
            write(bytes([byte]))
            time.sleep(every_s)

    return reply


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (_trickle(_headers(len(COMPLETION)) + COMPLETION.encode()), "no complete answer before the request's deadline"),
        (lambda write: (write(_headers(len(COMPLETION))), _trickle(COMPLETION.encode())(write)),
         "no complete answer before the request's deadline"),
        (lambda write: write(_headers(9 * 2**20) + b" " * (9 * 2**20)), "the answer ran over 8388608 bytes"),
        (lambda write: write(_headers(15, "text/html") + b"<html>hi</html>"), "the endpoint answered with no chat "
         "completion: '<html>hi</html>'"),
        (lambda write: write(_headers(9) + b"not json!"), "the endpoint answered with no chat completion"),
        (_gzipped(COMPLETION + " " * 9 * 2**20), "the answer came compressed (Content-Encoding: gzip), which was "
         "not asked for"),
        (_completion_with(choices=5), "the endpoint answered with no chat completion (choices is int, not a list)"),
        (_completion_with(choices=["Score: 4"]), "(choices[0].message.content is missing or null, not text)"),
        (_completion_with(content=4), "(choices[0].message.content is int, not text)"),
        (_completion_with(content={"score": 4}), "(choices[0].message.content is dict, not text)"),
        (_completion_with(content=None), "(choices[0].message.content is missing or null, not text)"),
    ],
    ids=["headers a byte at a time", "body a byte at a time", "a 9 MiB answer", "a 200 of HTML", "a 200 not JSON",
         "9 MiB gzipped", "choices not a list", "a choice not an object", "content a number", "content an object",
         "content null"],
)  # fmt: skip
def test_an_endpoint_that_trickles_floods_or_answers_no_json_fails_those_samples_with_the_reason(reply, reason):
    with canned_endpoint(reply) as url:
        judge = _judge(url, timeout=1.0, max_retries=1, deadline=2.0)
        started = time.monotonic()
        scores = judge.score_group(PROMPT, RESPONSES[:2])
    assert time.monotonic() - started < 10
    assert all(isinstance(s, Failed) and s.kind == "judge_error" for s in scores), scores
    assert reason in scores[0].reason, scores[0].reason


def test_a_well_behaved_endpoint_answers_within_the_limits():
    with canned_endpoint(lambda write: write(_headers(len(COMPLETION)) + COMPLETION.encode())) as url:
        assert _judge(url, deadline=5.0).score_group(PROMPT, RESPONSES[:2]) == [4.0, 4.0]


@pytest.fixture(scope="module")
def judge_url(tiny_model_path, tmp_path_factory):
    with vllm_server(tiny_model_path, log=tmp_path_factory.mktemp("serve") / "vllm.log", api_key=KEYLESS) as server:
        yield f"{server.url}/v1"


@pytest.fixture
def proxy(judge_url):
    proxy = JudgeProxy(judge_url)
    yield proxy
    proxy.close()


def _judge(url, **args):
    return build_reward("judge", {"backend": "openai", "base_url": url, "model": "judge", "max_tokens": 24, **args})


@pytest.mark.slow
def test_constrained_answers_from_a_real_server_always_parse(judge_url):
    judge = _judge(judge_url, constrain=True, votes=2)
    scores = judge.score_group(PROMPT, RESPONSES)
    assert all(isinstance(s, float) and 0 <= s <= 5 for s in scores), scores
    stats = judge.take_stats()
    assert stats["calls"] == len(RESPONSES) and stats["answers"] == 2 * len(RESPONSES)
    assert stats["completion_tokens"] > 0 and stats["prompt_tokens"] > 0 and stats["seconds"] > 0
    assert stats.get("parse_failures", 0) == 0


@pytest.mark.slow
def test_a_rambling_judge_is_retried_then_its_samples_fail_and_are_counted(judge_url):
    judge = _judge(judge_url, parse_retries=1)  # the random tiny model never writes "Score: N"
    scores = judge.score_group(PROMPT, RESPONSES)
    assert all(
        isinstance(s, Failed) and s.kind == "unparsable" and "unparsable judge answer" in s.reason for s in scores
    )
    stats = judge.take_stats()
    assert stats["parse_failures"] == 2 * len(RESPONSES) and stats["retries"] == len(RESPONSES)
    assert stats["failed"] == len(RESPONSES) and stats["parse_failure_rate"] == 1.0


@pytest.mark.slow
def test_an_unparsable_answer_is_asked_again(proxy):
    asked = {}

    def first_garbage_then_score(request, index, answer):
        key = request["messages"][0]["content"]
        asked[key] = asked.get(key, 0) + 1
        return "Hmm, hard to say." if asked[key] == 1 else "Relevant and direct. Score: 4"

    proxy.rewrite = first_garbage_then_score
    judge = _judge(proxy.url, parse_retries=2)
    assert judge.score_group(PROMPT, RESPONSES) == [4.0] * len(RESPONSES)
    stats = judge.take_stats()
    assert stats["retries"] == len(RESPONSES) and stats["parse_failures"] == len(RESPONSES)


@pytest.mark.slow
def test_votes_are_averaged_and_sent_as_one_request(proxy):
    proxy.rewrite = lambda request, index, answer: f"Score: {2 + 2 * index}"
    judge = _judge(proxy.url, votes=2)
    assert judge.score_group(PROMPT, RESPONSES[:2]) == [3.0, 3.0]
    assert [body["n"] for body, _ in proxy.seen] == [2, 2]


def _answer_of(request, letter):
    text = request["messages"][0]["content"]
    return re.search(rf"\[The Start of Assistant {letter}'s Answer\]\n(.*?)\n\[The End", text, re.DOTALL).group(1)


@pytest.mark.slow
@pytest.mark.parametrize("aggregate", ["wins", "bradley_terry"])
def test_pairwise_judge_ranks_by_content_in_both_orders(proxy, aggregate):
    proxy.rewrite = lambda request, index, answer: (
        "[[A]]"
        if "Athene" in _answer_of(request, "A")
        else ("[[B]]" if "Athene" in _answer_of(request, "B") else "[[C]]")
    )
    judge = _judge(proxy.url, mode="pairwise", aggregate=aggregate)
    scores = judge.score_group(PROMPT, RESPONSES)
    assert scores[0] == max(scores) and scores[1] == scores[2] == scores[3] < scores[0]
    stats = judge.take_stats()
    assert stats["comparisons"] == 6 and stats["calls"] == 12  # every pair, both orders
    assert stats["position_bias"] == 0.0


@pytest.mark.slow
def test_eval_win_rate_against_the_initial_policy_under_a_pairwise_judge(proxy):
    from onpolicy.config import EvalConfig
    from onpolicy.evaluation import build_evaluator, load_eval_prompts
    from reward import Term, WeightedSum

    proxy.rewrite = lambda request, index, answer: (
        "[[A]]"
        if "Athene" in _answer_of(request, "A")
        else ("[[B]]" if "Athene" in _answer_of(request, "B") else "[[C]]")
    )
    config = EvalConfig.model_validate({"prompts": {"items": ["Who are you?", "Hi", "Name?"]}})
    judge = WeightedSum([Term(_judge(proxy.url, mode="pairwise"))])
    evaluator = build_evaluator(config, load_eval_prompts(config), judge)

    class Answers:
        def __init__(self, *answers):
            self.answers = list(answers)

        def complete(self, records, max_new_tokens, progress=None, sampling=None):
            return self.answers

    evaluator.run(Answers("I am a model.", "Hello.", "I am Athene."), initial=True)  # round 0: the initial answers
    proxy.seen.clear()
    results, rows = evaluator.run(Answers("I am Athene.", "Hello.", "I am a model."))  # won, the same, lost
    assert results["eval/win_rate"] == pytest.approx(0.5) and [row["win"] for row in rows] == [1.0, 0.5, 0.0]
    assert len(proxy.seen) == 6  # each prompt's two answers, in both orders


@pytest.mark.slow
def test_a_judge_that_always_picks_the_first_position_is_measured_and_cancelled(proxy):
    proxy.rewrite = lambda request, index, answer: "[[A]]"
    judge = _judge(proxy.url, mode="pairwise", max_comparisons=4)
    assert judge.score_group(PROMPT, RESPONSES) == [0.5] * len(RESPONSES)  # every pair a tie
    stats = judge.take_stats()
    assert stats["position_bias"] == 1.0 and stats["comparisons"] == 4 and stats["calls"] == 8


@pytest.mark.slow
def test_a_judge_that_times_out_fails_those_samples_with_the_reason(proxy):
    proxy.delay = 3.0
    judge = _judge(proxy.url, timeout=0.5, max_retries=1)
    scores = judge.score_group(PROMPT, RESPONSES[:2])
    assert all(isinstance(s, Failed) and s.kind == "judge_error" and "Timeout" in s.reason for s in scores), scores
    assert judge.take_stats()["request_errors"] == 2
    assert len(proxy.seen) == 4  # each request tried twice (max_retries=1), with backoff, by the OpenAI client


@pytest.mark.slow
def test_the_api_key_comes_from_the_environment_and_is_checked(proxy, monkeypatch):
    proxy.api_key = "s3cret-key"
    proxy.rewrite = lambda request, index, answer: "Score: 5"
    monkeypatch.setenv("ONPOLICY_TEST_JUDGE_KEY", "s3cret-key")
    assert _judge(proxy.url, api_key_env="ONPOLICY_TEST_JUDGE_KEY").score_group(PROMPT, RESPONSES[:1]) == [5.0]
    monkeypatch.setenv("ONPOLICY_TEST_JUDGE_KEY", "wrong-key-42")
    failed = _judge(proxy.url, api_key_env="ONPOLICY_TEST_JUDGE_KEY", max_retries=0).score_group(PROMPT, RESPONSES[:1])
    assert failed[0].kind == "judge_error" and "AuthenticationError" in failed[0].reason
    assert "bad API key: Bearer ***" in failed[0].reason  # the endpoint echoed the key; it is masked
    assert "wrong-key-42" not in failed[0].reason and "s3cret" not in failed[0].reason


@pytest.mark.slow
def test_a_local_engine_judge_honours_constraints_and_answer_prefixes(tiny_model_path):
    constrained = build_reward(
        "judge", {"backend": "vllm", "model": str(tiny_model_path), "constrain": True, "max_tokens": 8}
    )
    assert all(isinstance(s, float) and 0 <= s <= 5 for s in constrained.score_group(PROMPT, RESPONSES))
    # A response too long for the judge fails alone, with the engine's reason; the others are still judged.
    scores = constrained.score_group(PROMPT, ["word " * 3000, *RESPONSES[:2]])
    assert (
        isinstance(scores[0], Failed)
        and scores[0].kind == "judge_error"
        and "maximum context length" in scores[0].reason
    )
    assert all(isinstance(s, float) for s in scores[1:])
    prefixed = build_reward(
        "judge",
        {
            "backend": "vllm",
            "model": str(tiny_model_path),
            "template": "Rate this answer to {prompt}: {response}",
            "score_pattern": r"Verdict: (\d)",
            "score_range": [0, 9],
            "answer_prefix": "Verdict: 7",
            "max_tokens": 4,
        },
    )
    assert prefixed.score_group(PROMPT, RESPONSES[:2]) == [7.0, 7.0]
    assert prefixed.take_stats()["calls"] == 2


def test_a_round_s_groups_share_one_pool_of_judge_requests():
    """Pointwise at K=2: one group at a time keeps at most 2 requests in flight; four groups scored together
    fill the pool of 8. Pairwise still asks both orders of every pair."""
    import threading

    from reward import score_groups

    lock, state = threading.Lock(), {"now": 0, "most": 0, "seen": 0}

    def slow_completion(write):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            state["seen"] += 1
        time.sleep(0.3)
        with lock:
            state["now"] -= 1
        write(_headers(len(COMPLETION)) + COMPLETION.encode())

    groups = [({**PROMPT, "id": f"q{n}"}, RESPONSES[:2]) for n in range(4)]
    with canned_endpoint(slow_completion) as url:
        judge = _judge(url, concurrency=8)
        assert [judge.score_group(*group) for group in groups] == [[4.0, 4.0]] * 4
        assert state["most"] == 2
        state.update(most=0, seen=0)
        assert score_groups(judge, groups) == [[4.0, 4.0]] * 4
        assert state["most"] == 8 and state["seen"] == 8
        pairwise = _judge(url, mode="pairwise", concurrency=8, parse_retries=0)
        state.update(most=0, seen=0)
        scores = score_groups(pairwise, [({**PROMPT, "id": f"q{n}"}, RESPONSES[:3]) for n in range(2)])
        assert state["seen"] == 2 * 3 * 2 and state["most"] == 8  # 3 pairs a group, both orders
        assert all(isinstance(s, Failed) for group in scores for s in group)  # "Score: 4" is no A/B verdict


def test_a_judge_engine_that_cannot_start_is_not_started_again_for_each_group(tmp_path, monkeypatch):
    import sys
    import types

    from reward.guarded import guarded_batch

    tries = []

    def no_engine(**kwargs):
        tries.append(kwargs)
        raise ValueError("not enough memory for the KV cache")

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=no_engine))  # vLLM's LLM, failing
    judge = build_reward("judge", {"backend": "vllm", "model": str(tmp_path)})
    scores = [guarded_batch(judge, [(PROMPT, RESPONSES[:2])] * 3) for _ in range(2)]
    assert len(tries) == 1
    assert {s.reason for round_ in scores for group in round_ for s in group} == {
        f"raised RuntimeError: the judge engine for {tmp_path} did not start, and is not started again in this run "
        "(resume it once fixed): ValueError: not enough memory for the KV cache"
    }
