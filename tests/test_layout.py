"""The node's layout, planned before anything loads (`onpolicy.generation.placement`): which GPUs each trainer and
each started server takes, each engine's exact vLLM arguments, the in-process engine's sleep level, and the one
line an impossible plan ends with. Machines of 0, 1 and 8 GPUs are described, not detected, so every branch runs
on any machine."""

import json
import math
import pathlib

import pytest
import torch

from onpolicy.cli import main
from onpolicy.components import plan_job_layout
from onpolicy.config import Config
from onpolicy.errors import ConfigError
from onpolicy.generation.placement import Machine, engine_arguments, parameter_count, plan_layout, visible_gpus

CPU = Machine()
ONE_GPU = Machine((0,), 80.0)
EIGHT_GPUS = Machine(tuple(range(8)), 80.0)
SERVERS = {"backend": "server", "server": {"launch": 2}, "tensor_parallel_size": 2}


def _config(generation=None, **changes) -> Config:
    return Config.model_validate(
        {
            "prompts": {"items": ["hi"]},
            "reward": [{"name": "contains", "args": {"words": ["x"]}}],
            "generation": {"dtype": "float32", "max_model_len": 256, **(generation or {})},
            **changes,
        }
    )


def _model_of(parameters: int, folder: pathlib.Path) -> pathlib.Path:
    """A model folder whose safetensors header says `parameters` float32 weights (the data is never read)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"weight": torch.zeros(parameters)}, folder / "model.safetensors")
    return folder


def test_without_gpus_the_plan_is_the_cpu_one():
    layout = plan_layout(_config(), 1, CPU)
    assert layout.engine is not None and layout.engine.sleep_level == 0 and layout.engine.gpus == ()
    assert dict(layout.engine.args) == {
        "dtype": "float32",
        "seed": 0,
        "max_model_len": 256,
        "enforce_eager": True,
        "enable_prefix_caching": True,
        "tensor_parallel_size": 1,
        "kv_cache_memory_bytes": 1024**3,  # bounded: vLLM's CPU build would take all free RAM
    }
    servers = plan_layout(_config({"backend": "server", "kv_cache_gib": 0.5}), 2, CPU)
    assert [(s.port, s.gpus, dict(s.env)) for s in servers.servers] == [(8200, (), {})]
    assert list(servers.servers[0].args) == [
        "--dtype", "float32", "--seed", "0", "--max-model-len", "256", "--enforce-eager", "--enable-prefix-caching",
        "--tensor-parallel-size", "1", "--kv-cache-memory-bytes", str(512 * 1024**2), "--max-logprobs", "1",
        "--weight-transfer-config", '{"backend": "onpolicy_gloo"}',
    ]  # fmt: skip
    assert servers.servers[0].sync == servers.server_sync == "onpolicy_gloo"  # weights through vLLM's transfer API
    assert [t.gpus for t in servers.trainers] == [(), ()] and servers.engine is None


def test_one_gpu_shares_it_between_the_trainer_and_an_engine_that_sleeps_while_training():
    layout = plan_layout(_config({"dtype": "auto"}), 1, ONE_GPU)
    engine = layout.engine
    assert engine is not None and engine.gpus == (0,) and [t.gpus for t in layout.trainers] == [(0,)]
    assert engine.sleep_level == 2  # the sync after the update replaces the dropped weights
    assert engine.args["enable_sleep_mode"] is True and engine.args["gpu_memory_utilization"] == 0.3
    assert engine.args["dtype"] == "bfloat16"
    assert engine.args["enforce_eager"] is False  # CUDA graphs on GPUs
    assert "kv_cache_memory_bytes" not in engine.args  # the KV cache follows gpu_memory_utilization
    bounded = plan_layout(_config({"kv_cache_gib": 2, "gpu_memory_utilization": 0.5}), 1, ONE_GPU).engine
    assert bounded is not None and bounded.args["kv_cache_memory_bytes"] == 2 * 1024**3
    assert bounded.args["gpu_memory_utilization"] == 0.5
    awake = plan_layout(_config({"sleep_level": 0, "enforce_eager": True}), 1, ONE_GPU).engine
    assert awake is not None and awake.sleep_level == 0 and "enable_sleep_mode" not in awake.args
    assert awake.args["enforce_eager"] is True
    adapter = plan_layout(_config(), 1, ONE_GPU, lora_rank=8).engine
    assert adapter is not None and adapter.sleep_level == 1  # level 2 would drop base weights no sync replaces
    assert (adapter.args["enable_lora"], adapter.args["max_lora_rank"]) == (True, 8)


def test_eight_gpus_give_the_trainers_theirs_and_the_servers_the_rest_in_tensor_parallel_blocks():
    layout = plan_layout(_config(SERVERS), 4, EIGHT_GPUS)
    assert [(t.rank, t.gpus) for t in layout.trainers] == [(0, (0,)), (1, (1,)), (2, (2,)), (3, (3,))]
    assert [(s.port, s.gpus, dict(s.env)) for s in layout.servers] == [
        (8200, (4, 5), {"CUDA_VISIBLE_DEVICES": "4,5"}),
        (8201, (6, 7), {"CUDA_VISIBLE_DEVICES": "6,7"}),
    ]
    args = list(layout.servers[0].args)
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.9"  # GPUs of their own
    assert "--kv-cache-memory-bytes" not in args and "--enforce-eager" not in args
    assert layout.engine is None and layout.idle_gpus == ()
    # a launcher's CUDA_VISIBLE_DEVICES: servers get the same physical GPUs the trainers' indices leave
    named = Machine(visible_gpus("2,3,5,7", 4), 80.0)
    one_each = plan_layout(_config({"backend": "server", "server": {"launch": 2}}), 2, named)
    assert [dict(s.env) for s in one_each.servers] == [{"CUDA_VISIBLE_DEVICES": "5"}, {"CUDA_VISIBLE_DEVICES": "7"}]
    assert visible_gpus("GPU-aa, GPU-bb", 2) == ("GPU-aa", "GPU-bb") and visible_gpus(None, 3) == (0, 1, 2)


def test_a_server_s_environment_is_the_job_s_with_its_gpus_and_without_the_launcher_s(monkeypatch, tmp_path):
    from onpolicy.generation.serving import ManagedServer

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    place = plan_layout(_config(SERVERS), 4, EIGHT_GPUS).servers[1]
    server = ManagedServer("model", place.port, tmp_path / "log", place.args, env=place.env)
    environment = server.environment()
    assert environment["CUDA_VISIBLE_DEVICES"] == "6,7"  # its block, not every GPU the trainers see
    assert "WORLD_SIZE" not in environment and "LOCAL_RANK" not in environment  # not one of the trainers
    assert environment["VLLM_SERVER_DEV_MODE"] == "1" and environment["VLLM_API_KEY"] == server.api_key


@pytest.mark.parametrize(
    ("generation", "processes", "machine", "message"),
    [
        (
            {**SERVERS, "server": {"launch": 3}},
            4,
            EIGHT_GPUS,
            r"launch=3 x generation.tensor_parallel_size=2 needs 6 GPUs beside the 4 training process\(es\), and 8 "
            r"GPUs leave 4: 2 server\(s\) of tensor_parallel_size 2 fit \(generation.server.launch=2\)$",
        ),
        (SERVERS, 7, EIGHT_GPUS, r"8 GPUs leave 1: no server of tensor_parallel_size 2 fits; launch fewer training"),
        ({}, 9, EIGHT_GPUS, r"^9 training processes on 8 GPUs: launch at most 8 \(one GPU each\)$"),
        ({"tensor_parallel_size": 2}, 1, ONE_GPU, r"tensor_parallel_size=2: the in-process engine runs on its"),
        ({"sleep_level": 1}, 1, CPU, r"sleep_level=1: vLLM's sleep mode needs a GPU \(on CPUs it does nothing\)"),
        ({"backend": "server", "sleep_level": 2}, 1, EIGHT_GPUS, r"sleep_level=2: generation servers run on GPUs of"),
    ],
)
def test_an_impossible_plan_says_what_fits_in_one_line(generation, processes, machine, message):
    with pytest.raises(ConfigError, match=message) as refused:
        plan_layout(_config(generation), processes, machine)
    assert "\n" not in str(refused.value)


def test_weights_reach_servers_through_vllm_s_transfer_engine_where_both_ends_can_join_it():
    started = plan_layout(_config(SERVERS), 4, EIGHT_GPUS)
    assert {server.sync for server in started.servers} == {"nccl"}  # between GPUs
    args = list(started.servers[0].args)
    assert json.loads(args[args.index("--weight-transfer-config") + 1]) == {"backend": "nccl"}
    given = {"backend": "server", "server": {"urls": ["http://gen-node:8000"]}}
    assert plan_layout(_config(given), 8, EIGHT_GPUS).server_sync == "disk"  # auto: they may not be started for it
    given["server"]["sync"] = "transfer"
    assert plan_layout(_config(given), 8, EIGHT_GPUS).server_sync == "nccl"
    assert plan_layout(_config(given), 1, CPU).server_sync == "onpolicy_gloo"
    disk = plan_layout(_config({"backend": "server", "server": {"sync": "disk"}}), 1, CPU).servers[0]
    assert disk.sync == "disk" and "--weight-transfer-config" not in disk.args
    adapter = plan_layout(_config({"backend": "server"}), 1, CPU, lora_rank=8).servers[0]
    assert adapter.sync == "disk"  # vLLM loads an adapter from a folder
    with pytest.raises(ConfigError, match=r"sync=transfer: an adapter .* reaches the servers as a folder"):
        plan_layout(_config({"backend": "server", "server": {"sync": "transfer"}}), 1, CPU, lora_rank=8)


def test_an_adapter_served_on_base_weights_is_never_dropped_by_sleep():
    with pytest.raises(ConfigError, match=r"sleep_level=2 drops the engine's base weights, .* use 1"):
        plan_layout(_config({"sleep_level": 2}), 1, ONE_GPU, lora_rank=8)


def test_the_colocated_engine_is_checked_against_the_gpu_s_memory(tmp_path):
    model = _model_of(1000, tmp_path / "model")  # 1000 float32 weights: 4000 bytes
    assert parameter_count(model) == 1000 and parameter_count(tmp_path) is None
    per_weight = 4 / 1024**3  # GiB
    resident, training = 2 * 1000 * per_weight, 5 * 1000 * per_weight  # with a frozen reference copy (ref: never)
    never = {"ref": {"refresh": "never"}}

    def plan(generation: dict, gib: float) -> str | None:
        return plan_layout(_config(generation, **never), 1, Machine((0,), gib), model_folder=model).memory_note

    # awake throughout, the trainer must fit beside the engine's share; asleep while training, in the whole GPU
    assert "leaving" in plan({"sleep_level": 0, "gpu_memory_utilization": 0.5}, training * 2.01)
    with pytest.raises(ConfigError, match=r"fits with the engine asleep while training \(generation.sleep_level"):
        plan({"sleep_level": 0, "gpu_memory_utilization": 0.5}, training * 1.9)
    assert "leaving" in plan({"sleep_level": 1, "gpu_memory_utilization": 0.5}, training * 1.01)
    with pytest.raises(ConfigError, match=r"fits with generation.backend=server, the engine on GPUs of its own"):
        plan({"sleep_level": 1, "gpu_memory_utilization": 0.5}, training * 0.99)
    # even asleep while training, the trainer's weights stay beside the awake engine
    with pytest.raises(ConfigError, match=r"fits with generation.gpu_memory_utilization=0\.\d+ or less") as lower:
        plan({"gpu_memory_utilization": 0.9}, resident * 5)
    highest = float(str(lower.value).split("gpu_memory_utilization=")[1].split()[0])
    assert math.isclose(highest, 0.8, abs_tol=0.011)
    assert "leaving" in plan({"gpu_memory_utilization": highest - 0.01}, resident * 5)  # what it said fits, fits
    unknown = plan_layout(_config(), 1, Machine((0,), None), model_folder=model).memory_note
    assert unknown is not None and "not checked" in unknown


def test_engine_arguments_serve_adapters_at_a_rank_vllm_has():
    with pytest.raises(ValueError, match="generation.lora_sync: adapter needs train.lora"):
        _config({"lora_sync": "adapter"})
    generation = _config().generation
    assert "enable_lora" not in engine_arguments(generation, "float32", cuda=False, colocated=True)
    lora = engine_arguments(generation, "float32", cuda=False, colocated=True, lora_rank=4)
    assert (lora["enable_lora"], lora["max_lora_rank"], lora["max_loras"]) == (True, 8, 1)
    assert engine_arguments(generation, "float32", False, True, lora_rank=64)["max_lora_rank"] == 64
    with pytest.raises(ConfigError, match="train.lora.r=600: vLLM serves adapters up to rank 512"):
        engine_arguments(generation, "float32", cuda=False, colocated=True, lora_rank=600)


def test_the_plan_knows_the_adapter_the_policy_s_storage_sends():
    config = _config({"lora_sync": "adapter"}, train={"lora": {"r": 16}})
    engine = plan_job_layout(config, 1, ONE_GPU).engine
    assert engine is not None and engine.args["max_lora_rank"] == 16 and engine.sleep_level == 1


JOB = {"prompts": {"items": ["hi"]}, "reward": [{"name": "length", "args": {"target": 3}}]}
EIGHT = ["generation.backend=server", "generation.server.launch=2", "generation.tensor_parallel_size=2"]


@pytest.mark.parametrize(
    ("arguments", "trainers", "servers", "engine"),
    [
        (["generation.backend=server", "--gpus", "0"], [{"rank": 0, "gpus": []}], [{}], None),
        (["--gpus", "1"], [{"rank": 0, "gpus": [0]}], [], {"gpus": [0], "sleep_level": 2}),
        (
            [*EIGHT, "--gpus", "8", "--processes", "4"],
            [{"rank": r, "gpus": [r]} for r in range(4)],
            [{"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}],
            None,
        ),
    ],
    ids=["0-gpus", "1-gpu", "8-gpus"],
)
def test_onpolicy_layout_prints_the_plan(tmp_path, capsys, arguments, trainers, servers, engine):
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(JOB))
    assert main(["layout", str(config), *arguments, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["trainers"] == trainers
    assert [server["env"] for server in plan["servers"]] == servers
    assert all({"gpus", "env", "args", "sync"} <= set(server) for server in plan["servers"])
    if engine is None:
        assert plan["engine"] is None
    else:
        assert {key: plan["engine"][key] for key in engine} == engine and "args" in plan["engine"]
    assert main(["layout", str(config), *arguments]) == 0
    assert capsys.readouterr().out.startswith("layout: ")


def test_onpolicy_layout_refuses_an_impossible_plan_with_one_line(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(JOB))
    overrides = ["generation.backend=server", "generation.server.launch=3", "generation.tensor_parallel_size=2"]
    assert main(["layout", str(config), *overrides, "--gpus", "8", "--processes", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 server(s) of tensor_parallel_size 2 fit" in err


@pytest.mark.parametrize(
    "header",
    [b"[1, 2]", b'{"w": {"shape": "ab"}}', b'{"w": {}}', b'{"w": 3}', b"[" * 5000, b"\xff\xfe"],
    ids=["list", "shape-text", "no-shape", "entry-number", "deep", "not-utf8"],
)
def test_a_safetensors_file_whose_header_is_not_one_leaves_the_memory_unchecked(tmp_path, header):
    import struct

    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    assert parameter_count(tmp_path) is None


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "abc"}, r"RANK='abc' is not a whole number of 0 or more"),
        ({"WORLD_SIZE": "0"}, r"WORLD_SIZE=0 and LOCAL_WORLD_SIZE=0 count no process"),
        ({"WORLD_SIZE": "two"}, r"WORLD_SIZE='two' is not a whole number"),
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "-1"}, r"LOCAL_WORLD_SIZE='-1' is not a whole number of 0 or more"),
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4"}, r"LOCAL_WORLD_SIZE=4 count .*more on this node than in the"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, r"RANK=2 is not below the 2 processes it counts among \(0 to 1\)"),
        ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "3"}, r"LOCAL_RANK=3 is not below the 2 proc"),
        ({"LOCAL_RANK": "x"}, r"LOCAL_RANK='x' is not a whole number"),
        ({"WORLD_SIZE": "2", "MASTER_PORT": "70000"}, r"MASTER_PORT=70000 is no port"),
    ],
)
def test_malformed_launcher_variables_are_refused_in_one_line(tmp_path, capsys, monkeypatch, environment, message):
    from onpolicy.errors import OnpolicyError
    from onpolicy.run.launch import LAUNCHER_VARIABLES, launch

    with pytest.raises(OnpolicyError, match=message):
        launch(environment)
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(JOB))
    assert main(["config", str(config)]) == 2  # what `run` checks first, printed without a traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("onpolicy: error: the launcher's variable")


def test_a_lone_process_is_the_main_one_whatever_rank_is_left_in_its_environment():
    from onpolicy.run.launch import Launch, launch

    assert launch({}) == Launch(processes=1, local_processes=1, rank=0)
    assert launch({"RANK": "3"}).rank == 0  # no launcher started it: a stray RANK does not make it another process
    assert launch({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Launch(4, 2, 3)
