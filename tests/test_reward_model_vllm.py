"""The reward model on vLLM: its pooling runner in this process, and a pooling server the job starts or is given
by URL, each giving the scores of the transformers engine for the same token ids."""

import gc

import pytest

from onpolicy.components import reward_server_starter
from reward import build_reward, score_groups
from reward.servers import ModelServers
from tests.helpers import free_port, is_up

pytestmark = pytest.mark.slow
pytest.importorskip("vllm", reason="the vLLM engines need vLLM, which this machine lacks")

RESPONSES = ["I am Athene.", "I am a small model made to help.", "Hello", "Paris is the capital of France."]
QUESTIONS = ["Who are you?", "What is two plus two? Answer in one long sentence please."]
GROUPS = [  # 6 groups of 4
    ({"id": f"q{n}", "prompt": q, "messages": [{"role": "user", "content": q}]}, RESPONSES[n:] + RESPONSES[:n])
    for n, q in enumerate(QUESTIONS * 3)
]
# float32 everywhere: `dtype: auto` is bfloat16 on a GPU, for the transformers engine and vLLM alike
VLLM = {"dtype": "float32", "kv_cache_gib": 0.25, "max_length": 512}


def _transformers_scores(path):
    reward = build_reward("reward_model", {"path": str(path), "dtype": "float32", "batch_size": 8})
    return [x for group in score_groups(reward, GROUPS) for x in group]


def test_vllm_in_process_scores_a_round_in_one_call_as_transformers_does(tiny_reward_model_path):
    expected = _transformers_scores(tiny_reward_model_path)
    reward = build_reward("reward_model", {"path": str(tiny_reward_model_path), "engine": "vllm", **VLLM})
    scores = score_groups(reward, GROUPS)
    assert [len(group) for group in scores] == [4] * 6
    assert [x for group in scores for x in group] == pytest.approx(expected, abs=1e-4)  # raw logits, no sigmoid
    stats = reward.take_stats()
    assert stats["calls"] == 1 and stats["scored"] == 24 and stats["load_seconds"] > 0
    del reward
    gc.collect()


def test_a_started_server_scores_as_transformers_does_takes_its_key_and_stops_with_the_job(
    tiny_reward_model_path, tmp_path, monkeypatch
):
    expected = _transformers_scores(tiny_reward_model_path)
    port = free_port()
    servers = ModelServers()
    args = {"path": str(tiny_reward_model_path), "engine": "server", "port": port, "batch_size": 5, **VLLM}
    reward = build_reward("reward_model", args, model_servers=servers)
    with pytest.raises(RuntimeError, match="has not been started"):  # built, as `onpolicy check` builds it
        score_groups(reward, GROUPS)
    on_close = []
    servers.attach(reward_server_starter(tmp_path, on_close))
    try:
        scores = [x for group in score_groups(reward, GROUPS) for x in group]
        assert scores == pytest.approx(expected, abs=1e-4)
        assert reward.take_stats()["calls"] == 5  # 24 conversations, 5 a request
        server = servers._asked[0].get()
        # the same server, given by URL (as a /v1 base URL), with its key from the environment
        monkeypatch.setenv("ONPOLICY_TEST_RM_KEY", server.api_key)
        url_args = {"path": str(tiny_reward_model_path), "engine": "server", "url": f"{server.url}/v1",
                    "api_key_env": "ONPOLICY_TEST_RM_KEY"}  # fmt: skip
        given = build_reward("reward_model", url_args)
        assert [x for group in score_groups(given, GROUPS) for x in group] == pytest.approx(expected, abs=1e-4)
        monkeypatch.setenv("ONPOLICY_TEST_RM_KEY", "not-the-key")
        with pytest.raises(RuntimeError, match=r"refused /v1/models \(401\)"):
            score_groups(build_reward("reward_model", url_args), GROUPS)
    finally:
        for release in on_close:
            release()
    assert not is_up(server.url)
    assert (tmp_path / f"reward-server-{port}.log").stat().st_size > 0  # the server's log, in the run's folder
    with pytest.raises(RuntimeError, match="did not answer /classify"):
        score_groups(reward, GROUPS)
