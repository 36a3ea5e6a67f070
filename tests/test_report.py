"""`onpolicy report`: variants told apart by their settings, seeds drawn as bands, numbers as the runs logged."""

import json

import pytest

from onpolicy.cli import main
from onpolicy.config import Config
from onpolicy.run.rundir import RunDirectory

PNG = b"\x89PNG\r\n\x1a\n"


def _run(tmp_path, name, beta, seed, rewards, minutes_per_round=1.0):
    config = Config.model_validate(
        {"prompts": {"items": ["hi"]}, "reward": [{"name": "length", "args": {"target": 3}}], "seed": seed,
         "train": {"beta": beta}}
    )  # fmt: skip
    run = RunDirectory.create(tmp_path / name, config.to_yaml())
    run.append_round({"round": 0, "eval/name_rate": 0.0, "perf/eval_s": 6.0})
    for n, reward in enumerate(rewards, start=1):
        run.append_round(
            {
                "round": n,
                "reward/mean": reward,
                "eval/name_rate": reward / 2,
                "perf/round_total_s": 60 * minutes_per_round,
            }
        )
    return run.path


def test_runs_become_variants_with_seed_bands_plots_and_a_summary(tmp_path, capsys):
    runs = [
        _run(tmp_path, "a0", 0.1, 0, [0.2, 0.4, 0.6]),
        _run(tmp_path, "a1", 0.1, 1, [0.4, 0.6, 1.0]),
        _run(tmp_path, "b0", 0.5, 0, [0.1, 0.1, 0.2], minutes_per_round=2.0),
    ]
    with open(runs[2] / "rounds.jsonl", "a") as f:
        f.write('{"round": 4, "reward/me')  # a job still appending: not drawn, not repaired
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    assert "3 run(s) ->" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    assert sorted(data["variants"]) == ["train.beta=0.1", "train.beta=0.5"]
    reward = data["metrics"]["reward/mean"]["train.beta=0.1"]
    assert reward["rounds"] == [1, 2, 3]
    assert reward["mean"] == pytest.approx([0.3, 0.5, 0.8])
    assert (reward["low"], reward["high"]) == ([0.2, 0.4, 0.6], [0.4, 0.6, 1.0])
    assert reward["minutes"] == pytest.approx([1.1, 2.1, 3.1])  # the initial evaluation's 6 s come first
    assert data["metrics"]["reward/mean"]["train.beta=0.5"]["minutes"] == pytest.approx([2.1, 4.1, 6.1])
    assert data["metrics"]["eval/name_rate"]["train.beta=0.1"]["rounds"] == [0, 1, 2, 3]
    for name in ("reward_mean.png", "eval_name_rate.png", "perf_round_total_s.png"):
        assert (out / name).read_bytes().startswith(PNG)
    summary = (out / "summary.md").read_text()
    assert "| train.beta=0.1 | 2 | 3 | 3.1 | 0.8 ± 0.2 | 0.4 ± 0.1 | 60 ± 0 |" in summary, summary
    assert "| train.beta=0.5 | 1 | 3 | 6.1 | 0.2 | 0.1 | 120 |" in summary, summary
    assert "<td>train.beta=0.1</td>" in (out / "summary.html").read_text()
    assert (runs[2] / "rounds.jsonl").read_text().endswith('"reward/me')


def test_seeds_of_one_setting_are_one_variant_tabulated_at_the_last_round_all_of_them_have(tmp_path):
    """A sweep stopped (or reported) midway: its first grid point's seeds, one a round behind the other."""
    runs = [_run(tmp_path, "s0", 0.1, 0, [0.2, 0.4, 0.6]), _run(tmp_path, "s1", 0.1, 1, [0.4, 0.6])]
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "report")]) == 0
    data = json.loads((tmp_path / "report/report.json").read_text())
    assert data["variants"] == {"all runs": list(map(str, runs))}
    assert data["metrics"]["reward/mean"]["all runs"]["rounds"] == [1, 2]
    summary = (tmp_path / "report/summary.md").read_text()
    assert "| all runs | 2 | 2 | 2.1 | 0.5 ± 0.1 | 0.25 ± 0.05 | 60 ± 0 |" in summary, summary
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "alone")]) == 0
    assert list(json.loads((tmp_path / "alone/report.json").read_text())["variants"]) == ["s0"]


def test_a_folder_without_a_run_or_metrics_nobody_logged_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "holds no run" in capsys.readouterr().err
    run = _run(tmp_path, "a", 0.1, 0, [0.5])
    assert main(["report", str(run), "--out", str(tmp_path / "out"), "--metrics", "kl/nothing"]) == 2
    assert "none of the metrics kl/nothing" in capsys.readouterr().err


def test_the_graded_benchmark_s_curves_are_runs_the_report_draws_and_its_ratios_read_them(tmp_path):
    from benchmarks.bench_vs_trl_graded import METRIC, ratios, write_curve
    from onpolicy.run.report import report

    ours = [{"seconds": 10.0, METRIC: 0.2}, {"seconds": 40.0, METRIC: 0.6}, {"seconds": 70.0, METRIC: 0.9}]
    theirs = [{"seconds": 5.0, METRIC: 0.2}, {"seconds": 100.0, METRIC: 0.5}, {"seconds": 200.0, METRIC: 0.6}]
    write_curve(tmp_path / "onpolicy", "onpolicy", ours)
    write_curve(tmp_path / "trl", "TRL OnlineDPOTrainer", theirs)
    report([tmp_path / "onpolicy", tmp_path / "trl"], tmp_path / "report", [METRIC])
    drawn = json.loads((tmp_path / "report" / "report.json").read_text())["metrics"][METRIC]
    assert drawn["trainer=TRL OnlineDPOTrainer"]["mean"] == [0.2, 0.5, 0.6]
    assert drawn["trainer=onpolicy"]["minutes"] == pytest.approx([10 / 60, 40 / 60, 70 / 60])
    assert ratios(ours, theirs) == [
        "TRL's final eval reward 0.600, first reached after 200 s: onpolicy reached it after 40 s, 5.0x sooner",
        "half of onpolicy's gain, eval reward 0.550, reached by onpolicy after 40 s: TRL reached it after 200 s, "
        "5.0x later",
    ]
