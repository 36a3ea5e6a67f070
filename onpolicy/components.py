"""Every part of a job, built from the config in one place and handed to the loop.

Two steps, because a user's mistakes must surface before minutes of model loading:

1. `check_inputs`: what the user gave (prompts, rewards, the corrector, the evaluation) is loaded and checked,
   no model touched;
2. `build_components`: the engine, the policy and its updater, and the W&B logger start, continuing from where
   the run directory says (`resume.Start`).

This is the only module that names concrete backends; the loop sees the roles of `onpolicy.interfaces`. The
judge that uses the policy engine gets it here, explicitly, through the `PolicyEngine` handed to the reward.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from onpolicy.config import Config, RewardTerm
from onpolicy.correction import Correction, build_correction
from onpolicy.errors import ConfigError
from onpolicy.evaluation import Evaluator, build_evaluator
from onpolicy.interfaces import Generator, Updater
from onpolicy.prompts import load_prompts
from onpolicy.resume import Start
from onpolicy.tracking import RoundLogger, start_logger
from onpolicy.types import PromptRecord
from reward import Conditional, GroupReward, RewardConfigError, Term, WeightedSum, build_reward
from reward.judge import PolicyEngine


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the user gave, loaded and checked: no model is loaded to build these."""

    prompts: list[PromptRecord]
    reward: GroupReward
    correction: Correction | None
    evaluator: Evaluator | None
    policy_engine: PolicyEngine  # attached by `build_components` once the engine runs


@dataclasses.dataclass(frozen=True)
class Components:
    """Everything the rounds of a job use."""

    inputs: Inputs
    generator: Generator
    updater: Updater
    logger: RoundLogger


def check_inputs(config: Config) -> Inputs:
    """Load and check the prompts, rewards, corrector and evaluation of `config`; raises `ConfigError`."""
    prompts = load_prompts(config.prompts, seed=config.seed)
    policy_engine = PolicyEngine()
    reward = build_reward_from_terms(config.reward, policy_engine)
    return Inputs(
        prompts=prompts,
        reward=reward,
        correction=build_correction(config.pairs.correction, reward),
        evaluator=build_evaluator(config.eval, seed=config.seed),
        policy_engine=policy_engine,
    )


def build_components(config: Config, inputs: Inputs, start: Start, echo: Callable[[str], None] = print) -> Components:
    """Start the engine, the policy and the logger for `config`, continuing the run `start` describes."""
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
    inputs.policy_engine.attach(generator.llm)
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
        source = model_path if start.reference_from == 0 else start.run.checkpoint(start.reference_from)
        updater.restore_reference(source, start.reference_from)
    logger = start_logger(config.wandb, start.run.path, config.model_dump(mode="json"), start.wandb_run_id)
    if logger.run_id:
        start.run.write_state(wandb_run_id=logger.run_id)
    echo(f"setup took {time.perf_counter() - started:.1f}s; W&B: {logger.mode}; run dir: {start.run.path}")
    return Components(inputs=inputs, generator=generator, updater=updater, logger=logger)


def build_reward_from_terms(terms: Sequence[RewardTerm], policy_engine: PolicyEngine | None = None) -> GroupReward:
    """The configured reward: the weighted sum of its terms. Errors name the term. A `policy` judge among them
    uses `policy_engine` (a detached one by default: checking a config needs no engine)."""
    policy_engine = policy_engine or PolicyEngine()
    built = []
    for i, term in enumerate(terms):
        try:
            reward = build_reward(term.name, term.args, policy_engine)
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
