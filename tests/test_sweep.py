"""`onpolicy sweep`: the grid's runs planned and checked before any starts, the W&B sweep config, and a whole
sweep of the tiny model stopped midway, resumed and reported."""

import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest
import yaml

from onpolicy.cli import main
from onpolicy.errors import ConfigError, OnpolicyError
from onpolicy.run.stopping import PassedOn, Stopped
from onpolicy.run.sweep import parse_grid, plan
from onpolicy.run.wandb_offline import offline_history
from tests.helpers import ROOT, read_jsonl, tiny_config, wait_for_phase

CONFIG = {"prompts": {"items": ["hi"]}, "reward": [{"name": "length", "args": {"target": 3}}], "seed": 5}


def _config(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    return str(tmp_path / "run.yaml")


def test_every_combination_and_seed_is_a_run_of_its_own_in_one_group(tmp_path, capsys):
    config = _config(tmp_path)
    grid = parse_grid(["train.beta=0.1,0.3", "train.lora={r: 8, lora_alpha: 16},{r: 16}"])
    assert grid == {"train.beta": ["0.1", "0.3"], "train.lora": ["{r: 8, lora_alpha: 16}", "{r: 16}"]}
    runs = plan(config, grid, seeds=2, out=tmp_path / "beta-sweep", overrides=["rounds=2"])
    assert len(runs) == 8 and len({run.run_dir for run in runs}) == 8
    first = runs[0]
    assert first.overrides == (
        "rounds=2", "train.beta=0.1", "train.lora={r: 8, lora_alpha: 16}", "seed=5", "wandb.group=beta-sweep"
    )  # fmt: skip
    assert first.run_dir.parent == tmp_path / "beta-sweep"
    assert first.run_dir.name.startswith("train.beta=0.1,train.lora=_r_8,_lora_alpha_16_,seed=5.h")
    assert [run.overrides[-2] for run in runs[:2]] == ["seed=5", "seed=6"]
    assert main(["sweep", config, "--grid", "train.beta=0.1,0.3", "--seeds", "2", "--dry-run",
                 "--out", str(tmp_path / "s")]) == 0  # fmt: skip
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_grid_points_never_share_a_folder_and_plain_ones_keep_their_plain_names(tmp_path):
    config = _config(tmp_path)
    long_a, long_b = "x" * 190 + "a", "x" * 190 + "b"  # the same first 180 characters
    grid = parse_grid(["train.beta=0.1,0.3", f"prompts.items=[a b],[a/b],[a_b],[{long_a}],[{long_b}]"])
    runs = plan(config, grid, seeds=1, out=tmp_path / "s")
    names = [run.run_dir.name for run in runs]
    assert len(set(names)) == len(runs) == 10
    assert all(len(name) <= 200 and "/" not in name for name in names)
    plain = plan(config, parse_grid(["train.beta=0.1,0.3"]), seeds=1, out=tmp_path / "s")
    assert [run.run_dir.name for run in plain] == ["train.beta=0.1,seed=5", "train.beta=0.3,seed=5"]


def test_a_bad_value_anywhere_in_the_grid_stops_the_sweep_before_any_run(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(ConfigError, match=r"train.beta"):
        plan(config, parse_grid(["train.beta=0.1,-1"]), 1, tmp_path / "s")
    with pytest.raises(OnpolicyError, match="use --seeds N for seeds"):
        plan(config, parse_grid(["seed=1,2"]), 1, tmp_path / "s")
    with pytest.raises(OnpolicyError, match="give KEY=VALUE1,VALUE2"):
        parse_grid(["train.beta"])
    assert not (tmp_path / "s").exists()


def test_a_wandb_sweep_config_runs_the_same_grid_through_wandb_agents(tmp_path):
    config = _config(tmp_path)
    file = tmp_path / "sweep.yaml"
    assert main(["sweep", config, "--grid", "train.beta=0.1,0.3", "--seeds", "2", "--wandb-sweep", str(file)]) == 0
    sweep = yaml.safe_load(file.read_text())
    assert sweep["method"] == "grid"
    assert sweep["parameters"] == {"train.beta": {"values": [0.1, 0.3]}, "seed": {"values": [5, 6]}}
    assert sweep["command"] == ["${env}", "onpolicy", "run", str(pathlib.Path(config).resolve()), "${args_no_hyphens}"]


def test_a_signal_to_the_sweep_goes_once_to_the_run_in_flight_and_stops_the_sweep_after_it(tmp_path):
    """The run is a process of its own session (a terminal's Ctrl-C reaches it only through the sweep, once)."""
    ready = tmp_path / "ready"
    child = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
        f"open({str(ready)!r}, 'w').write(str(os.getsid(0)))\n"
        "time.sleep(60)\n"
    )

    def signal_once_it_is_up():
        while not ready.exists() or not ready.read_text():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with PassedOn() as runner:
        threading.Thread(target=signal_once_it_is_up, daemon=True).start()
        assert runner.run([sys.executable, "-c", child]) == 7
        assert int(ready.read_text()) != os.getsid(0)
        with pytest.raises(Stopped):
            runner.check()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_a_sweep_stopped_midway_skips_its_finished_runs_continues_the_stopped_one_and_reports_each_variant(
    tiny_model_path, tmp_path
):
    """2 values x 2 seeds, 2 rounds each. SIGTERM to the sweep while its second run trains in round 2: that run
    stops after its current step, the sweep waits for it and starts no other. The same command then skips the
    finished run, continues the stopped one after its round 1 (whose files stay as they were) and runs the rest;
    the report has each value as a variant over its two seeds, its numbers those of the runs' rounds.jsonl."""
    small = tiny_config(tiny_model_path)
    config = tiny_config(
        tiny_model_path, rounds=2, prompts={"items": ["Who are you?", "Tell me a story."]},
        generation={**small["generation"], "num_samples": 3, "max_new_tokens": 8},
        train={**small["train"], "batch_size": 1, "num_epochs": 10},  # ~20 steps a round: a phase to stop in
    )  # fmt: skip
    config_file, out = tmp_path / "run.yaml", tmp_path / "sweep"
    config_file.write_text(yaml.safe_dump(config))
    grid = ["--grid", "train.beta=0.1,0.5", "--seeds", "2"]
    runs = [run.run_dir for run in plan(str(config_file), parse_grid(grid[1:2]), 2, out)]
    command = [sys.executable, "-m", "onpolicy.cli", "sweep", str(config_file), *grid, "--out", str(out)]
    started = time.monotonic()
    with open(tmp_path / "stopped.log", "w") as log:
        sweep = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        try:
            wait_for_phase(sweep, runs[1], 2, "train", timeout=600)
            job = json.loads((runs[1] / "status.json").read_text())["pid"]
            sweep.send_signal(signal.SIGTERM)
            sweep.wait(timeout=120)
        finally:
            if sweep.poll() is None:
                sweep.kill()
    stopped = (tmp_path / "stopped.log").read_text()
    assert sweep.returncode == 143, stopped[-3000:]
    assert "sweep stopped by SIGTERM" in stopped and "Traceback" not in stopped, stopped[-3000:]
    assert not _alive(job)  # the run in flight ended with the sweep: no job left behind holding its directory
    assert [r["round"] for r in read_jsonl(runs[0] / "rounds.jsonl")] == [1, 2] and (runs[0] / "final").is_dir()
    assert [r["round"] for r in read_jsonl(runs[1] / "rounds.jsonl")] == [1] and not (runs[1] / "final").exists()
    assert not runs[2].exists() and not runs[3].exists()  # no run started after the stop
    kept = _files(runs[0], *FINISHED_WORK) | _files(runs[1], "rounds/0001")
    # a report of the stopped sweep: its two seeds so far are one variant, tabulated at the round both have
    assert main(["report", *map(str, sorted(out.iterdir())), "--out", str(tmp_path / "stopped-report")]) == 0
    assert _table((tmp_path / "stopped-report/summary.md").read_text())["all runs"]["rounds"] == "1"

    resumed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"{runs[0]} has all 2 rounds already" in resumed.stdout
    assert resumed.stdout.count("has all 2 rounds already") == 1
    assert "resuming after round 1" in resumed.stdout
    assert _files(runs[0], *FINISHED_WORK) | _files(runs[1], "rounds/0001") == kept  # neither run redone
    for run in runs:
        assert [r["round"] for r in read_jsonl(run / "rounds.jsonl")] == [1, 2], run
        assert [row["_step"] for row in offline_history(run)] == [1, 2], run  # round 1 logged once
        assert (run / "final/model.safetensors").is_file()
    elapsed = time.monotonic() - started

    assert main(["report", *map(str, runs), "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report/report.json").read_text())
    assert report["variants"] == {"train.beta=0.1": list(map(str, runs[:2])), "train.beta=0.5": list(map(str, runs[2:]))}
    table = _table((tmp_path / "report/summary.md").read_text())
    for label, seeds in (("train.beta=0.1", runs[:2]), ("train.beta=0.5", runs[2:])):
        records = [read_jsonl(run / "rounds.jsonl") for run in seeds]
        assert table[label]["seeds"] == "2" and table[label]["rounds"] == "2"
        for metric in ("reward/mean", "gen/mean_length", "perf/round_total_s"):
            per_round = [[rounds[n][metric] for rounds in records] for n in range(2)]
            curve = report["metrics"][metric][label]
            assert curve["rounds"] == [1, 2]
            assert curve["mean"] == pytest.approx([statistics.fmean(v) for v in per_round], abs=0, rel=1e-12)
            assert (curve["low"], curve["high"]) == ([min(v) for v in per_round], [max(v) for v in per_round])
            last = per_round[-1]
            assert table[label][metric] == f"{statistics.fmean(last):.4g} ± {statistics.pstdev(last):.3g}"
    print(f"sweep, stop and resume: {elapsed:.0f}s")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


FINISHED_WORK = ("rounds.jsonl", "rounds", "checkpoints", "final", "wandb")  # config.yaml is written again


def _files(run_dir, *names):
    """The files `names` in `run_dir`, and those under the folders among them: modification time and bytes."""
    paths = [path for name in names for path in (run_dir / name, *(run_dir / name).rglob("*")) if path.is_file()]
    return {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in paths}


def _table(markdown):
    """summary.md's table as {variant: {column: cell}}."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    return {row[0]: dict(zip(header, row)) for row in rows}
