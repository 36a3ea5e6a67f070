"""A round's metrics, namespaced: gen/, reward/, pairs/, train/, perf/. Pure functions of the round's records."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from onpolicy.types import Pair, PairingResult, SampleGroup, ScoredGroup, UpdateResult


def generation_metrics(groups: Sequence[SampleGroup], skipped_long: int) -> dict[str, float]:
    samples = [s for g in groups for s in g.samples]
    lengths = [len(s.token_ids) for s in samples]
    return {
        "gen/prompts": float(len(groups)),
        "gen/samples": float(len(samples)),
        "gen/skipped_long_prompts": float(skipped_long),
        "gen/tokens": float(sum(lengths)),
        "gen/mean_length": _mean(lengths),
        "gen/truncation_rate": _mean([float(s.truncated) for s in samples]),
    }


def reward_metrics(scored: Sequence[ScoredGroup], excluded: Mapping[str, int]) -> dict[str, float]:
    values = [r for g in scored for _, r in g.valid]
    metrics = {
        "reward/mean": _mean(values),
        "reward/std": statistics.pstdev(values) if values else 0.0,
        "reward/min": min(values, default=0.0),
        "reward/max": max(values, default=0.0),
        "reward/scored": float(len(values)),
        "reward/excluded": float(sum(excluded.values())),
    }
    metrics.update({f"reward/excluded_{kind}": float(n) for kind, n in excluded.items()})
    return metrics


def pair_metrics(result: PairingResult) -> dict[str, float]:
    pairs = result.pairs
    metrics = {
        "pairs/kept": float(len(pairs)),
        "pairs/corrected": float(sum(p.edited == "chosen" for p in pairs)),
        "pairs/corrected_negative": float(sum(p.edited == "rejected" for p in pairs)),
        "pairs/dropped": float(sum(result.dropped.values())),
        "pairs/chosen_reward_mean": _mean([p.chosen_reward for p in pairs]),
        "pairs/rejected_reward_mean": _mean([p.rejected_reward for p in pairs]),
        "pairs/margin_mean": _mean([p.margin for p in pairs]),
    }
    metrics.update({f"pairs/dropped_{reason}": float(n) for reason, n in result.dropped.items()})
    return metrics


def update_metrics(result: UpdateResult) -> dict[str, float]:
    return {"train/skipped": float(result.skipped), **result.metrics}


def perf_metrics(seconds: Mapping[str, float], generated_tokens: float) -> dict[str, float]:
    metrics = {f"perf/{phase}_s": value for phase, value in seconds.items()}
    metrics["perf/round_s"] = sum(seconds.values())
    generate = seconds.get("generate", 0.0)
    metrics["perf/gen_tokens_per_s"] = generated_tokens / generate if generate > 0 else 0.0
    return {**metrics, **memory_metrics()}


def memory_metrics() -> dict[str, float]:
    """Peak memory so far: the process's resident set (engine, policy and trainer share it) and, on a GPU,
    the most torch has allocated. A peak that grows from round to round is a leak."""
    import resource

    import torch

    metrics = {"perf/peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}  # KiB on Linux
    if torch.cuda.is_available():
        metrics["perf/gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    return metrics


def pair_table(pairs: Sequence[Pair], limit: int = 8) -> tuple[list[str], list[list[Any]]]:
    """A few of the round's pairs as (columns, rows), for a W&B Table."""
    columns = ["prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "edited"]
    rows = [
        [p.messages[-1]["content"], p.chosen, p.rejected, p.chosen_reward, p.rejected_reward, p.edited]
        for p in pairs[:limit]
    ]
    return columns, rows


def eval_table(rows: Sequence[Mapping[str, Any]], limit: int = 100) -> tuple[list[str], list[list[Any]]]:
    """The round's eval answers (the first `limit`) with their scores as (columns, rows), for a W&B Table."""
    columns = ["prompt_id", "prompt", "answer"]
    for row in rows:
        columns += [key for key in row if key not in columns and not isinstance(row[key], (list, dict))]
    return columns, [[row.get(column) for column in columns] for row in rows[:limit]]


def progress_line(round_number: int, rounds: int, metrics: Mapping[str, float]) -> str:
    """One terminal line per round (round 0: the evaluation of the initial policy)."""
    evals = " ".join(
        f"{key.removeprefix('eval/')} {value:.2f}"
        for key, value in metrics.items()
        if key.startswith("eval/") and key not in {"eval/skipped_long_prompts", "eval/mean_chars"}
    )
    if round_number == 0:
        return f"round 0/{rounds} (initial policy) | eval {evals}"
    drops = ", ".join(
        f"{key.removeprefix('pairs/dropped_')} {int(v)}"
        for key, v in metrics.items()
        if key.startswith("pairs/dropped_") and v
    )
    corrected = int(metrics.get("pairs/corrected", 0) + metrics.get("pairs/corrected_negative", 0))
    train = (
        "update skipped (no pairs)"
        if metrics.get("train/skipped")
        else f"loss {metrics.get('train/loss', float('nan')):.3f} acc {metrics.get('train/reward_accuracy', float('nan')):.2f}"
    )
    excluded = int(metrics.get("reward/excluded", 0))
    return (
        f"round {round_number}/{rounds} | reward {metrics['reward/mean']:+.3f} ± {metrics['reward/std']:.3f}"
        + (f" ({excluded} excluded)" if excluded else "")
        + f" | pairs {int(metrics['pairs/kept'])}"
        + (f" ({corrected} corrected)" if corrected else "")
        + (f" (dropped: {drops})" if drops else "")
        + f" | {train}"
        + f" | gen {metrics['perf/generate_s']:.1f}s ({metrics['perf/gen_tokens_per_s']:.0f} tok/s)"
        + f" train {metrics['perf/train_s']:.1f}s sync {metrics['perf/sync_s']:.2f}s"
        + (f" | eval {evals}" if evals else "")
    )


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
