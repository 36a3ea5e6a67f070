"""How a reward is named: a built-in by its registered name, or user code by import path.

- `contains`, `forbids`, `length`, ...: built-ins, registered once each in `REWARDS` with what they need from the
  job (`Needs`; a second registration under the same name is an error, not a silent override). A program that
  runs rewards registers its own beside them (`REWARDS.register`), and keeps other kinds of named callables in
  registries of its own (`Registry`).
- `package.module:function` or `path/to/file.py:function`: a per-response function
  `function(completion: str, prompt: dict, **args) -> float`. It is called once per response; if it raises or
  returns NaN/inf, that response is left out and counted, never scored 0.
- a function marked `batched = True`: `function(completions: list[str], prompts: list[dict], **args) ->
  list[float]`, called once for many responses at a time, as TRL's reward functions are.
- `package.module:Class` (or a factory function marked with `group_reward = True`) called with `**args` must
  return an object with `score_group(prompt, responses)`: a group-level reward (judges, reward models). Its
  `needs` attribute, if any, says what it needs from the job, as a built-in's registration does.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reward.base import Failed, Group, GroupReward, Needs, RewardConfigError, Score, regrouped

# What a factory needs, as declared: fixed, or worked out from its arguments (the config's, defaults filled in).
DeclaredNeeds = Needs | Callable[[Mapping[str, Any]], Needs]


class Registry:
    """Built-in callables of one kind, by name, each with what it needs (`Needs`); a second registration under a
    name is an error, not a silent override. Anything else is named by import path ('module:attr' or
    'file.py:attr')."""

    def __init__(self, kind: str, builtins_from: Sequence[str] = ()) -> None:
        self.kind = kind
        self._builtins_from = list(builtins_from)  # modules whose import registers the built-ins
        self._entries: dict[str, Callable[..., Any]] = {}
        self._needs: dict[str, DeclaredNeeds] = {}

    def register(
        self, name: str, needs: DeclaredNeeds | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated callable under `name`, needing `needs` (nothing by default)."""

        def add(entry: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise RewardConfigError(f"a {self.kind} named {name!r} is registered already")
            self._entries[name] = entry
            self._needs[name] = needs if needs is not None else Needs()
            return entry

        return add

    def include(self, module: str) -> None:
        """Built-ins of a program that runs rewards, beside the package's own: `module` registers them when it is
        imported, which happens, as for the package's own, when the registry is first read (not now: the program's
        module may import a good deal, and whoever only names rewards should not pay for it)."""
        if module not in self._builtins_from:
            self._builtins_from.append(module)

    def declared_needs(self, name: str) -> DeclaredNeeds:
        """What the built-in called `name` was registered as needing."""
        self._load_builtins()
        return self._needs[name]

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def is_builtin(self, name: str) -> bool:
        self._load_builtins()
        return name in self._entries

    def resolve(self, name: str) -> Callable[..., Any]:
        """The built-in called `name`, or the object at import path `name`."""
        if self.is_builtin(name):
            return self._entries[name]
        if ":" not in name:
            raise RewardConfigError(
                f"unknown {self.kind} {name!r}: use a built-in ({', '.join(self.names())}) or an import path "
                "'module:function' / 'path/to/file.py:function'"
            )
        return load_object(name)

    def _load_builtins(self) -> None:
        for module in self._builtins_from:
            importlib.import_module(module)


REWARDS = Registry("reward", builtins_from=("reward.judge", "reward.reward_model", "reward.rules"))


def register(
    name: str, needs: DeclaredNeeds | None = None
) -> Callable[[Callable[..., GroupReward]], Callable[..., GroupReward]]:
    """Register a reward factory under `name`, with what it needs from the job (`needs`: a `Needs`, or a function
    of the factory's arguments returning one)."""
    return REWARDS.register(name, needs)


def builtin_names() -> list[str]:
    return REWARDS.names()


def reward_needs(name: str, args: Mapping[str, Any] | None = None) -> Needs:
    """What the reward called `name`, built with `args`, needs from the job: its registration's `Needs`, or for an
    import path the `needs` attribute of the object there (a per-response function needs nothing). Bad arguments
    are refused here, as building would refuse them."""
    args = dict(args or {})
    for handed in ("policy_engine", "model_servers"):
        if handed in args:
            raise RewardConfigError(f"reward {name!r}: {handed} is not an argument a config can set")
    target = REWARDS.resolve(name)
    if not _is_factory(name, target):
        return Needs()
    declared = REWARDS.declared_needs(name) if REWARDS.is_builtin(name) else getattr(target, "needs", Needs())
    if isinstance(declared, Needs):
        return declared
    try:
        bound = inspect.signature(target).bind(**args)
    except TypeError as exc:
        raise RewardConfigError(f"reward {name!r}: bad arguments {sorted(args)}: {exc}") from None
    bound.apply_defaults()
    return declared(bound.arguments)


def build_reward(
    name: str, args: Mapping[str, Any] | None = None, policy_engine: Any = None, model_servers: Any = None
) -> GroupReward:
    """The reward called `name` (a built-in or an import path), built with `args`. A factory that needs the policy
    engine (`Needs.policy_engine`: the `policy` judge) is handed `policy_engine`, the job's `PolicyEngine`; one
    that needs a server started (`Needs.servers`), `model_servers`, the job's `ModelServers` (a holder of its
    own by default: nothing starts it)."""
    needs = reward_needs(name, args)
    args = dict(args or {})
    target = REWARDS.resolve(name)
    if _is_factory(name, target):
        if needs.policy_engine:
            args["policy_engine"] = policy_engine
        if needs.servers:
            args["model_servers"] = model_servers
        reward = _call_factory(target, name, args)
        if not callable(getattr(reward, "score_group", None)):
            raise RewardConfigError(f"{name} built an object without a score_group(prompt, responses) method")
        return reward
    if not callable(target):
        raise RewardConfigError(f"{name} is not callable")
    if getattr(target, "batched", False):
        _check_call(target, ([], []), args, f"{name} is marked batched, and", "completions, prompts")
        return BatchFunctionReward(name, target, args)
    _check_call(target, ("completion", {}), args, name, "completion, prompt")
    return FunctionReward(name, target, args)


def _check_call(
    target: Callable[..., Any], given: tuple[Any, ...], args: Mapping[str, Any], who: str, shown: str
) -> None:
    """Refuse a user function that cannot be called with `given` and `args` (`shown`: how the message writes
    `given`)."""
    try:
        inspect.signature(target).bind(*given, **args)
    except TypeError as exc:
        raise RewardConfigError(
            f"{who} cannot be called as {target.__name__}({shown}" + "".join(f", {k}=..." for k in args) + f"): {exc}"
        ) from None
    except ValueError:  # builtins without a signature: let the call tell
        pass


def _is_factory(name: str, target: Any) -> bool:
    """Whether `target` builds a group reward (a built-in, a class, a factory marked `group_reward`), rather than
    being a per-response function."""
    return REWARDS.is_builtin(name) or inspect.isclass(target) or getattr(target, "group_reward", False)


def load_object(path: str) -> Any:
    """Import `module:attr` or `file.py:attr` and return the attribute, with errors that say what is missing."""
    module_name, _, attr = path.rpartition(":")
    if not module_name or not attr:
        raise RewardConfigError(f"bad import path {path!r}: expected 'module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        file = pathlib.Path(module_name)
        if not file.is_file():
            raise RewardConfigError(f"reward file not found: {file}")
        spec = importlib.util.spec_from_file_location(f"reward_user_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise RewardConfigError(f"importing {file} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise RewardConfigError(f"cannot import module {module_name!r} for reward {path!r}: {exc}") from None
        except Exception as exc:
            raise RewardConfigError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RewardConfigError(f"module {module_name!r} has no attribute {attr!r}") from None


def _call_factory(factory: Callable[..., GroupReward], name: str, args: dict[str, Any]) -> GroupReward:
    try:
        inspect.signature(factory).bind(**args)
    except TypeError as exc:
        raise RewardConfigError(f"reward {name!r}: bad arguments {sorted(args)}: {exc}") from None
    try:
        return factory(**args)
    except RewardConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise RewardConfigError(f"reward {name!r}: {exc}") from None


class BatchFunctionReward:
    """A function marked `batched = True`: `function(completions, prompts, **args) -> list[float]`, called once
    for many responses (as TRL's reward functions are), `prompts[i]` the prompt record of `completions[i]`. A
    raise fails the responses of that call; a non-number, that response."""

    def __init__(self, name: str, function: Callable[..., Sequence[float]], args: Mapping[str, Any]) -> None:
        self.name = name
        self.function = function
        self.args = dict(args)

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        return self.score_groups([(prompt, responses)])[0]

    def score_groups(self, groups: Sequence[Group]) -> list[list[Score]]:
        completions = [response for _, responses in groups for response in responses]
        prompts = [prompt for prompt, responses in groups for _ in responses]
        values = list(self.function(completions, prompts, **self.args))
        if len(values) != len(completions):
            raise ValueError(f"returned {len(values)} scores for {len(completions)} completions")
        return regrouped([check_score(value) for value in values], groups)


class FunctionReward:
    """A per-response function as a group reward; a raise or a non-number marks that response failed."""

    def __init__(self, name: str, function: Callable[..., float], args: Mapping[str, Any]) -> None:
        self.name = name
        self.function = function
        self.args = dict(args)

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        return [self._one(prompt, response) for response in responses]

    def _one(self, prompt: Mapping[str, Any], response: str) -> Score:
        try:
            value = self.function(response, prompt, **self.args)
        except Exception as exc:
            return Failed(f"raised {type(exc).__name__}: {exc}", "error")
        return check_score(value)


def check_score(value: object) -> Score:
    """A finite float, or `Failed` saying why `value` is not one."""
    if isinstance(value, Failed):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or type(value).__name__ == "bool_":
        return Failed(f"returned {type(value).__name__} {value!r}, not a number", "invalid")
    if not math.isfinite(value):
        return Failed(f"returned {value}", "nonfinite")
    return float(value)  # numpy's numbers too (an np.int64 is no int)
