"""The run directory: never overwrites a run, appends complete rounds durably, swaps model folders atomically."""

import pytest

from onpolicy.errors import OnpolicyError
from onpolicy.rundir import RunDirectory, default_run_dir


def test_a_new_run_holds_its_config_and_an_existing_run_is_refused(tmp_path):
    run = RunDirectory.create(tmp_path / "run", "rounds: 2\n")
    assert (tmp_path / "run" / "config.yaml").read_text() == "rounds: 2\n"
    with pytest.raises(OnpolicyError, match="already holds a run"):
        RunDirectory.create(tmp_path / "run", "rounds: 3\n")
    assert run.read_rounds() == []


def test_rounds_are_appended_one_line_each(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    run.append_round({"round": 1, "reward/mean": 0.5})
    run.append_round({"round": 2, "reward/mean": 0.75})
    assert run.read_rounds() == [{"round": 1, "reward/mean": 0.5}, {"round": 2, "reward/mean": 0.75}]


def test_a_model_save_that_fails_leaves_the_previous_folder_intact(tmp_path):
    run = RunDirectory.create(tmp_path, "")

    def good(folder):
        folder.mkdir()
        (folder / "weights").write_text("v1")

    def crashing(folder):
        folder.mkdir()
        (folder / "weights").write_text("half")
        raise OSError("disk full")

    run.save_model("final", good)
    with pytest.raises(OSError, match="disk full"):
        run.save_model("final", crashing)
    assert (tmp_path / "final" / "weights").read_text() == "v1"
    run.save_model("final", good)  # a later save cleans the leftover and succeeds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "final"]


def test_default_run_dir_is_named_after_the_config():
    assert default_run_dir("configs/identity.yaml").name.startswith("identity-")
    assert default_run_dir(None).parent.name == "runs"
