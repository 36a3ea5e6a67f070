"""The online DPO loop: rounds of generate -> score -> pair -> update -> sync -> log.

`run_round` is one round, top to bottom, each stage one call into its own module. `run_job` checks everything
the user gave before any model is loaded, has `onpolicy.components` build the parts once, runs the rounds, and
writes the run directory as they complete.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from transformers import set_seed

from onpolicy import metrics as m
from onpolicy.components import Components, Inputs, build_components, check_inputs, checkpoint_layout, join_team
from onpolicy.config import Config
from onpolicy.diagnostics import diagnose_pairs
from onpolicy.errors import OnpolicyError
from onpolicy.interfaces import PhaseProgress, Table, TrainingTeam
from onpolicy.jsonable import jsonable
from onpolicy.pairing import Selection, build_pairs
from onpolicy.prompts import prompts_for_round
from onpolicy.replay import replayed_pairs
from onpolicy.run.progress import Progress
from onpolicy.run.resume import CheckpointLayout, Start, StartMode, open_run, retention
from onpolicy.run.rundir import REFERENCE_FOLDER, RunDirectory
from onpolicy.run.stopping import GracefulStop
from onpolicy.scoring import score_round
from onpolicy.types import RoundRecord, UpdateResult
from reward import RoundGroups


@dataclasses.dataclass(frozen=True)
class Job:
    """What every round of a job shares: its config, its parts, its run directory, and the stop signal."""

    config: Config
    parts: Components
    run: RunDirectory
    stop: GracefulStop
    progress: Progress
    layout: CheckpointLayout  # what its round checkpoints hold


def run_round(n: int, job: Job) -> RoundRecord:
    """Round n of online DPO, top to bottom:

    1. generate: K samples per prompt of this round's share, from the current policy;
    2. score: a reward per sample (failures are excluded and counted, never scored 0); a reward that needs the
       round's groups first (people labelling them in a page) is shown them all before scoring starts;
    3. pair: best vs worst per group (groups without a usable gap are dropped and counted), or a corrected pair
       where no sample is good enough and a correction is configured;
    4. update: a DPO step on the pairs (and, with `pairs.replay`, a share of earlier rounds' pairs) against this
       round's reference (skipped when there are none), the in-process engine asleep meanwhile where it shares its
       GPU with the trainer;
    5. sync: the engine woken, the updated weights into the generator, in place;
    6. record: the round's samples and pairs into the run directory;
    7. evaluate: greedy answers to the held-out prompts from the synced weights (when configured);
    8. checkpoint the policy, then append the round's line to rounds.jsonl: only now is the round complete;
    9. log the round to W&B.
    A stop asked for (SIGINT/SIGTERM) ends training after its current step and abandons the round before the
    next stage; the run then resumes from round n-1.
    """
    config, parts, run = job.config, job.parts, job.run
    generator, updater, reward = parts.generator, parts.updater, parts.inputs.reward
    round_started = time.perf_counter()
    set_seed(config.seed + n)  # each round's sampling and shuffling: the same whether the job was resumed or not
    seconds: dict[str, float] = {}

    @contextmanager
    def stage(name: str, total: int | None = None, unit: str = "") -> Iterator[PhaseProgress]:
        job.stop.check()
        with job.progress.phase(n, name, total, unit) as progress, _timed(seconds, name):
            yield progress

    prompts = prompts_for_round(parts.inputs.prompts, n - 1, config.prompts.per_round)
    with stage("generate", len(prompts) * config.generation.num_samples, "samples") as progress:
        groups, too_long = generator.generate(prompts, progress)
    with stage("score", len(groups), "groups") as progress:
        scored, excluded, warnings = score_round(reward, groups, _round_context(n, job), progress)
    with stage("pair"):
        selection = Selection(config.pairs.strategy, config.pairs.length_penalty, config.seed + n)
        pairing = build_pairs(scored, config.pairs.min_margin, parts.inputs.correction, selection)
        replayed = replayed_pairs(run.read_pairs, n, config.pairs.replay, len(pairing.pairs), config.seed)
    with _timed(seconds, "engine_sleep"):  # an in-process engine on the trainer's GPU frees it for the update
        weights_dropped = generator.rest()
    with stage("train", unit="steps") as progress:
        refreshed = updater.start_round(n)
        update = updater.update(
            pairing.pairs + tuple(replayed), n, should_stop=lambda: job.stop.requested, progress=progress
        )
    with _timed(seconds, "engine_wake"):
        generator.wake()
    with stage("sync"):
        if not update.skipped or weights_dropped:
            updater.send_policy(generator, str(n))
    with stage("record"):
        run.write_samples(n, scored)
        run.write_pairs(n, pairing.pairs)
    record_s = seconds.pop("record")  # perf/round_s is the stages above, with the engine's sleep and wake
    diagnostics = diagnose_pairs(pairing.pairs)
    warnings += diagnostics.warnings(_last_round_metrics(run))
    gen = m.generation_metrics(groups, len(too_long))
    metrics = {
        **gen,
        **m.reward_metrics(scored, excluded),
        **m.pair_metrics(pairing),
        **({"pairs/replayed": float(len(replayed))} if config.pairs.replay.rounds else {}),
        **diagnostics.metrics,
        **{f"reward/{key}": value for key, value in reward.take_stats().items()},
        **m.update_metrics(update),
        "ref/refreshed": float(refreshed),
        **m.perf_metrics(seconds, gen["gen/tokens"]),
        "perf/record_s": record_s,
    }
    metrics = jsonable(metrics, f"round {n}'s metric")  # a reward's numpy counters, before anything is written
    tables = {"pairs/examples": m.pair_table(pairing.pairs)}
    if parts.inputs.evaluator is not None:
        results, tables["eval/answers"] = _evaluate(job, n)
        metrics.update(results)
    started = time.perf_counter()
    with job.progress.phase(n, "checkpoint"):
        run.save_checkpoint(n, updater.save_checkpoint)
    metrics["perf/checkpoint_s"] = time.perf_counter() - started
    metrics["perf/round_total_s"] = time.perf_counter() - round_started  # with evaluation, records, checkpoint
    run.append_round({"round": n, **metrics})  # the round is complete from here on
    parts.logger.log_round(n, metrics, tables=tables)
    run.prune_checkpoints(retention(n, config.checkpoint, job.layout))
    if too_long:
        warnings.append(f"{len(too_long)} prompt(s) too long for the engine were skipped, e.g. {too_long[0].id!r}")
    warnings += pairing.problems
    if update.skipped:
        warnings.append(_no_update_reason(len(pairing.pairs) + len(replayed), update, config.train.max_length))
    return RoundRecord(round=n, metrics=metrics, pairs=pairing.pairs, warnings=tuple(warnings))


def run_job(
    config: Config,
    run_dir: pathlib.Path,
    echo: Callable[[str], None] = print,
    mode: StartMode = "auto",
    interactive: bool = False,
) -> list[dict[str, Any]]:
    """Run the rounds of `config` into `run_dir`, continuing the run already there (see `resume`); returns the
    records of the rounds run by this call. A SIGINT/SIGTERM stops it at the next safe point (`Stopped`).
    `echo` prints a line for the user; `interactive`: it prints to a terminal (progress bars, not lines).

    Launched as several processes (torchrun, accelerate launch), the main process runs the job and the others
    train beside it (the `TrainingTeam`); they return no records."""
    team = join_team(config)
    if team is None:
        return _run_job(config, run_dir, echo, mode, None, interactive)
    try:
        if not team.is_main:
            with GracefulStop(announce=False) as stop:
                team.follow_main(lambda: stop.requested)
                stop.check()
            return []
        return _run_job(config, run_dir, echo, mode, team, interactive)
    except RuntimeError as exc:
        lost = team.lost_process(exc)
        if lost is None:
            raise
        raise lost from exc
    finally:
        team.dismiss()
        team.leave()


def _run_job(
    config: Config,
    run_dir: pathlib.Path,
    echo: Callable[[str], None],
    mode: StartMode,
    team: TrainingTeam | None,
    interactive: bool,
) -> list[dict[str, Any]]:
    inputs = check_inputs(config)  # everything the user gave, before any model is loaded
    start = open_run(config, run_dir, checkpoint_layout(config, team), mode)
    with start.lock:
        progress = Progress(start.run, echo, interactive, config.progress_every_s, sys.stdout)
        return _run_rounds(config, inputs, start, echo, team, progress)


def _run_rounds(
    config: Config,
    inputs: Inputs,
    start: Start,
    echo: Callable[[str], None],
    team: TrainingTeam | None,
    progress: Progress,
) -> list[dict[str, Any]]:
    run = start.run
    for note in start.notes:
        echo(note)
    if start.last_complete >= config.rounds:
        if start.policy is not None and not run.final_is_round(start.last_complete):  # killed before final/
            run.save_final(
                start.last_complete,
                lambda folder: shutil.copytree(start.policy, folder, ignore=shutil.ignore_patterns(REFERENCE_FOLDER)),
            )
        echo(f"{run.path} has all {config.rounds} rounds already (raise rounds= to continue it)")
        return []

    started = time.perf_counter()
    parts = build_components(config, inputs, start, echo, team)
    records = []
    try:
        _catch_up_wandb(run, parts)
        with GracefulStop() as stop:
            job = Job(config, parts, run, stop, progress, start.layout)
            if inputs.evaluator is not None and start.last_complete < 0:  # round 0: the initial policy's answers
                results, table = _evaluate(job, 0)
                record = {"round": 0, **results}
                run.append_round(record)
                parts.logger.log_round(0, results, tables={"eval/answers": table})
                echo(m.progress_line(0, config.rounds, record))
            elif inputs.evaluator is not None:  # a resumed job compares with the initial policy's answers
                inputs.evaluator.remember_initial(run.read_jsonl(f"{run.round_folder(0)}/eval.jsonl"))
            for n in range(max(start.last_complete, 0) + 1, config.rounds + 1):
                outcome = run_round(n, job)
                for warning in outcome.warnings:
                    echo(f"  warning: {warning}")
                records.append(outcome.line())
                echo(m.progress_line(n, config.rounds, outcome.metrics))
                _check_scoring_works(run, config.stop_after_unscored_rounds, outcome)
        final = run.save_final(config.rounds, parts.updater.save)
        run.write_status(config.rounds, "done")
        echo(f"done: {config.rounds} rounds in {time.perf_counter() - started:.0f}s; final policy: {final}")
    finally:
        parts.close()
    return records


def _round_context(n: int, job: Job) -> RoundGroups:
    """Round n as a reward's `prepare` sees it (`score_round` fills in the groups)."""
    return RoundGroups(
        round=n,
        folder=job.run.path / job.run.round_folder(n),
        groups=(),
        echo=job.progress.echo,
        should_stop=lambda: job.stop.requested,
    )


def _last_round_metrics(run: RunDirectory) -> dict[str, Any] | None:
    """The metrics of the last complete training round (not the initial evaluation), if any."""
    return next((record for record in reversed(run.read_rounds()) if record["round"] >= 1), None)


def _no_update_reason(pairs: int, update: UpdateResult, max_length: int | None) -> str:
    """Why an update with `pairs` pairs (the round's and those replayed) was skipped."""
    dropped = int(update.metrics.get("train/dropped_long_prompts", 0))
    if pairs and dropped == pairs:
        return (
            f"no pair trained this round: the prompts of all {dropped} pairs fill train.max_length ({max_length} "
            "tokens), leaving no response to learn from; raise train.max_length"
        )
    return "no pairs this round: the update was skipped"


def _check_scoring_works(run: RunDirectory, limit: int, outcome: RoundRecord) -> None:
    """Stop the job when no sample got a reward for `limit` rounds in a row (resumed rounds count too): a reward
    backend that is down all along would otherwise end the job "successfully" with an untrained policy."""
    if not limit:
        return
    streak = 0
    for record in reversed(run.read_rounds()):
        if record["round"] == 0:  # the initial evaluation: no scoring
            continue
        if record.get("reward/scored", 1) > 0:
            break
        streak += 1
    if streak < limit:
        return
    example = next((w for w in outcome.warnings if "excluded" in w), None)
    raise OnpolicyError(
        f"no sample got a reward in the last {streak} rounds (rounds {outcome.round - streak + 1}-{outcome.round})"
        + (f"; e.g. {example}" if example else "")
        + f". The reward backend looks down or broken. Rounds up to {outcome.round} are complete in {run.path}: fix "
        "it and run the same command to resume (stop_after_unscored_rounds sets how many such rounds stop a job)"
    )


def _catch_up_wandb(run: RunDirectory, parts: Components) -> None:
    """Log the complete rounds W&B does not hold: those of a process killed before W&B wrote them out."""
    logged = parts.logger.steps_logged()
    if logged is None:
        return
    for record in run.read_rounds():
        if record["round"] not in logged:
            parts.logger.log_round(record["round"], {k: v for k, v in record.items() if k != "round"})


def _evaluate(job: Job, round_number: int) -> tuple[dict[str, float], Table]:
    """Greedy answers to the eval prompts from the generator's current weights, saved and scored; the metrics
    and the answers as a table. Round 0's answers are the initial policy's, which later rounds compare with."""
    start = time.perf_counter()
    evaluator = job.parts.inputs.evaluator
    assert evaluator is not None
    samples = job.config.eval.kl_samples if round_number >= 1 else 0  # round 0: the policy is the reference
    total = len(evaluator.records) * (1 + samples)  # each prompt's answer, then its samples for the KL
    with job.progress.phase(round_number, "evaluate", total, "samples") as progress:
        results, rows = evaluator.run(job.parts.generator, progress, initial=round_number == 0)
        began = time.perf_counter()
        groups = evaluator.sample(job.parts.generator, samples, progress) if samples else []
    if samples:
        results.update(job.parts.updater.kl_from_samples(groups))
        results["perf/eval_kl_s"] = time.perf_counter() - began
    rows = job.run.write_eval(round_number, rows)
    return {**results, "perf/eval_s": time.perf_counter() - start}, m.eval_table(rows)


@contextmanager
def _timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start
