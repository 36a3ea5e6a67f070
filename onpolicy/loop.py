"""The online DPO loop: rounds of generate -> score -> pair -> update -> sync -> log.

`run_round` is one round, top to bottom, each stage one call into its own module. `run_job` checks
everything the user gave (prompts, rewards, files) before any model is loaded, builds the engine, the policy
and the logger once, runs the rounds, and writes the run directory as it goes.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from transformers import set_seed

from onpolicy import metrics as m
from onpolicy.config import Config, RewardTerm
from onpolicy.correction import build_correction
from onpolicy.errors import ConfigError
from onpolicy.evaluation import Evaluator, build_evaluator
from onpolicy.pairing import Corrector, build_pairs
from onpolicy.prompts import load_prompts, prompts_for_round
from onpolicy.resume import StartMode, open_run, retention
from onpolicy.rundir import RunDirectory
from onpolicy.scoring import score_groups
from onpolicy.stopping import GracefulStop
from onpolicy.tracking import start_logger
from onpolicy.types import Pair, PromptRecord, SampleGroup, ScoredGroup, UpdateResult
from reward import Conditional, GroupReward, RewardConfigError, Term, WeightedSum, build_reward, take_stats
from reward.judge import use_policy_engine


class Generator(Protocol):
    def generate(self, records: Sequence[PromptRecord]) -> tuple[list[SampleGroup], list[PromptRecord]]: ...

    def load_weights(self, named_tensors: Iterator[tuple[str, torch.Tensor]]) -> None: ...


class Updater(Protocol):
    def start_round(self, round_number: int) -> bool: ...

    def update(
        self, pairs: Sequence[Pair], round_number: int, should_stop: Callable[[], bool] | None = None
    ) -> UpdateResult: ...

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]: ...

    def save(self, folder: pathlib.Path) -> None: ...


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
    metrics: dict[str, float]
    scored: list[ScoredGroup]
    pairs: tuple[Pair, ...]
    warnings: list[str]


def run_round(
    round_number: int,
    prompts: Sequence[PromptRecord],
    generator: Generator,
    reward: GroupReward,
    updater: Updater,
    min_margin: float,
    correction: Corrector | None = None,
    on_phase: Callable[[str], None] = lambda phase: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> RoundOutcome:
    """One round of online DPO:

    1. generate: K samples per prompt from the current policy, served by the running engine;
    2. score: a reward per sample (failures are excluded and counted, never scored 0);
    3. pair: best vs worst per group (groups without a usable gap are dropped and counted), or a corrected
       pair where no sample is good enough and a correction is configured;
    4. update: a DPO step on the pairs against this round's reference (skipped when there are no pairs);
    5. sync: the updated weights into the running engine, in place.
    Logging and the run directory are the caller's: a round is recorded only once it is complete.
    `on_phase(name)` is called as each phase starts (it may raise to abandon the round); training stops after
    the current step once `should_stop()` is true.
    """
    seconds: dict[str, float] = {}

    def phase(name: str) -> Any:
        on_phase(name)
        return _timed(seconds, name)

    with phase("generate"):
        groups, too_long = generator.generate(prompts)
    with phase("score"):
        scored, excluded, warnings = score_groups(reward, groups)
    with phase("pair"):
        pairing = build_pairs(scored, min_margin, correction)
    with phase("train"):
        refreshed = updater.start_round(round_number)
        update = updater.update(pairing.pairs, round_number, should_stop)
    with phase("sync"):
        if not update.skipped:
            generator.load_weights(updater.named_weights())
    if too_long:
        warnings.append(f"{len(too_long)} prompt(s) too long for the engine were skipped, e.g. {too_long[0].id!r}")
    if update.skipped:
        warnings.append("no pairs this round: the update was skipped")
    gen = m.generation_metrics(groups, len(too_long))
    metrics = {
        **gen,
        **m.reward_metrics(scored, excluded),
        **m.pair_metrics(pairing),
        **{f"reward/{key}": value for key, value in take_stats(reward).items()},
        **m.update_metrics(update),
        "ref/refreshed": float(refreshed),
        **m.perf_metrics(seconds, gen["gen/tokens"]),
    }
    return RoundOutcome(metrics=metrics, scored=scored, pairs=pairing.pairs, warnings=warnings)


def build_reward_from_terms(terms: Sequence[RewardTerm]) -> GroupReward:
    """The configured reward: the weighted sum of its terms. Errors name the term."""
    built = []
    for i, term in enumerate(terms):
        try:
            reward = build_reward(term.name, term.args)
        except RewardConfigError as exc:
            raise ConfigError(f"reward[{i}] ({term.name}): {exc}") from None
        reward = Conditional(reward, term.when) if term.when else reward
        built.append(Term(reward, term.weight, term.label or _default_label(term, i, terms), term.normalize))
    try:  # a sum even of one term: every backend's metrics are then reward/<label>/...
        return WeightedSum(built)
    except RewardConfigError as exc:
        raise ConfigError(f"reward: {exc}; give the terms distinct label:s") from None


def _default_label(term: RewardTerm, index: int, terms: Sequence[RewardTerm]) -> str:
    """A term's metric name: the reward's name, numbered when several terms share it."""
    name = term.name.rpartition(":")[2] if ":" in term.name else term.name
    if sum(t.name == term.name and not t.label for t in terms) > 1:
        return f"{name}#{index}"
    return name


def run_job(
    config: Config,
    run_dir: pathlib.Path,
    echo: Callable[[str], None] = print,
    mode: StartMode = "auto",
) -> list[dict[str, Any]]:
    """Run the rounds of `config` into `run_dir`, continuing the run already there (see `resume`); returns the
    records of the rounds run by this call. A SIGINT/SIGTERM stops it at the next safe point (`Stopped`)."""
    # Everything the user gave is checked before any model is loaded.
    prompts = load_prompts(config.prompts, seed=config.seed)
    reward = build_reward_from_terms(config.reward)
    correction = build_correction(config.pairs.correction, reward)
    evaluator = build_evaluator(config.eval, seed=config.seed)
    start = open_run(config, run_dir, mode)
    run = start.run
    for note in start.notes:
        echo(note)
    if start.last_complete >= config.rounds:
        if start.policy is not None and not (run.path / "final").is_dir():  # the job died writing final/
            run.save_model("final", lambda folder: shutil.copytree(start.policy, folder))
        echo(f"{run.path} has all {config.rounds} rounds already (raise rounds= to continue it)")
        return []

    from transformers import AutoTokenizer

    from onpolicy.generation import VLLMGenerator
    from onpolicy.model_store import resolve_model
    from onpolicy.update import DPOUpdater

    started = time.perf_counter()
    model_path = resolve_model(config.model)
    policy_path = start.policy or model_path
    echo(
        f"resuming after round {start.last_complete}; policy: {policy_path}"
        if start.resumed
        else f"policy: {policy_path}"
    )
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    generator = VLLMGenerator(str(policy_path), tokenizer, config.generation)
    use_policy_engine(generator.llm)  # for judges with backend: policy
    updater = DPOUpdater(
        str(policy_path),
        tokenizer,
        config.train,
        config.ref,
        seed=config.seed,
        dtype=config.model.train_dtype,
        engine_dtype=generator.engine_dtype,
    )
    if updater.holds_reference_copy and start.reference_from < start.last_complete:
        source = model_path if start.reference_from == 0 else run.checkpoint(start.reference_from)
        updater.restore_reference(source, start.reference_from)
    logger = start_logger(config.wandb, run.path, config.model_dump(mode="json"), start.wandb_run_id)
    if logger.run_id:
        run.write_state(wandb_run_id=logger.run_id)
    echo(f"setup took {time.perf_counter() - started:.1f}s; W&B: {logger.mode}; run dir: {run.path}")

    records = []
    try:
        _catch_up_wandb(run, logger)
        with GracefulStop() as stop:
            if evaluator is not None and start.last_complete < 0:  # round 0: the initial policy
                run.write_status(0, "evaluate")
                record = {"round": 0, **_evaluate(evaluator, generator, run, 0)}
                run.append_round(record)
                logger.log_round(0, record)
                echo(m.progress_line(0, config.rounds, record))
            for n in range(max(start.last_complete, 0) + 1, config.rounds + 1):
                record = _complete_round(
                    n, config, prompts, generator, reward, updater, correction, evaluator, run, stop, echo
                )
                logger.log_round(n, record["metrics"], tables={"pairs/examples": m.pair_table(record["pairs"])})
                run.prune_checkpoints(retention(n, config))
                records.append({"round": n, **record["metrics"]})
                echo(m.progress_line(n, config.rounds, record["metrics"]))
        final = run.save_model("final", updater.save)
        run.write_status(config.rounds, "done")
        echo(f"done: {config.rounds} rounds in {time.perf_counter() - started:.0f}s; final policy: {final}")
    finally:
        logger.finish()
    return records


def _complete_round(
    n: int,
    config: Config,
    prompts: Sequence[PromptRecord],
    generator: Any,
    reward: GroupReward,
    updater: Any,
    correction: Corrector | None,
    evaluator: Evaluator | None,
    run: RunDirectory,
    stop: GracefulStop,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Round n, start to finish: run it, then write its files and checkpoint, and only then mark it complete."""
    round_started = time.perf_counter()
    set_seed(config.seed + n)  # each round's sampling and shuffling: the same whether the job was resumed or not

    def on_phase(phase: str) -> None:
        stop.check()  # a stop asked during training ends it early: the round is abandoned here, before sync
        run.write_status(n, phase)

    outcome = run_round(
        n,
        prompts_for_round(prompts, n - 1, config.prompts.per_round),
        generator,
        reward,
        updater,
        config.pairs.min_margin,
        correction,
        on_phase=on_phase,
        should_stop=lambda: stop.requested,
    )
    for warning in outcome.warnings:
        echo(f"  warning: {warning}")
    run.write_status(n, "record")
    started = time.perf_counter()
    run.write_samples(n, outcome.scored)
    run.write_pairs(n, outcome.pairs)
    metrics = {**outcome.metrics, "perf/record_s": time.perf_counter() - started}
    if evaluator is not None:
        run.write_status(n, "evaluate")
        metrics.update(_evaluate(evaluator, generator, run, n))
    run.write_status(n, "checkpoint")
    started = time.perf_counter()
    run.save_checkpoint(n, updater.save)
    metrics["perf/checkpoint_s"] = time.perf_counter() - started
    metrics["perf/round_total_s"] = time.perf_counter() - round_started  # with evaluation, records, checkpoint
    run.append_round({"round": n, **metrics})  # the round is complete from here on
    return {"metrics": metrics, "pairs": outcome.pairs}


def _catch_up_wandb(run: RunDirectory, logger: Any) -> None:
    """Log the complete rounds W&B does not hold: those of a process killed before W&B wrote them out."""
    logged = logger.steps_logged()
    if logged is None:
        return
    for record in run.read_rounds():
        if record["round"] not in logged:
            logger.log_round(record["round"], {k: v for k, v in record.items() if k != "round"})


def _evaluate(evaluator: Evaluator, generator: Any, run: RunDirectory, round_number: int) -> dict[str, float]:
    """Greedy answers to the eval prompts from the engine's current weights, saved and scored."""
    start = time.perf_counter()
    results, rows = evaluator.run(generator)
    run.write_jsonl(f"{run.round_folder(round_number)}/eval.jsonl", rows)
    return {**results, "perf/eval_s": time.perf_counter() - start}


@contextmanager
def _timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start
