"""Every part of a job, built from the config in one place and handed to the loop.

Two steps, because a user's mistakes must surface before minutes of model loading:

1. `check_inputs`: what the user gave (prompts and their format, rewards, the corrector, the evaluation) is
   loaded and checked, the node's layout is planned (`plan_job_layout`: which GPUs each part takes, each
   engine's arguments) and the generation backend is chosen and checked, no model touched;
2. `build_components`: the generation backend, the policy (held as its storage kind says) and its updater, and
   the W&B logger start, continuing from where the run directory says (`resume.Start`).

This is the only module that chooses concrete kinds (the generation backend, the policy's storage, the reference
through the updater) and asks them what they can do; the loop sees the roles of `onpolicy.interfaces`. The judge
that uses the policy engine gets it here, explicitly, through the `PolicyEngine` handed to the reward.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from onpolicy.config import Config, redaction
from onpolicy.correction import build_correction
from onpolicy.errors import ConfigError
from onpolicy.evaluation import build_evaluator, load_eval_prompts
from onpolicy.generation.backends import GenerationBackend, generation_backend
from onpolicy.generation.placement import Layout, Machine, plan_layout, this_machine
from onpolicy.interfaces import Correction, Evaluation, Generator, Reward, RoundLogger, Updater
from onpolicy.prompts import load_prompts
from onpolicy.reward_terms import build_reward_from_terms, check_reward_terms, term_needs
from onpolicy.run.launch import launched_processes, local_processes
from onpolicy.run.model_store import check_model_folder, known_model_folder
from onpolicy.run.resume import CheckpointLayout, Start
from onpolicy.run.tracking import start_logger
from onpolicy.templates import policy_tokenizer
from onpolicy.tokens import check_prompts_leave_room_to_train, check_prompts_render
from onpolicy.train.distributed import MirroredUpdater, Team, TrainerStart, join
from onpolicy.train.policy_storage import PolicyStorage, policy_storage
from onpolicy.train.reference import reference_kind, reference_round, restore_source
from onpolicy.train.trl_compat import check_dpo_config_values
from onpolicy.types import PromptRecord
from reward import WeightedSum
from reward.judge import PolicyEngine
from reward.servers import ModelServers, Server, ServerRequest, StartServer

if TYPE_CHECKING:
    from onpolicy.train.update import DPOUpdater


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the user gave, loaded and checked: no model is loaded to build these."""

    prompts: list[PromptRecord]
    reward: Reward
    correction: Correction | None
    evaluator: Evaluation | None
    policy_engine: PolicyEngine  # attached to the engine once the in-process backend starts it
    backend: GenerationBackend  # where the policy's samples come from, started by `build_components`
    layout: Layout  # where each part runs on this node, with each engine's arguments
    model_servers: ModelServers = dataclasses.field(default_factory=ModelServers)  # started by `build_components`


@dataclasses.dataclass(frozen=True)
class Components:
    """Everything the rounds of a job use; `close()` releases what the job started (its W&B run, its servers)."""

    inputs: Inputs
    generator: Generator
    updater: Updater
    logger: RoundLogger
    on_close: tuple[Callable[[], None], ...] = ()

    def close(self) -> None:
        try:
            self.logger.finish()
        finally:
            try:
                self.inputs.reward.close()  # its terms that hold something open (a labelling page)
            finally:
                for release in self.on_close:
                    release()


def check_inputs(config: Config) -> Inputs:
    """Load and check the prompts, rewards, corrector and evaluation of `config`; raises `ConfigError`."""
    prompts = load_prompts(config.prompts, seed=config.seed)
    policy_engine = PolicyEngine()
    check_model_folder(config.model.path)
    folder = known_model_folder(config.model)
    if folder is not None:  # else the embedded model, not converted yet: its prompts are rendered as the job starts
        check_prompts_render(prompts, policy_tokenizer(folder, config.model))
    layout = plan_job_layout(config, local_processes(), this_machine())
    backend = generation_backend(config.generation, layout, policy_engine)
    backend.check(launched_processes())
    check_reward_terms(config.reward, "reward", prompts, config.generation, backend.in_process)
    try:
        check_dpo_config_values(config.train)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    model_servers = ModelServers()
    reward = build_reward_from_terms(config.reward, policy_engine, model_servers=model_servers)
    shown_only = next((i for i, term in enumerate(reward.terms) if term.needs.shown_only), None)
    if config.pairs.correction.corrector and shown_only is not None:
        raise ConfigError(
            "pairs.correction: a corrected answer is scored again by the reward, and "
            f"reward[{shown_only}] ({config.reward[shown_only].name}) scores only the answers shown to people; give "
            "it a fallback reward (args.fallback) or turn correction off"
        )
    evaluator = None
    eval_prompts = load_eval_prompts(config.eval, seed=config.seed)
    if eval_prompts is not None:
        eval_reward = None
        if config.eval.reward is not None:
            eval_reward = _eval_reward(config, reward, policy_engine, backend.in_process, model_servers, eval_prompts)
        evaluator = build_evaluator(config.eval, eval_prompts, eval_reward, config.generation)
    backend.check_reward_ports([request.port for request in model_servers.requests])
    return Inputs(
        prompts=prompts,
        reward=reward,
        correction=build_correction(config.pairs.correction, reward),
        evaluator=evaluator,
        policy_engine=policy_engine,
        model_servers=model_servers,
        backend=backend,
        layout=layout,
    )


def plan_job_layout(config: Config, processes: int, machine: Machine) -> Layout:
    """The layout of a job of `config` with `processes` training processes on this node of `machine`, its engines
    serving what the policy's storage sends them."""
    lora_rank = storage_kind(config).served_adapter_rank
    return plan_layout(config, processes, machine, lora_rank, known_model_folder(config.model))


def _eval_reward(
    config: Config,
    job_reward: WeightedSum,
    policy_engine: PolicyEngine,
    engine_in_process: bool,
    model_servers: ModelServers,
    eval_prompts: Sequence[PromptRecord],
) -> WeightedSum:
    """What compares eval answers with the initial policy's (`eval.reward`, not None)."""
    if config.eval.reward == "job":
        if job_reward.needs.people:
            raise ConfigError(
                "eval.reward: job would ask people to compare every eval answer with the initial policy's each round; "
                "give eval.reward its own terms (a judge, a reward model) or null"
            )
        return job_reward
    assert config.eval.reward is not None
    if any(term_needs(term, f"eval.reward[{i}]").people for i, term in enumerate(config.eval.reward)):
        raise ConfigError("eval.reward: people do not judge eval answers; give a judge, a reward model or rules")
    check_reward_terms(config.eval.reward, "eval.reward", eval_prompts, config.generation, engine_in_process)
    return build_reward_from_terms(config.eval.reward, policy_engine, "eval.reward", model_servers)


def checkpoint_layout(config: Config, team: Team | None = None) -> CheckpointLayout:
    """What the round checkpoints of a job of `config` hold, as its policy's storage and its reference kind say."""
    return CheckpointLayout(
        reference_round=functools.partial(reference_round, ref=config.ref),
        adapters=storage_kind(config, team).checkpoint_adapters,
        reference_folder=reference_kind(config.ref).checkpoint_folder,
    )


def storage_kind(config: Config, team: Team | None = None) -> PolicyStorage:
    """How the policy is held: the kind `train` asks for, sharded where the job's `team` shards it."""
    return policy_storage(config.train, config.generation.lora_sync, team)


def build_components(
    config: Config, inputs: Inputs, start: Start, echo: Callable[[str], None] = print, team: Team | None = None
) -> Components:
    """Start the engine, the policy and the logger for `config`, continuing the run `start` describes; with a
    `team` (several training processes, this one the main), the policy on each of them."""
    from onpolicy.run.model_store import resolve_model

    started = time.perf_counter()
    model_path = str(resolve_model(config.model))
    checkpoint = None if start.policy is None else str(start.policy)
    policy_path = checkpoint or model_path
    echo(
        f"resuming after round {start.last_complete}; policy: {policy_path}"
        if start.resumed
        else f"policy: {policy_path}"
    )
    tokenizer = policy_tokenizer(policy_path, config.model)
    check_prompts_leave_room_to_train(inputs.prompts, tokenizer, config.train.max_length)
    for line in inputs.layout.describe():
        echo(line)
    dtype = inputs.layout.engine_dtype
    generation = config.generation.model_copy(update={"dtype": dtype})
    storage = storage_kind(config, team)
    engine_start = storage.engine_start(model_path, checkpoint)
    on_close: list[Callable[[], None]] = []
    try:
        if inputs.model_servers.requests:
            inputs.model_servers.attach(reward_server_starter(start.run.path, on_close))
        on_close.append(inputs.backend.close)
        generator = inputs.backend.start(engine_start, tokenizer, generation, start.run.path)
        trainer_start = TrainerStart(
            initial_path=model_path,
            checkpoint=checkpoint,
            tokenizer_path=policy_path,
            storage=storage,
            reference=restore_source(config.ref, start.run, start.last_complete, start.reference_from, model_path),
            engine_dtype=generator.engine_dtype,
        )
        updater = _updater(config, trainer_start, tokenizer, team, start.run.path)
        if isinstance(updater, MirroredUpdater):
            on_close.insert(0, updater.close)
        if inputs.backend.sends_policy_first or engine_start.send_policy:
            # servers given by URL serve whatever they were started with, and an engine sent adapters starts on the
            # base model: send the policy this run continues from
            updater.send_policy(generator, str(max(start.last_complete, 0)))
        run_config = redaction.redact({**config.model_dump(mode="json"), "layout": inputs.layout.as_json()})
        logger = start_logger(config.wandb, start.run.path, run_config, start.wandb_run_id)
        if logger.run_id:
            start.run.write_state(wandb_run_id=logger.run_id)
    except BaseException:
        for release in on_close:
            release()
        raise
    echo(
        f"setup took {time.perf_counter() - started:.1f}s; engine: {dtype}; W&B: {logger.mode}; "
        f"run dir: {start.run.path}"
    )
    return Components(inputs=inputs, generator=generator, updater=updater, logger=logger, on_close=tuple(on_close))


def _updater(
    config: Config, start: TrainerStart, tokenizer: Any, team: Team | None, run_path: pathlib.Path
) -> Updater:
    """The policy's updater, with its reference as the run directory says; with a `team`, on every one of its
    processes, the others told by this one."""
    if team is None:
        return build_updater(config, start, tokenizer=tokenizer)
    team.broadcast(start)
    return MirroredUpdater(build_updater(config, start, team.size, tokenizer), team, run_path / "trainer-data")


def join_team(config: Config) -> Team | None:
    """This process's place among the job's training processes, when it was launched as several (else None);
    a process other than the main one builds its policy's updater as the main process describes."""
    return join(config.train, lambda start, team: build_updater(config, start, team.size))


def build_updater(config: Config, start: TrainerStart, processes: int = 1, tokenizer: Any = None) -> DPOUpdater:
    """The policy and its updater as `start` describes, for one of `processes` training processes (`tokenizer`:
    the one the generator uses, where this process has it; else loaded from `start.tokenizer_path`)."""
    from onpolicy.train.update import DPOUpdater

    updater = DPOUpdater(
        start.initial_path,
        tokenizer if tokenizer is not None else policy_tokenizer(start.tokenizer_path, config.model),
        config.train,
        config.ref,
        seed=config.seed,
        dtype=config.model.train_dtype,
        engine_dtype=start.engine_dtype,
        checkpoint=start.checkpoint,
        processes=processes,
        kl=config.eval.prompts is not None and config.eval.kl_samples > 0,
        storage=start.storage,
    )
    if start.reference is not None:
        updater.reference.restore(*start.reference)
    return updater


def reward_server_starter(log_folder: pathlib.Path, on_close: list[Callable[[], None]]) -> StartServer:
    """How the job starts the vLLM servers its rewards ask for (`reward.servers`): each a `vllm serve` process
    (`onpolicy.generation.serving`) on 127.0.0.1 with a key of its own on every route, its log in `log_folder`,
    ready on return, and stopped when the job ends (`on_close`)."""
    from onpolicy.generation.placement import cli_flags
    from onpolicy.generation.serving import ManagedServer

    def start(request: ServerRequest) -> Server:
        server = ManagedServer(
            request.model,
            request.port,
            log_folder / f"reward-server-{request.port}.log",
            cli_flags(request.arguments),
            served_model_name=request.served_name,
        ).start("the reward's port")
        on_close.append(server.stop)
        server.wait_until_ready(request.startup_timeout_s, "the reward's startup_timeout_s")
        return Server(server.url, server.api_key, server.check_alive)

    return start
