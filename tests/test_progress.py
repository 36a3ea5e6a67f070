"""Progress of a long phase: lines when the output is not a terminal, status.json always, vLLM's bar hook."""

import io
import json

from onpolicy.run.progress import Progress, engine_bar
from onpolicy.run.rundir import RunDirectory


def test_a_phase_reports_lines_and_status_as_work_finishes(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    lines = []
    progress = Progress(run, lines.append, interactive=False, every_s=1e-9, stream=io.StringIO())
    with progress.phase(2, "score", total=3, unit="groups") as phase:
        status = json.loads((tmp_path / "status.json").read_text())
        assert (status["round"], status["phase"]) == (2, "score") and "done" not in status
        for _ in range(3):
            phase.advance()
    assert [line.split(",")[0] for line in lines] == [
        "  round 2 score: 1/3 groups",
        "  round 2 score: 2/3 groups",
        "  round 2 score: 3/3 groups",
    ]
    assert "left" in lines[0] and "left" not in lines[-1]
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["done"], status["total"], status["unit"]) == (3, 3, "groups")
    assert status["progress_time"] >= status["time"] - 1


def test_lines_are_spaced_by_the_interval_and_a_terminal_gets_a_bar_instead(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    lines = []
    with Progress(run, lines.append, interactive=False, every_s=3600, stream=io.StringIO()).phase(1, "train") as phase:
        phase.total = 5  # known once the trainer has counted its steps
        for _ in range(5):
            phase.advance()
    assert lines == []  # less than an hour passed
    terminal = io.StringIO()
    with Progress(run, lines.append, interactive=True, every_s=1e-9, stream=terminal).phase(1, "generate", 2) as phase:
        phase.advance(2)
    assert lines == []  # the bar shows it, not lines
    assert json.loads((tmp_path / "status.json").read_text())["done"] == 2


def test_vllm_s_bar_hook_counts_the_samples_of_finished_requests_and_an_interval_of_0_prints_no_lines(tmp_path):
    run = RunDirectory.create(tmp_path, "")
    lines = []
    with Progress(run, lines.append, False, 0, io.StringIO()).phase(1, "generate", 16, "samples") as phase:
        bar = engine_bar(phase)(total=16, desc="Processed prompts", dynamic_ncols=True, postfix="")
        bar.update(1)  # vLLM adds a finished request's samples: one
        bar.update(8)  # (a request of n=8 would count 8)
        assert bar.format_dict["elapsed"] > 0
        bar.close()
        assert engine_bar(phase)([1, 2], desc="Adding requests") == [1, 2]  # passed through, not counted
    assert phase.done == 9 and bar.n == 9
    assert engine_bar(None) is False
    assert lines == []  # progress_every_s: 0


def test_work_finishing_on_several_threads_at_once_is_counted_and_written_without_a_clash(tmp_path, monkeypatch):
    """One thread per generation server advances the same phase: each advance counts, and status writes that
    coincide never share a temporary file (a clash aborted the phase)."""
    import threading

    import onpolicy.run.progress as progress_module

    monkeypatch.setattr(progress_module, "STATUS_EVERY_S", 0.0)  # every advance writes status.json
    run = RunDirectory.create(tmp_path / "run", "")
    progress = Progress(run, echo=lambda line: None, interactive=False, every_s=0, stream=io.StringIO())
    failures = []
    with progress.phase(1, "generate", total=8 * 50, unit="samples") as counter:

        def server_thread():
            try:
                for _ in range(50):
                    counter.advance()
            except Exception as exc:
                failures.append(exc)

        threads = [threading.Thread(target=server_thread) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == [] and counter.done == 400
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert (status["done"], status["total"]) == (400, 400)
    assert not list((tmp_path / "run").glob(".*.tmp"))
