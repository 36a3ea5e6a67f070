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


def test_a_last_line_cut_short_by_a_crash_is_not_a_round_and_is_dropped(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    run.append_round({"round": 1})
    with open(tmp_path / "rounds.jsonl", "a") as f:
        f.write('{"round": 2, "reward/me')  # the process died mid-append
    assert run.read_rounds() == [{"round": 1}] and run.last_complete_round() == 1
    assert (tmp_path / "rounds.jsonl").read_text() == '{"round": 1}\n'
    run.append_round({"round": 2})
    assert [r["round"] for r in run.read_rounds()] == [1, 2]


def test_unfinished_work_of_later_rounds_is_discarded(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    for n in (1, 2, 3):
        run.write_text(f"rounds/{n:04d}/samples.jsonl", "{}\n")
        run.checkpoint(n).mkdir(parents=True)
    (tmp_path / "checkpoints" / ".round-0004.tmp").mkdir()
    removed = run.discard_unfinished(2)
    assert removed == ["rounds/0003", "checkpoints/round-0003", "checkpoints/.round-0004.tmp"]
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == ["0001", "0002"]


def test_pruning_keeps_what_the_rule_keeps_and_always_the_newest(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    for n in (1, 2, 3, 4):
        run.checkpoint(n).mkdir(parents=True)
    assert run.prune_checkpoints(lambda n: n == 2) == [1, 3]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round-0002", "round-0004"]
    assert run.prune_checkpoints(lambda n: False) == [2]  # round 4, the newest, stays


@pytest.mark.parametrize(
    ("checkpoint", "ref", "newest", "kept"),
    [
        ({"keep_last": 2}, {"refresh": "every_round"}, 5, [4, 5]),
        ({"keep_last": 1, "every": 2}, {"refresh": "every_round"}, 5, [2, 4, 5]),
        ({"keep_last": 1}, {"refresh": "every", "every": 3}, 5, [3, 5]),  # round 6's reference: policy after 3
        ({"keep_last": 1}, {"refresh": "never"}, 5, [5]),  # the reference is the initial model
    ],
)
def test_retention_keeps_the_newest_every_nth_and_the_reference_source(checkpoint, ref, newest, kept):
    from onpolicy.config import Config
    from onpolicy.resume import retention

    config = Config.model_validate(
        {
            "prompts": {"items": ["x"]},
            "reward": [{"name": "length", "args": {"target": 1}}],
            "checkpoint": checkpoint,
            "ref": ref,
        }
    )
    keep = retention(newest, config)
    assert [n for n in range(1, newest + 1) if keep(n)] == kept


def test_a_full_disk_while_saving_a_model_leaves_nothing_half_written(tmp_path):
    import errno

    run = RunDirectory.create(tmp_path, "")

    def save(folder):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OnpolicyError, match=r"no space left writing .*checkpoints/round-0001 .*resume"):
        run.save_model("checkpoints/round-0001", save)
    assert not (tmp_path / "checkpoints" / "round-0001").exists()
    assert not list(tmp_path.rglob(".*.tmp"))


def test_resuming_a_run_from_an_older_onpolicy_accepts_settings_it_did_not_have(tmp_path):
    import yaml

    from onpolicy.config import Config
    from onpolicy.resume import open_run

    config = Config.model_validate({"prompts": {"items": ["x"]}, "reward": [{"name": "length", "args": {"target": 1}}]})
    open_run(config, tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del saved["ref"]["logps"]  # as written by a version without that setting
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    start = open_run(config, tmp_path / "run", "resume")
    assert "settings newer than this run take their values: ref.logps='auto'" in start.notes
    changed = config.model_copy(update={"seed": 7})
    with pytest.raises(OnpolicyError, match=r"changed: seed \(0 -> 7\)"):
        open_run(changed, tmp_path / "run", "resume")
