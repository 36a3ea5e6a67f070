"""`onpolicy sweep`: the grid's runs planned and checked before any starts, and the W&B sweep config."""

import pathlib

import pytest
import yaml

from onpolicy.cli import main
from onpolicy.errors import ConfigError, OnpolicyError
from onpolicy.run.sweep import parse_grid, plan

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
