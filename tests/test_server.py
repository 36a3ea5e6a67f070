"""Generation on a real `vllm serve` process (the CPU build, a loopback port) on the tiny model: samples with
their token ids and log-probs, weights moved in place with a version, stale or dead servers refused; and whole
runs with `generation.backend: server`, including a server killed mid-run and the run resumed."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

from onpolicy.config import GenerationConfig
from onpolicy.errors import OnpolicyError
from onpolicy.tokens import prompt_ids
from onpolicy.types import PromptRecord
from tests.helpers import (
    ROOT,
    check_progress_counts_each_sample,
    check_stop_token_ends_greedy_answer,
    free_port,
    is_up,
    read_jsonl,
    run_cli,
    tiny_config,
)

pytestmark = pytest.mark.slow
PROMPTS = ["Who are you?", "What is your name?", "Tell me a story."]
RECORDS = [PromptRecord(id=str(i), messages=({"role": "user", "content": q},)) for i, q in enumerate(PROMPTS)]
SERVE = ("--dtype", "float32", "--max-model-len", "256", "--max-logprobs", "1")


@pytest.fixture(scope="module")
def server_place(tiny_model_path):
    """Where the job's layout puts a started server (here a CPU one), with a variable of the test's added to its
    environment, to see the plan's environment reach the process."""
    from onpolicy.config import Config
    from onpolicy.generation.placement import Machine, plan_layout

    config = tiny_config(tiny_model_path)
    config["generation"].update(backend="server", server={"port": free_port()})
    place = plan_layout(Config.model_validate(config), 1, Machine()).servers[0]
    return dataclasses.replace(place, env={**place.env, "ONPOLICY_TEST_PLACE": "4,5"})


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory, server_place):
    """A server started as the job starts its own, at its place in the layout."""
    from onpolicy.generation.serving import start_servers

    [server] = start_servers(tiny_model_path, [server_place], tmp_path_factory.mktemp("serve"), 300, "the-job-key")
    try:
        yield server
    finally:
        server.stop()


def test_a_started_server_runs_with_the_flags_and_environment_of_its_place(server, server_place):
    process = pathlib.Path(f"/proc/{server.process.pid}")
    command = process.joinpath("cmdline").read_bytes().decode().split("\0")[:-1]
    assert command[command.index("--port") + 1] == str(server_place.port)
    assert command[-len(server_place.args) :] == list(server_place.args)
    assert "--kv-cache-memory-bytes" in command and "the-job-key" not in command  # the key is not in `ps`
    environment = dict(
        entry.split("=", 1) for entry in process.joinpath("environ").read_bytes().decode().split("\0") if "=" in entry
    )
    assert environment["ONPOLICY_TEST_PLACE"] == "4,5" and environment["VLLM_API_KEY"] == "the-job-key"


@pytest.fixture
def generator(server, server_place, tiny_model_path, tmp_path, request):
    """A generator on the server, its weights sent the way the layout says (through vLLM's transfer API), or by
    disk where a test asks for it."""
    from transformers import AutoTokenizer

    from onpolicy.generation.server import ServerGenerator

    config = GenerationConfig(num_samples=3, max_new_tokens=10, max_model_len=256, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    assert server_place.sync == "onpolicy_gloo"
    sync = getattr(request, "param", server_place.sync)
    generator = ServerGenerator(
        [server.url], tokenizer, config, tmp_path / "sync", server.check_alive, server.api_key, sync
    )
    assert generator.engine_dtype == torch.float32
    yield generator
    generator.close()


def _teacher_forced(model, prompt_ids, token_ids) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt_ids) + list(token_ids)])).logits[0, len(prompt_ids) - 1 : -1]
    return torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(token_ids)[:, None])[:, 0]


def test_samples_carry_the_sampled_tokens_and_the_policy_s_log_probs(generator, tiny_model_path):
    from transformers import AutoModelForCausalLM

    groups, too_long = generator.generate(RECORDS)
    assert too_long == [] and [g.record.id for g in groups] == ["0", "1", "2"]
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    for group in groups:
        assert len(group.samples) == 3
        for sample in group.samples:
            assert 1 <= len(sample.token_ids) == len(sample.logprobs) <= 10
            # both in float32: the server's log-probs are the policy's (the bound of tests/test_update.py)
            expected = _teacher_forced(policy, group.prompt_token_ids, sample.token_ids)
            assert (torch.tensor(sample.logprobs) - expected).abs().max() < 1e-4


def test_every_sampling_setting_reaches_the_server_in_the_request_body(generator, monkeypatch):
    settings = dict(top_k=3, min_p=0.05, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25)
    settings.update(stop=["zq"], stop_token_ids=[7], temperature=0.8, top_p=0.9)
    sent = []
    stream = generator._stream
    monkeypatch.setattr(
        generator, "_stream", lambda url, path, body, cap: sent.append(body) or stream(url, path, body, cap)
    )
    monkeypatch.setattr(generator, "config", generator.config.model_copy(update=settings))
    generator.generate(RECORDS[:1])
    generator.complete(RECORDS[:1], 5)
    (sampled, answered) = sent
    assert {name: sampled[name] for name in settings} == settings
    assert (sampled["n"], sampled["max_tokens"], sampled["logprobs"]) == (3, 10, 0)
    assert {name: answered[name] for name in settings} == {**settings, "temperature": 0.0}
    assert (answered["n"], answered["max_tokens"], "logprobs" in answered) == (1, 5, False)
    check_stop_token_ends_greedy_answer(generator, prompt_ids(generator.tokenizer, RECORDS[0].messages))


def test_each_sample_counts_as_the_server_finishes_it_and_is_the_one_a_whole_answer_holds(generator, server):
    """Samples are streamed (each counts as its last delta comes); joined from their deltas, they are what the
    same request answered whole holds (greedy: the same tokens either way)."""
    from onpolicy.config.sections import Sampling
    from onpolicy.generation.sampling import vllm_sampling
    from onpolicy.types import Sample

    check_progress_counts_each_sample(generator, RECORDS)
    prompts = [prompt_ids(generator.tokenizer, record.messages) for record in RECORDS]
    params = vllm_sampling(Sampling(temperature=0.0), 1, 10)
    request = {"model": generator.model_name, "return_token_ids": True, "return_tokens_as_token_ids": True}
    whole = generator._post(server.url, "/v1/completions", {**request, **params, "prompt": prompts})
    expected = [
        [Sample(c["text"], tuple(c["token_ids"]), tuple(c["logprobs"]["token_logprobs"]), c["finish_reason"])]
        for c in sorted(whole["choices"], key=lambda choice: choice["index"])
    ]
    assert generator._sample_ids(prompts, params, None) == expected


@pytest.mark.parametrize("generator", ["onpolicy_gloo", "disk"], indirect=True)
def test_new_weights_reach_the_server_in_place_under_their_version(generator, server, tiny_model_path):
    from transformers import AutoModelForCausalLM

    by_disk = generator.transfer is None

    before = generator.complete(RECORDS, 8)
    moved = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        for param in moved.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    generator.load_weights(moved.state_dict().items(), version="7")
    assert generator._get(server.url, "/weight_info") == {"weight_version": "7"}
    (group,), _ = generator.generate(RECORDS[:1])
    sample = group.samples[0]
    assert (
        torch.tensor(sample.logprobs) - _teacher_forced(moved, group.prompt_token_ids, sample.token_ids)
    ).abs().max() < 1e-4
    assert generator.complete(RECORDS, 8) != before
    assert sorted(p.name for p in generator.folder.glob("*")) == (["weights-7"] if by_disk else [])

    original = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    generator.load_weights(original.state_dict().items(), version="8")
    assert generator.complete(RECORDS, 8) == before
    assert generator._get(server.url, "/weight_info") == {"weight_version": "8"}
    assert sorted(p.name for p in generator.folder.glob("*")) == (["weights-8"] if by_disk else [])  # older gone
    generator.close()
    assert not generator.sync_dir.exists()


def test_the_sync_check_catches_a_server_that_does_not_hold_the_weights_it_was_sent(generator, server, tiny_model_path):
    from transformers import AutoModelForCausalLM

    moved = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        for param in moved.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    generator.load_weights(moved.state_dict().items(), version="9")  # the first sync is checked, and holds
    assert generator.syncs == 1 and "model.norm.weight" in generator.sent_digests
    # the server back on the initial weights behind the job's back: as if the sync had never reached it
    reload = {"method": "reload_weights", "kwargs": {"weights_path": str(tiny_model_path)}}
    generator._post(server.url, "/collective_rpc", reload)
    stale = r"does not hold the weights of version '9' it was sent: \d+ parameter\(s\) differ, e.g. model\.\S*norm"
    with pytest.raises(OnpolicyError, match=stale):
        generator.check_weights()
    generator.load_weights(moved.state_dict().items(), version="10")  # sent again, it holds them
    generator.check_weights()


def test_a_started_server_s_routes_all_take_its_key_and_one_holding_other_weights_is_refused(generator, server):
    generator.version = "8"
    change = {"new_version": "someone-else"}
    for path, body in (
        ("/update_weight_version", change),
        ("/collective_rpc", {"method": "reload_weights"}),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/tmp"}),
        ("/health", None),
    ):
        data = None if body is None else json.dumps(body).encode()
        keyless = urllib.request.Request(server.url + path, data, {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:  # any local process, without the job's key
            urllib.request.urlopen(keyless, timeout=30)
        assert refused.value.code == 401, path
    request = urllib.request.Request(
        f"{server.url}/update_weight_version",
        json.dumps(change).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {server.api_key}"},
    )
    urllib.request.urlopen(request, timeout=30)  # one who has the key
    with pytest.raises(OnpolicyError, match=r"serves weight version 'someone-else', not the policy's '8'"):
        generator.generate(RECORDS)


def test_a_server_that_does_not_come_up_says_why(tmp_path):
    from onpolicy.generation.serving import ManagedServer

    server = ManagedServer(tmp_path / "no-such-model", 1, tmp_path / "vllm.log").start()
    with pytest.raises(OnpolicyError, match=r"exited with code .*its log, .*vllm.log, ends:"):
        server.wait_until_ready(300)
    server.stop()


def test_a_run_on_two_started_servers_samples_round_two_from_the_updated_weights(tiny_model_path, tmp_path):
    """`launch: 2`: both servers sample each round (progress advancing from a thread per server) and both take
    the new weights, by transfer in one group."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(tiny_model_path, rounds=2, checkpoint={"every": 1})
    config["generation"]["backend"] = "server"
    config["generation"]["server"] = {"port": free_port(), "launch": 2}
    run_dir, stdout = run_cli(config, tmp_path)
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2] and all(r["train/skipped"] == 0 for r in rounds)
    assert all(r["perf/ref_from_engine"] == 1.0 for r in rounds)  # the servers' log-probs are the reference
    for n in (0, 1):
        log = (run_dir / f"vllm-server-{n}.log").read_text()
        assert "Application startup complete" in log and "/v1/completions" in log and "/update_weights" in log
    assert not (run_dir / "weights-sync").exists()  # removed with the servers at the end
    after_round_1 = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints/round-0001")
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    prompts = {str(i): [{"role": "user", "content": q}] for i, q in enumerate(config["prompts"]["items"])}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    errors = {"initial": [], "after_round_1": []}
    for sample in read_jsonl(run_dir / "rounds/0002/samples.jsonl"):  # from both servers
        prompt_ids = tokenizer.apply_chat_template(prompts[sample["prompt_id"]], add_generation_prompt=True)
        prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
        for name, model in (("initial", initial), ("after_round_1", after_round_1)):
            gap = torch.tensor(sample["logprobs"]) - _teacher_forced(model, prompt_ids, sample["token_ids"])
            errors[name].append(gap.abs().mean().item())
    assert max(errors["after_round_1"]) < 1e-3 < min(errors["initial"]), errors
    port = config["generation"]["server"]["port"]
    assert not is_up(f"http://127.0.0.1:{port}") and not is_up(f"http://127.0.0.1:{port + 1}")  # gone with the job


def test_a_server_of_onpolicy_serve_takes_weights_by_transfer_and_when_killed_mid_run_the_run_resumes(
    tiny_model_path, tmp_path
):
    """A job on a server another machine would run (`onpolicy serve`, keyed), its weights sent through vLLM's
    transfer API; the server dies mid-run, the round fails cleanly, and the run resumes on a new one."""
    import psutil

    port = free_port()
    # a reward that holds round 1 in its score phase until the test has killed the server
    (tmp_path / "held.py").write_text(
        "import pathlib, time\n"
        f"GO = pathlib.Path({str(tmp_path / 'go')!r})\n"
        "def score(completion, prompt):\n"
        "    while not GO.exists():\n"
        "        time.sleep(0.1)\n"
        "    return float(len(completion))\n"
    )
    config = tiny_config(tiny_model_path, rounds=2, reward=[{"name": f"{tmp_path / 'held.py'}:score"}])
    config["generation"]["backend"] = "server"
    config["generation"]["server"] = {
        "urls": [f"http://127.0.0.1:{port}"], "request_timeout_s": 60, "api_key_env": "ONPOLICY_TEST_SERVER_KEY",
        "sync": "transfer", "check_every": 1,
    }  # fmt: skip
    environment = {**os.environ, "ONPOLICY_TEST_SERVER_KEY": "the-servers-key"}
    (tmp_path / "run.yaml").write_text(json.dumps(config))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "onpolicy.cli", "run", str(tmp_path / "run.yaml"), "--run-dir", str(run_dir)]

    def serve(log: str) -> subprocess.Popen:
        serving = [sys.executable, "-m", "onpolicy.cli", "serve", str(tmp_path / "run.yaml"), "--port", str(port)]
        started = subprocess.Popen(
            [*serving, "--host", "127.0.0.1", "--log", str(tmp_path / log)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        )  # fmt: skip
        _wait_for(lambda: is_up(f"http://127.0.0.1:{port}"), started)
        return started

    served = serve("first.log")
    [vllm] = psutil.Process(served.pid).children()  # the server onpolicy serve started (and ends with it)
    assert "--weight-transfer-config" in vllm.cmdline() and "the-servers-key" not in vllm.cmdline()
    job = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    _wait_for(lambda: _phase(run_dir) == (1, "score"), job)
    killed = vllm.pid
    vllm.send_signal(signal.SIGKILL)  # the server dies after round 1 sampled, before its sync
    (tmp_path / "go").touch()
    _, stderr = job.communicate(timeout=300)
    _, served_err = served.communicate(timeout=60)
    assert served.returncode == 2 and "the vLLM server exited with code" in served_err, served_err[-2000:]
    deadline = time.monotonic() + 30  # its engine core, orphaned by the kill, goes with the server's stop
    while _running_in_group(killed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running_in_group(killed)
    assert job.returncode == 2, stderr
    assert f"the vLLM server at http://127.0.0.1:{port} failed on" in stderr
    assert not (run_dir / "rounds.jsonl").exists() or read_jsonl(run_dir / "rounds.jsonl") == []
    served = serve("second.log")
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=environment)
        assert done.returncode == 0, done.stderr[-3000:]
        assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [1, 2]
        weight_info = urllib.request.Request(
            f"http://127.0.0.1:{port}/weight_info", headers={"Authorization": "Bearer the-servers-key"}
        )
        with urllib.request.urlopen(weight_info, timeout=30) as answer:
            assert json.load(answer) == {"weight_version": "2"}  # round 2's weights, sent by transfer
        assert "/update_weights" in (tmp_path / "second.log").read_text()
    finally:
        served.send_signal(signal.SIGINT)
        served.communicate(timeout=60)
    assert served.returncode == 0 and not is_up(f"http://127.0.0.1:{port}")


def _running_in_group(group):
    import psutil

    def in_group(process):
        try:
            return os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, ProcessLookupError):
            return False

    return [process.pid for process in psutil.process_iter() if in_group(process)]


def _phase(run_dir):
    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return status.get("round"), status.get("phase")


def _wait_for(condition, job, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the run never reached the expected phase"
        time.sleep(0.2)
