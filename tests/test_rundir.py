"""The run directory: never overwrites a run, appends complete rounds durably, swaps model folders atomically."""

import json
import pathlib

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


def test_a_crash_s_leftovers_are_removed_and_names_onpolicy_did_not_write_are_left_alone(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    for n in (1, 2, 3):
        run.write_text(f"rounds/{n:04d}/samples.jsonl", "{}\n")
    for n in (1, 2):
        run.checkpoint(n).mkdir(parents=True)
    (tmp_path / "checkpoints" / ".round-0003.tmp").mkdir()  # killed while saving round 3's checkpoint
    (tmp_path / "rounds" / "0003" / ".pairs.jsonl.tmp").write_text("")
    for mine in ("checkpoints/round-best", "checkpoints/round-0009-copy", "rounds/notes", "rounds/0007x"):
        (tmp_path / mine).mkdir(parents=True)
    leftovers = run.discard_unfinished(2)
    assert leftovers.removed == ("rounds/0003", "checkpoints/.round-0003.tmp") and leftovers.set_aside is None
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == ["0001", "0002", "0007x", "notes"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "round-0001", "round-0002", "round-0009-copy", "round-best"
    ]  # fmt: skip
    assert run.prune_checkpoints(lambda n: False) == [1]


def test_people_s_labels_of_an_unfinished_round_outlive_the_crash(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    run.write_text("rounds/0001/samples.jsonl", "{}\n")
    run.write_text("rounds/0001/labels.jsonl", '{"group": "p1"}\n')
    assert run.discard_unfinished(0).removed == ("rounds/0001/samples.jsonl",)
    assert [p.name for p in (tmp_path / "rounds/0001").iterdir()] == ["labels.jsonl"]


@pytest.mark.parametrize("shortened_to", [0, 1, 3])
def test_a_shortened_rounds_file_sets_the_later_rounds_aside_and_deletes_nothing(tmp_path, shortened_to):
    """rounds.jsonl cut back by an edit or a bad copy: the complete rounds above its last line are moved aside
    (with people's labels left in place for the rerun), never deleted."""
    run = RunDirectory.create(tmp_path, "")
    for n in (1, 2, 3, 4):
        run.write_text(f"rounds/{n:04d}/samples.jsonl", f"{n}\n")
        _save_checkpoint(run, n)
        run.append_round({"round": n})
    run.write_text("rounds/0004/labels.jsonl", '{"group": "p1"}\n')
    run.prune_checkpoints(lambda n: n >= 3)  # checkpoint.keep_last: 2
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "rounds.jsonl").write_text("".join(lines[:shortened_to]))
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    leftovers = run.discard_unfinished(shortened_to)
    assert leftovers.removed == () and leftovers.set_aside is not None
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    moved = {p.relative_to(leftovers.set_aside.relative_to(tmp_path)): data for p, data in after.items()
             if p.is_relative_to(leftovers.set_aside.relative_to(tmp_path))}  # fmt: skip
    later = [n for n in (1, 2, 3, 4) if n > shortened_to]
    assert sorted(moved) == sorted(
        [pathlib.Path(f"rounds/{n:04d}/samples.jsonl") for n in later]
        + [pathlib.Path("rounds/0004/labels.jsonl")]
        + [pathlib.Path(f"checkpoints/round-{n:04d}/{name}") for n in later if n >= 3 for name in CHECKPOINT_FILES]
    )
    assert all(before[path] == data for path, data in moved.items())  # moved as they were
    assert sorted(run.round_folders()) == list(range(1, shortened_to + 1)) + [4]  # round 4 keeps its labels
    assert [p.name for p in (tmp_path / "rounds/0004").iterdir()] == ["labels.jsonl"]
    assert sorted(run.checkpoint_folders()) == [n for n in (3,) if n <= shortened_to]


def test_resuming_over_a_shortened_rounds_file_says_where_the_later_rounds_went(tmp_path):
    run_dir = tmp_path / "run"
    run = _open(run_dir).run
    for n in (1, 2, 3):
        _save_checkpoint(run, n)
        run.append_round({"round": n})
    (run_dir / "rounds.jsonl").write_text('{"round": 1}\n')
    start = _open(run_dir)
    assert start.last_complete == 1
    [aside] = (run_dir / "set-aside").iterdir()
    assert any(f"set aside in {aside}, nothing deleted; continuing after round 1" in n for n in start.notes)
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["round-0002", "round-0003"]


def test_two_set_asides_in_one_second_keep_both(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    for n in (1, 2):
        run.write_text(f"rounds/{n:04d}/samples.jsonl", f"{n}\n")
        run.append_round({"round": n})
    first = run.set_aside_rounds_after(1)
    run.write_text("rounds/0002/samples.jsonl", "again\n")
    run.append_round({"round": 2})
    second = run.set_aside_rounds_after(1)
    assert first != second
    assert (first / "rounds/0002/samples.jsonl").read_text() == "2\n"
    assert (second / "rounds/0002/samples.jsonl").read_text() == "again\n"
    assert (first / "rounds.jsonl").read_text() == (second / "rounds.jsonl").read_text() == '{"round": 2}\n'


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
    from onpolicy.components import checkpoint_layout
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
    keep = retention(newest, config.checkpoint, checkpoint_layout(config))
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

    from onpolicy.components import checkpoint_layout
    from onpolicy.run.resume import open_run

    config = _config()
    open_run(config, tmp_path / "run", checkpoint_layout(config)).lock.release()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del saved["ref"]["logps"]  # as written by a version without that setting
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    start = open_run(config, tmp_path / "run", checkpoint_layout(config), "resume")
    start.lock.release()
    assert "settings newer than this run take their values: ref.logps='auto'" in start.notes
    start.run.append_round({"round": 0})  # the initial evaluation: the run has begun
    changed = config.model_copy(update={"seed": 7})
    with pytest.raises(OnpolicyError, match=r"changed: seed \(0 -> 7\)"):
        open_run(changed, tmp_path / "run", checkpoint_layout(changed), "resume")


def _config(**changes):
    from onpolicy.config import Config

    return Config.model_validate(
        {"prompts": {"items": ["x"]}, "reward": [{"name": "length", "args": {"target": 1}}], **changes}
    )


def _open(path, mode="auto", **changes):
    from onpolicy.components import checkpoint_layout
    from onpolicy.run.resume import open_run

    config = _config(**changes)
    start = open_run(config, path, checkpoint_layout(config), mode)
    start.lock.release()
    return start


@pytest.mark.parametrize("given", [".", "..", "./", "sub/..", "sub/../..", "../run"])
def test_fresh_never_moves_the_folder_it_is_run_from_nor_one_above_it(tmp_path, monkeypatch, given):
    """`--run-dir . --fresh` (and `..`) ended in a traceback (`Path('.').with_name`); moving them would pull the
    working folder from under the user and the new run."""
    (tmp_path / "run" / "sub").mkdir(parents=True)
    RunDirectory.create(tmp_path, "rounds: 1\n")  # a run in the folder above and one in the working folder
    RunDirectory.create(tmp_path / "run", "rounds: 1\n")
    monkeypatch.chdir(tmp_path / "run")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OnpolicyError, match=r"--fresh would move .* the folder you are working in or one above it"):
        _open(pathlib.Path(given), "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_fresh_moves_a_run_named_with_dots_aside_by_its_own_name(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    _open(pathlib.Path("../run"))
    start = _open(pathlib.Path("../run/."), "fresh")
    (aside,) = tmp_path.glob("run.replaced-*")
    assert (aside / "config.yaml").is_file() and start.run.path == tmp_path / "run"
    assert RunDirectory.holds_run(tmp_path / "run") and f"is now in {aside}" in start.notes[0]


def test_fresh_never_moves_what_the_new_run_reads(tmp_path):
    _open(tmp_path / "run")
    (tmp_path / "run" / "prompts.txt").write_text("x\n")
    with pytest.raises(OnpolicyError, match=r"with it prompts.path \(.*prompts.txt\), which the new run reads"):
        _open(tmp_path / "run", "fresh", prompts={"path": str(tmp_path / "run" / "prompts.txt")})
    assert not list(tmp_path.glob("run.replaced-*"))


def test_text_a_round_made_with_a_lone_surrogate_is_written_and_read_back_as_it_was(tmp_path):
    """Inputs with one are refused before round 1; a judge's answer quoted in a failure can still hold one (a JSON
    "\\ud800" escape), and writing the round's files must not fail once its work is done."""
    from onpolicy.types import PromptRecord, Sample, SampleGroup, ScoredGroup

    run = RunDirectory.create(tmp_path / "run", "")
    record = PromptRecord("q1", ({"role": "user", "content": "hi"},))
    group = SampleGroup(record, (1,), (Sample("answer", (2,), (-0.5,), "stop"),))
    run.write_samples(1, [ScoredGroup(group, (None,), ("the judge answered 'half \ud800 pair', no verdict",))])
    (row,) = run.read_jsonl("rounds/0001/samples.jsonl")
    assert row["failure"] == "the judge answered 'half \ud800 pair', no verdict"
    run.append_round({"round": 1, "reward/\udcff": 1.0})
    assert run.read_rounds() == [{"round": 1, "reward/\udcff": 1.0}]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("state.json", "{not json", r"state.json: not valid JSON \(Expecting property name.*delete it: the run then"),
        ("state.json", "[1, 2]", r"state.json: holds a JSON list, not the object onpolicy wrote"),
        ("state.json", "[" * 3000 + "]" * 3000, r"state.json: nested deeper than 100 levels"),
        ("state.json", b'{"a": "\xff"}', r"state.json is not UTF-8 text \(byte 7\)"),
        ("config.yaml", "a: [b", r"config.yaml is not YAML \(.*\); it is the run's saved config: restore it, or"),
        ("config.yaml", "a: &a [*a]", r"config.yaml: holds itself"),
        ("config.yaml", "- 1\n", r"config.yaml holds a list, not a config"),
        ("rounds/0000/eval.jsonl", '{"a": 1}\n[2]\n', r"eval.jsonl, line 2: holds a JSON list, not the object"),
        ("rounds/0000/eval.jsonl", '{"a": 1\n', r"eval.jsonl, line 1: not valid JSON"),
    ],
)
def test_a_run_s_own_file_edited_into_something_else_stops_with_one_line_naming_it(tmp_path, name, content, message):
    """The files a resume (and `onpolicy report`) reads besides rounds.jsonl: hand-edited, they ended in a
    traceback."""
    from onpolicy.run.report import load_run

    run = RunDirectory.create(tmp_path / "run", "rounds: 1\n")
    (run.path / name).parent.mkdir(parents=True, exist_ok=True)
    (run.path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    reads = {"state.json": run.read_state, "config.yaml": run.read_config}
    with pytest.raises(OnpolicyError, match=message):
        reads.get(name, lambda: run.read_jsonl(name))()
    if name == "config.yaml":
        with pytest.raises(OnpolicyError, match=message):
            load_run(run.path)
        with pytest.raises(OnpolicyError, match=message):
            _open(run.path)  # a resume compares it with the config given


def test_a_lock_file_holding_anything_but_its_holder_names_no_holder(tmp_path):
    import os

    from onpolicy.run.lock import _read_holder

    for content in ("[1]", "[" * 3000, '"text"', '{"pid": 1'):
        (tmp_path / "job.lock").write_text(content)
        descriptor = os.open(tmp_path / "job.lock", os.O_RDONLY)
        try:
            assert _read_holder(descriptor) == {}
        finally:
            os.close(descriptor)


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

    from onpolicy.components import checkpoint_layout
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
                open_run(_config(), run_dir, checkpoint_layout(_config()), mode)
        assert sorted(p.name for p in run_dir.iterdir()) == rounds_before  # --fresh moved nothing aside
        assert not list(tmp_path.glob("run.replaced-*"))
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock: the kernel frees it
        holder.wait()
    start = open_run(_config(), run_dir, checkpoint_layout(_config()))
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


CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _save_checkpoint(run, n):
    import json

    import torch
    from safetensors.torch import save_file

    def save(folder):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"round": n}))
        for name in ("tokenizer_config.json", "tokenizer.json"):
            (folder / name).write_text("{}")
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


def test_labels_kept_for_rounds_to_run_again_are_not_set_aside_again_on_the_next_resume(tmp_path):
    """A fallback past two damaged checkpoints leaves people's labels in rounds 2 and 3 for the reruns: the next
    resume (the job stopped before round 2 ended) takes them for what they are, not for lost rounds."""
    run_dir = tmp_path / "run"
    run = _open(run_dir).run
    for n in (1, 2, 3):
        run.write_text(f"rounds/{n:04d}/samples.jsonl", f"{n}\n")
        run.write_text(f"rounds/{n:04d}/labels.jsonl", f'{{"group": "p{n}"}}\n')
        _save_checkpoint(run, n)
        run.append_round({"round": n})
    for n in (2, 3):
        (run.checkpoint(n) / "config.json").unlink()
    first = _open(run_dir)
    assert first.last_complete == 1 and any("rounds 2-3 are in" in note for note in first.notes)
    second = _open(run_dir)
    assert second.last_complete == 1 and second.notes == (), second.notes
    assert len(list((run_dir / "set-aside").iterdir())) == 1
    for n in (2, 3):
        assert (run_dir / f"rounds/{n:04d}/labels.jsonl").read_text() == f'{{"group": "p{n}"}}\n'


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
    import threading

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
    writer = f"{os.getpid()}-{threading.get_ident()}"  # each writer's temporary file is its own
    assert synced == [("file", str(tmp_path / "run" / f".state.json.{writer}.tmp")), ("dir", str(tmp_path / "run"))]
    synced.clear()
    run.append_round({"round": 1})  # rounds.jsonl is new: its entry too
    assert synced == [("file", str(tmp_path / "run" / "rounds.jsonl")), ("dir", str(tmp_path / "run"))]
    synced.clear()
    def save(folder):
        (folder / "adapter").mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "adapter" / "adapter_config.json").write_text("{}")

    run.save_model("final", save)
    tmp = tmp_path / "run" / ".final.tmp"
    assert synced == [
        ("file", str(tmp / "config.json")),
        ("file", str(tmp / "adapter" / "adapter_config.json")),
        ("dir", str(tmp / "adapter")),  # a subfolder's entries too
        ("dir", str(tmp)),
        ("dir", str(tmp_path / "run")),  # the rename into place
    ]
    synced.clear()
    run.append_round({"round": 2})
    run.set_aside_rounds_after(1)
    [aside] = (tmp_path / "run" / "set-aside").iterdir()
    assert ("file", str(aside / f".rounds.jsonl.{writer}.tmp")) in synced and ("dir", str(aside)) in synced


class Killed(BaseException):
    """The process dying at an injected point."""


def _model_folder(version):
    def save(folder):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"version": version}))
        (folder / "model.safetensors").write_bytes(_safetensors(version))
        for name in ("tokenizer_config.json", "tokenizer.json"):
            (folder / name).write_text("{}")

    return save


def _safetensors(version):
    import torch
    from safetensors.torch import save

    return save({"w": torch.full((8,), float(version))})


def test_final_is_swapped_in_one_step_so_a_kill_leaves_the_old_or_the_new_whole(tmp_path, monkeypatch):
    from onpolicy.run import files

    run = RunDirectory.create(tmp_path, "")
    run.save_model("final", _model_folder(1))
    real_fsync_directory = files.fsync_directory

    def killed_after_the_swap(path):
        if path == tmp_path:
            raise Killed
        real_fsync_directory(path)

    monkeypatch.setattr(files, "fsync_directory", killed_after_the_swap)
    with pytest.raises(Killed):
        run.save_model("final", _model_folder(2))
    monkeypatch.undo()
    assert json.loads((tmp_path / "final" / "config.json").read_text()) == {"version": 2}
    assert (tmp_path / "final" / "model.safetensors").read_bytes() == _safetensors(2)
    assert run.discard_unfinished(0).removed == (".final.tmp",)  # the old final/, swapped out


def test_where_folders_cannot_be_swapped_a_kill_between_the_renames_leaves_no_final_which_resume_rebuilds(
    tmp_path, monkeypatch
):
    import os

    from onpolicy.run import files

    run = RunDirectory.create(tmp_path, "")
    run.save_final(1, _model_folder(1))
    assert run.final_is_round(1)
    monkeypatch.setattr(files, "_exchange", lambda first, second: False)
    real_rename = os.rename

    def killed_between_the_renames(source, target):
        if pathlib.Path(source).name == ".final.tmp":
            raise Killed
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", killed_between_the_renames)
    with pytest.raises(Killed):
        run.save_final(2, _model_folder(2))
    monkeypatch.undo()
    assert not (tmp_path / "final").exists() and not run.final_is_round(1) and not run.final_is_round(2)
    assert run.discard_unfinished(0).removed == (".final.old.tmp", ".final.tmp")


@pytest.mark.parametrize("left", ["the previous final", "a half-deleted final", "no final"])
def test_a_job_killed_before_its_last_final_was_in_place_gets_it_from_the_last_checkpoint(
    tiny_model_path, tmp_path, left
):
    import shutil

    from onpolicy.loop import run_job

    run_dir = tmp_path / "run"
    run = _open(run_dir, rounds=3, model={"path": str(tiny_model_path)}).run
    for n in (1, 2, 3):
        run.save_checkpoint(n, lambda folder: shutil.copytree(tiny_model_path, folder))
        (run.checkpoint(n) / "round.txt").write_text(str(n))
        run.append_round({"round": n})
    run.save_final(2, lambda folder: shutil.copytree(run.checkpoint(2), folder))  # a 2-round run, extended to 3
    if left == "a half-deleted final":
        run.write_state(final_round=3)
        (run_dir / "final" / "model.safetensors").unlink()
    elif left == "no final":
        shutil.rmtree(run_dir / "final")
    lines = []
    assert run_job(_config(rounds=3, model={"path": str(tiny_model_path)}), run_dir, echo=lines.append) == []
    assert lines[-1] == f"{run_dir} has all 3 rounds already (raise rounds= to continue it)"
    assert (run_dir / "final" / "round.txt").read_text() == "3" and run.final_is_round(3)
    weights = "model.safetensors"
    assert (run_dir / "final" / weights).read_bytes() == (run.checkpoint(3) / weights).read_bytes()


def _sharded_model_folder(folder):
    import torch
    from safetensors.torch import save_file

    _model_folder(0)(folder)
    (folder / "model.safetensors").unlink()
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        save_file({shard[:11]: torch.zeros(4)}, str(folder / shard))
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    save_file({"lora": torch.zeros(2)}, str(folder / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize(
    "damage",
    ["tokenizer_config.json", "tokenizer.json", "model-00002-of-00002.safetensors", "adapter/adapter_model.safetensors",
     "adapter/adapter_config.json", "model.safetensors.index.json"],
)  # fmt: skip
def test_a_checkpoint_is_whole_only_with_everything_a_resume_loads(tmp_path, damage):
    from onpolicy.run.model_folders import is_whole_model_folder, missing_parts

    _sharded_model_folder(tmp_path / "model")
    assert is_whole_model_folder(tmp_path / "model", adapters=("adapter",))
    (tmp_path / "model" / damage).unlink()
    assert not is_whole_model_folder(tmp_path / "model", adapters=("adapter",))
    assert missing_parts(tmp_path / "model", adapters=("adapter",))
    if damage.startswith("adapter/"):
        assert is_whole_model_folder(tmp_path / "model")  # full fine-tuning does not load an adapter


def test_a_resume_falls_back_past_a_checkpoint_without_its_tokenizer(tmp_path):
    run_dir = tmp_path / "run"
    run = _open(run_dir).run
    for n in (1, 2):
        _save_checkpoint(run, n)
        run.append_round({"round": n})
    (run.checkpoint(2) / "tokenizer_config.json").unlink()
    start = _open(run_dir)
    assert start.last_complete == 1 and start.policy == run.checkpoint(1)
    [aside] = (run_dir / "set-aside").iterdir()
    assert (aside / "checkpoints" / "round-0002" / "tokenizer.json").exists()


def test_a_lora_resume_falls_back_past_a_checkpoint_without_its_adapter(tmp_path):
    run_dir = tmp_path / "run"
    lora = {"lora": {"r": 4}}
    run = _open(run_dir, train=lora).run
    for n in (1, 2):
        run.save_checkpoint(n, _sharded_model_folder)
        run.append_round({"round": n})
    (run.checkpoint(2) / "adapter" / "adapter_config.json").unlink()
    assert _open(run_dir, train=lora).last_complete == 1


def _full_disk_at(monkeypatch, where):
    """Make the disk fill up: os.write writes half its bytes and fails, or os.fsync fails (what a thin volume or
    NFS reports when the data cannot be placed)."""
    import errno
    import os

    real_write = os.write

    def half_written(descriptor, data):
        real_write(descriptor, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def unsynced(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "write":
        monkeypatch.setattr(os, "write", half_written)
    else:
        monkeypatch.setattr(os, "fsync", unsynced)


@pytest.mark.parametrize(
    ("record", "where"),
    [(record, "fsync") for record in ("rounds.jsonl", "state.json", "samples.jsonl", "labels.jsonl")]
    + [("rounds.jsonl", "write"), ("labels.jsonl", "write")],  # appends: half a line reaches the file
)
def test_a_full_disk_while_writing_a_record_says_so_in_one_line_and_leaves_the_file_as_it_was(
    tmp_path, monkeypatch, record, where
):
    from onpolicy.human.labels import Label, LabelBook
    from onpolicy.run.files import NoSpace

    run = RunDirectory.create(tmp_path, "")
    book = LabelBook(tmp_path / "rounds" / "0002" / "labels.jsonl")
    writes = {
        "rounds.jsonl": lambda: run.append_round({"round": 2, "reward/mean": 0.5}),
        "state.json": lambda: run.write_state(wandb_run_id="abc"),
        "samples.jsonl": lambda: run.write_jsonl("rounds/0002/samples.jsonl", [{"sample": 0}] * 100),
        "labels.jsonl": lambda: book.add(Label("p1", 4, 0, 1, "ann", answers="d")),
    }
    path = {"samples.jsonl": "rounds/0002/samples.jsonl", "labels.jsonl": "rounds/0002/labels.jsonl"}
    path = path.get(record, record)
    run.append_round({"round": 1})
    run.write_state(wandb_run_id="first")
    run.write_jsonl("rounds/0002/samples.jsonl", [{"sample": 0}])
    book.add(Label("p0", 4, 0, 1, "ann", answers="d"))
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    _full_disk_at(monkeypatch, where)
    with pytest.raises(NoSpace, match=rf"^no space left writing {tmp_path / path} \(No space left on device; .* GiB"):
        writes[record]()
    monkeypatch.undo()
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_lock_taken_on_a_run_that_fresh_moved_away_meanwhile_is_taken_again_on_the_new_run(tmp_path, monkeypatch):
    import fcntl
    import os

    from onpolicy.run import lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real_lock_file = lock.lock_file
    moved = []

    def fresh_moves_the_run_first(descriptor, path, wait):
        if not moved:  # between our open and our flock, another job's --fresh moves the run aside
            run_dir.rename(tmp_path / "run.replaced")
            run_dir.mkdir()
            moved.append(True)
        return real_lock_file(descriptor, path, wait)

    monkeypatch.setattr(lock, "lock_file", fresh_moves_the_run_first)
    held = lock.RunLock.take(run_dir)
    try:
        assert os.fstat(held._descriptor).st_ino == os.stat(run_dir / "job.lock").st_ino
        old = os.open(tmp_path / "run.replaced" / "job.lock", os.O_RDWR)
        try:
            fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old run's lock is free: we hold none of it
        finally:
            os.close(old)
    finally:
        held.release()


def test_a_file_system_without_locks_is_refused_with_what_to_do(tmp_path, monkeypatch):
    import errno
    import fcntl

    from onpolicy.run.lock import RunLock

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OnpolicyError, match=r"job.lock: its file system does not support file locks \(No locks"):
        RunLock.take(tmp_path / "run")


def test_the_cli_s_last_word_on_a_stopped_job_reads_rounds_jsonl_without_repairing_it(tmp_path):
    """By then the job's lock is released: a torn last line is for the next job (under its lock) to cut."""
    from onpolicy.cli import _complete_rounds

    run = RunDirectory.create(tmp_path / "run", "")
    run.append_round({"round": 1})
    with open(tmp_path / "run" / "rounds.jsonl", "a") as f:
        f.write('{"round": 2, "rew')
    before = (tmp_path / "run" / "rounds.jsonl").read_bytes()
    assert _complete_rounds(tmp_path / "run") == f"rounds up to 1 are complete in {tmp_path / 'run'}"
    assert (tmp_path / "run" / "rounds.jsonl").read_bytes() == before
