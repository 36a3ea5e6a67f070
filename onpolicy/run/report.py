"""`onpolicy report RUN_DIR... --out DIR`: what a set of runs did, drawn and tabulated, without W&B.

The runs are grouped into variants by the settings that differ between them (the seed, `wandb.*`,
`checkpoint.*`, `rounds` and the run's paths aside): runs that differ only by seed are one variant, drawn as its
mean with a band from the lowest to the highest seed. For each metric a PNG holds two panels, the metric
against the round and against wall-clock minutes (the rounds' `perf/round_total_s` added up). `summary.md` and
`summary.html` hold one row per variant with the values of the last round all its seeds have; `report.json`
holds every number drawn.

Run directories are only read: a job may still be writing one (a torn last line of its `rounds.jsonl` is left
alone and not drawn).
"""

from __future__ import annotations

import dataclasses
import html
import json
import pathlib
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from onpolicy.errors import OnpolicyError
from onpolicy.run.rundir import RunDirectory

# what a report draws unless told: the ones a run logged, in this order, every eval/ metric after reward/mean
DEFAULT_METRICS = (
    "reward/mean",
    "eval/*",
    "pairs/margin_mean",
    "pairs/kept",
    "train/loss",
    "train/reward_accuracy",
    "gen/mean_length",
    "pairs/length_ratio",
    "pairs/shortcut_gap",
    "perf/generate_s",
    "perf/train_s",
    "perf/round_total_s",
)
# settings that do not make a run another variant
_NOT_A_VARIANT = ("seed", "rounds", "wandb", "checkpoint", "model.cache_dir", "generation.server.sync_dir")


@dataclasses.dataclass(frozen=True)
class Run:
    path: pathlib.Path
    settings: dict[str, Any]  # the config, flattened to dotted keys
    rounds: list[dict[str, Any]]  # the complete training rounds' records (round 0, the initial evaluation, too)

    @property
    def seed(self) -> int:
        return int(self.settings.get("seed", 0))


@dataclasses.dataclass(frozen=True)
class Curve:
    """One variant's metric over rounds: the mean over its seeds, their lowest and highest, wall-clock minutes."""

    rounds: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    minutes: list[float]


def load_run(path: pathlib.Path) -> Run:
    if not RunDirectory.holds_run(path):
        raise OnpolicyError(f"{path} holds no run (no config.yaml)")
    run = RunDirectory(path)
    return Run(path, dict(_flatten(run.read_config())), run.read_rounds(repair=False))


def variants(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """The runs grouped by the settings that tell them apart, each group named by those settings. Runs that no
    such setting tells apart (the seeds of one grid point) are one variant, named by its folder when it is a lone
    run."""
    differing = sorted(
        key
        for key in {k for run in runs for k in run.settings}
        if not key.startswith(_NOT_A_VARIANT) and len({repr(run.settings.get(key)) for run in runs}) > 1
    )
    if not differing:
        return {runs[0].path.name if len(runs) == 1 else "all runs": list(runs)}
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(", ".join(f"{key}={run.settings.get(key)}" for key in differing), []).append(run)
    return groups


def curve(runs: Sequence[Run], metric: str) -> Curve | None:
    """`metric` over the rounds every run of a variant has, across their seeds; None when none logged it."""
    per_run = [_series(run, metric) for run in runs]
    per_run = [series for series in per_run if series]
    if not per_run:
        return None
    shared = sorted(set.intersection(*(set(series) for series in per_run)))
    values = [[series[n][0] for series in per_run] for n in shared]
    minutes = [statistics.fmean(series[n][1] for series in per_run) for n in shared]
    return Curve(shared, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values],
                 minutes)  # fmt: skip


def report(paths: Sequence[pathlib.Path], out: pathlib.Path, metrics: Sequence[str] = DEFAULT_METRICS) -> list[str]:
    """Draw and tabulate the runs in `paths` into `out`; returns the files written."""
    runs = [load_run(path) for path in paths]
    groups = variants(runs)
    chosen = _metrics(runs, metrics)
    if not chosen:
        raise OnpolicyError(f"none of the metrics {', '.join(metrics)} is in these runs' rounds.jsonl")
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, dict[str, dict[str, list[float]]]] = {}
    written = []
    for metric in chosen:
        curves = {label: c for label, group in groups.items() if (c := curve(group, metric)) is not None}
        data[metric] = {label: dataclasses.asdict(c) for label, c in curves.items()}
        name = metric.replace("/", "_") + ".png"
        _draw(metric, curves, out / name)
        written.append(name)
    (out / "report.json").write_text(json.dumps({"variants": {k: [str(r.path) for r in g] for k, g in groups.items()},
                                                 "metrics": data}, indent=1))  # fmt: skip
    rows = _summary_rows(groups, chosen)
    (out / "summary.md").write_text(_markdown(rows, written))
    (out / "summary.html").write_text(_html(rows, written))
    return [*written, "report.json", "summary.md", "summary.html"]


def _series(run: Run, metric: str) -> dict[int, tuple[float, float]]:
    """round -> (value, wall-clock minutes at the round's end)."""
    series, minutes = {}, 0.0
    for record in run.rounds:
        minutes += _minutes(record)
        value = record.get(metric)
        if isinstance(value, (int, float)) and value == value:  # NaN (an eval metric with no answer) is not drawn
            series[int(record["round"])] = (float(value), minutes)
    return series


def _minutes(record: Mapping[str, Any]) -> float:
    """What a round took, in minutes (round 0, the initial evaluation, its evaluation)."""
    return float(record.get("perf/round_total_s", record.get("perf/eval_s", 0.0))) / 60


def _metrics(runs: Sequence[Run], wanted: Sequence[str]) -> list[str]:
    logged = {key for run in runs for record in run.rounds for key in record if key != "round"}
    chosen = []
    for metric in wanted:
        matches = sorted(k for k in logged if k.startswith(metric[:-1])) if metric.endswith("*") else [metric]
        chosen += [m for m in matches if m in logged and m not in chosen]
    return chosen


def _draw(metric: str, curves: Mapping[str, Curve], file: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_round, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, c in curves.items():
        (line,) = by_round.plot(c.rounds, c.mean, marker="o", label=label)
        by_time.plot(c.minutes, c.mean, marker="o", color=line.get_color())
        if c.low != c.high:  # several seeds: their spread
            by_round.fill_between(c.rounds, c.low, c.high, color=line.get_color(), alpha=0.2)
            by_time.fill_between(c.minutes, c.low, c.high, color=line.get_color(), alpha=0.2)
    by_round.set(xlabel="round", ylabel=metric, title=f"{metric} by round")
    by_round.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    by_time.set(xlabel="wall-clock minutes", title=f"{metric} by time")
    for axes in (by_round, by_time):
        axes.grid(alpha=0.3)
    by_round.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(file, dpi=100)
    plt.close(figure)


def _summary_rows(groups: Mapping[str, Sequence[Run]], metrics: Sequence[str]) -> list[list[str]]:
    header = ["variant", "seeds", "rounds", "minutes", *metrics]
    rows = [header]
    for label, runs in groups.items():
        # the last round every seed has (as the curves end): seeds of a sweep still running may be rounds apart
        shared = min((int(run.rounds[-1]["round"]) for run in runs if run.rounds), default=0)
        last = [record for run in runs for record in run.rounds if record["round"] == shared]
        minutes = statistics.fmean(sum(_minutes(r) for r in run.rounds if r["round"] <= shared) for run in runs)
        cells = [label, str(len(runs)), str(shared), f"{minutes:.1f}"]
        for metric in metrics:
            values = [r[metric] for r in last if isinstance(r.get(metric), (int, float))]
            cells.append(_number(statistics.fmean(values), values) if values else "")
        rows.append(cells)
    return rows


def _number(mean: float, values: Sequence[float]) -> str:
    spread = f" ± {statistics.pstdev(values):.3g}" if len(values) > 1 else ""
    return f"{mean:.4g}{spread}"


def _markdown(rows: Sequence[Sequence[str]], images: Iterable[str]) -> str:
    lines = ["# Runs", "", "The last round all seeds of a variant have (mean ± standard deviation over them).", ""]
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]]
    lines += ["", *(f"![{image}]({image})" for image in images), ""]
    return "\n".join(lines)


def _html(rows: Sequence[Sequence[str]], images: Iterable[str]) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<{tag}>{html.escape(cell)}</{tag}>" for cell in row) + "</tr>"
        for tag, row in (("th" if i == 0 else "td", row) for i, row in enumerate(rows))
    )
    pictures = "".join(f'<p><img src="{html.escape(image)}" alt="{html.escape(image)}"></p>' for image in images)
    return (
        "<!doctype html><meta charset=utf-8><title>onpolicy runs</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        f"padding:4px 8px}}</style><h1>Runs</h1><table>{cells}</table>{pictures}"
    )


def _flatten(data: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), data
