"""The run directory: never overwrites a run, appends complete rounds durably, swaps model folders atomically."""

import pytest

from onpolicy.errors import OnpolicyError
from onpolicy.run.rundir import RunDirectory, default_run_dir


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


def test_people_s_labels_of_an_unfinished_round_outlive_the_crash(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    run.write_text("rounds/0001/samples.jsonl", "{}\n")
    run.write_text("rounds/0001/labels.jsonl", '{"group": "p1"}\n')
    assert run.discard_unfinished(0) == ["rounds/0001/samples.jsonl"]
    assert [p.name for p in (tmp_path / "rounds/0001").iterdir()] == ["labels.jsonl"]


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
    from onpolicy.run.resume import retention

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

    from onpolicy.run.resume import open_run

    config = _config()
    open_run(config, tmp_path / "run").lock.release()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del saved["ref"]["logps"]  # as written by a version without that setting
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    start = open_run(config, tmp_path / "run", "resume")
    start.lock.release()
    assert "settings newer than this run take their values: ref.logps='auto'" in start.notes
    start.run.append_round({"round": 0})  # the initial evaluation: the run has begun
    changed = config.model_copy(update={"seed": 7})
    with pytest.raises(OnpolicyError, match=r"changed: seed \(0 -> 7\)"):
        open_run(changed, tmp_path / "run", "resume")


def _config(**changes):
    from onpolicy.config import Config

    return Config.model_validate(
        {"prompts": {"items": ["x"]}, "reward": [{"name": "length", "args": {"target": 1}}], **changes}
    )


def _open(path, mode="auto", **changes):
    from onpolicy.run.resume import open_run

    start = open_run(_config(**changes), path, mode)
    start.lock.release()
    return start


HOLD_THE_LOCK = """
import pathlib, sys, time
from onpolicy.run.lock import RunLock
RunLock.take(pathlib.Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_job_is_refused_while_one_holds_the_directory_and_a_dead_job_s_lock_is_taken_over(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from onpolicy.run.lock import RunDirectoryBusy
    from onpolicy.run.resume import open_run
    from tests.helpers import ROOT

    run_dir = tmp_path / "run"
    _open(run_dir)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        rounds_before = sorted(p.name for p in run_dir.iterdir())
        for mode in ("auto", "resume", "fresh"):
            with pytest.raises(
                RunDirectoryBusy, match=rf"in use by another job \(pid {holder.pid} on this machine, since 20"
            ):
                open_run(_config(), run_dir, mode)
        assert sorted(p.name for p in run_dir.iterdir()) == rounds_before  # --fresh moved nothing aside
        assert not list(tmp_path.glob("run.replaced-*"))
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock: the kernel frees it
        holder.wait()
    start = open_run(_config(), run_dir)
    assert str(os.getpid()) in (run_dir / "job.lock").read_text()
    start.lock.release()
    assert (run_dir / "job.lock").read_text() == ""


@pytest.mark.parametrize(
    ("damage", "line"),
    [
        (lambda text: text.replace('{"round": 2', '\n{"round": 2', 1), 2),  # a blank line after round 1
        (lambda text: text.replace('"round": 3', '"round": 1', 1), 3),  # rounds out of order
        (lambda text: text.replace('{"round": 2}', '{"round": 2', 1), 2),  # a line cut in the middle
    ],
)
def test_a_damaged_line_before_the_last_stops_the_job_and_changes_nothing(tmp_path, damage, line):
    run_dir = tmp_path / "run"
    run = _open(run_dir).run
    for n in (1, 2, 3, 4):
        run.write_text(f"rounds/{n:04d}/samples.jsonl", "{}\n")
        run.append_round({"round": n})
    rounds = run_dir / "rounds.jsonl"
    rounds.write_text(damage(rounds.read_text()))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(OnpolicyError, match=rf"rounds.jsonl, line {line}: .*nothing has been touched"):
        _open(run_dir)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def _save_checkpoint(run, n):
    import json

    import torch
    from safetensors.torch import save_file

    def save(folder):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"round": n}))
        save_file({"w": torch.full((64,), float(n))}, str(folder / "model.safetensors"))

    run.save_checkpoint(n, save)


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_whole_round_and_deletes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    run = _open(run_dir).run
    for n in (1, 2, 3):
        run.write_text(f"rounds/{n:04d}/samples.jsonl", f"{n}\n")
        _save_checkpoint(run, n)
        run.append_round({"round": n})
    weights = run.checkpoint(3) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # the power went before its data reached the disk
    start = _open(run_dir)
    assert start.last_complete == 2 and start.policy == run.checkpoint(2)
    assert [r["round"] for r in run.read_rounds()] == [1, 2]
    [aside] = (run_dir / "set-aside").iterdir()
    assert any(f"rounds 3-3 are in {aside}" in note for note in start.notes), start.notes
    assert (aside / "rounds.jsonl").read_text() == '{"round": 3}\n'
    assert (aside / "rounds" / "0003" / "samples.jsonl").read_text() == "3\n"
    assert (aside / "checkpoints" / "round-0003" / "config.json").exists()
    assert not (run_dir / "rounds" / "0003").exists() and not run.checkpoint(3).exists()


def test_a_run_that_completed_no_round_starts_anew_with_a_corrected_config(tmp_path):
    run_dir = tmp_path / "run"
    run = _open(run_dir, seed=1).run
    run.write_state(wandb_run_id="first-try")
    start = _open(run_dir, seed=2)  # e.g. the first model path did not load
    assert start.last_complete == -1 and start.wandb_run_id is None
    assert any("completed no round: starting it anew" in note for note in start.notes)
    assert "seed: 2" in (run_dir / "config.yaml").read_text()


def test_renames_and_new_files_reach_the_disk_with_their_directory_entries(tmp_path, monkeypatch):
    """What a power cut needs: each file fsynced before its rename, then its directory (where the entry lives).
    Watched by recording which descriptors os.fsync gets (a power cut cannot be staged here)."""
    import os
    import stat

    synced = []
    real_fsync = os.fsync

    def recording_fsync(descriptor):
        mode = os.fstat(descriptor).st_mode
        target = os.readlink(f"/proc/self/fd/{descriptor}")
        synced.append(("dir" if stat.S_ISDIR(mode) else "file", target))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    run = RunDirectory.create(tmp_path / "run", "")
    synced.clear()
    run.write_text("state.json", "{}\n")
    assert synced == [("file", str(tmp_path / "run" / ".state.json.tmp")), ("dir", str(tmp_path / "run"))]
    synced.clear()
    run.append_round({"round": 1})  # rounds.jsonl is new: its entry too
    assert synced == [("file", str(tmp_path / "run" / "rounds.jsonl")), ("dir", str(tmp_path / "run"))]
    synced.clear()
    run.save_model("final", lambda folder: (folder.mkdir(), (folder / "config.json").write_text("{}")))
    assert synced[-1] == ("dir", str(tmp_path / "run"))
    assert ("file", str(tmp_path / "run" / ".final.tmp" / "config.json")) in synced
