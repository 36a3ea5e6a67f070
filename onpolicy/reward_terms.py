"""The job's reward from the config's reward terms: each term's reward is asked what it needs from the job
(`reward.Needs`, declared where it is registered), terms needing what the job cannot give are refused before
any model loads, and the rest are built into one weighted sum that knows each term's needs.

onpolicy's own reward (`human`) is among the `reward` package's built-ins: the `onpolicy` package includes its
module in the registry.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import TypeAdapter, ValidationError

from onpolicy.config.sections import GenerationConfig, RewardTerm
from onpolicy.errors import ConfigError
from onpolicy.types import PromptRecord
from reward import Needs, RewardConfigError, Term, WeightedSum, build_reward, matches, reward_needs
from reward.judge import PolicyEngine
from reward.servers import ModelServers


def check_reward_terms(
    terms: Sequence[RewardTerm],
    where: str,
    prompts: Sequence[PromptRecord],
    generation: GenerationConfig,
    engine_in_process: bool,
) -> None:
    """Refuse reward terms that could never score (a `when` no prompt matches) or that need what this job does not
    have (the policy engine in this process, a GPU), the reward terms among their arguments included; `where`
    names the terms' list in messages; `engine_in_process`: the job's generation backend runs its engine in this
    process (`onpolicy.generation.backends`)."""
    for i, term in enumerate(terms):
        if term.when is not None and not any(matches(record.reward_view(), term.when) for record in prompts):
            raise ConfigError(
                f"{where}[{i}] ({term.label or term.name}): no prompt matches when={term.when}, so it would never "
                "score; check the field names and values against the prompt records"
            )
    for i, term in enumerate(terms):
        at = f"{where}[{i}]"
        needs = term_needs(term, at)
        if needs.policy_engine:
            _check_policy_engine(f"{at} ({term.name})", needs, generation, engine_in_process)
        if needs.gpu:
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"{at} ({term.name}): it runs on a CUDA device, and torch sees no GPU here")
        for arg in needs.rewards:
            if term.args.get(arg) is not None:
                check_reward_terms(
                    _sub_terms(term, arg, at), f"{at}.args.{arg}", prompts, generation, engine_in_process
                )


def _check_policy_engine(at: str, needs: Needs, generation: GenerationConfig, engine_in_process: bool) -> None:
    """Refuse a reward that generates with the policy engine where the job's engine is not in this process, or
    serves the base model rather than the policy."""
    if not engine_in_process:
        raise ConfigError(
            f"{at}: it generates with the in-process policy engine, and with generation.backend: server there is "
            "none" + (f"; {needs.engine_alternative}" if needs.engine_alternative else "")
        )
    if generation.lora_sync == "adapter":
        raise ConfigError(
            f"{at}: it generates with the engine's base model, which with generation.lora_sync: adapter is not the "
            "policy; use lora_sync: merged"
        )


def build_reward_from_terms(
    terms: Sequence[RewardTerm],
    policy_engine: PolicyEngine | None = None,
    where: str = "reward",
    model_servers: ModelServers | None = None,
) -> WeightedSum:
    """The configured reward: the weighted sum of its terms, each with what it needs. Errors name the term (in the
    list `where`). A term that needs the policy engine (a `policy` judge) gets `policy_engine` (by default a
    detached one of its own: checking a config needs no engine), one that needs a server started gets
    `model_servers` (by default a holder nobody starts); reward terms among a term's arguments (a `human` term's
    `fallback`) are built first, into one reward."""
    built = []
    for i, term in enumerate(terms):
        at = f"{where}[{i}]"
        needs = term_needs(term, at)
        args = dict(term.args)
        for arg in needs.rewards:
            if args.get(arg) is not None:
                args[arg] = build_reward_from_terms(
                    _sub_terms(term, arg, at), policy_engine, f"{at}.args.{arg}", model_servers
                )
        try:
            reward = build_reward(term.name, args, policy_engine, model_servers)
        except RewardConfigError as exc:
            raise ConfigError(f"{at} ({term.name}): {exc}") from None
        label = term.label or _default_label(term, i, terms)
        built.append(Term(reward, term.weight, label, term.normalize, term.when, needs))
    try:  # a sum even of one term: every backend's metrics are then reward/<label>/...
        return WeightedSum(built)
    except RewardConfigError as exc:
        raise ConfigError(f"{where}: {exc}; give the terms distinct label:s") from None


def term_needs(term: RewardTerm, at: str) -> Needs:
    """What the reward of `term` (at `at` in the config) needs from the job, as it declares."""
    try:
        return reward_needs(term.name, term.args)
    except RewardConfigError as exc:
        raise ConfigError(f"{at} ({term.name}): {exc}") from None


def _sub_terms(term: RewardTerm, arg: str, at: str) -> list[RewardTerm]:
    """The reward terms a term holds in its argument `arg` (a `human` term's `fallback`), checked as reward terms:
    they score what people do not, so none of them asks people."""
    where = f"{at}.args.{arg}"
    try:
        terms = TypeAdapter(list[RewardTerm]).validate_python(term.args[arg])
    except ValidationError as exc:
        problem = exc.errors()[0]
        loc = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"])
        raise ConfigError(f"{where}{loc}: {problem['msg']}") from None
    if not terms or any(term_needs(sub, f"{where}[{j}]").people for j, sub in enumerate(terms)):
        raise ConfigError(f"{where}: give the reward terms (a judge, a reward model...) that score what people do not")
    return terms


def _default_label(term: RewardTerm, index: int, terms: Sequence[RewardTerm]) -> str:
    """A term's metric name: the reward's name, numbered when several terms share it."""
    name = term.name.rpartition(":")[2] if ":" in term.name else term.name
    if sum(t.name == term.name and not t.label for t in terms) > 1:
        return f"{name}#{index}"
    return name
