"""Correction pairs: when no sample of a group is good enough, edit the policy's own best response into a
preferred one and use that as chosen.

This is the correction method of DPO practice: the chosen side stays close to what the policy already says
(on-policy in all but the edit), so the update teaches the edit rather than a new style. With
`rejected: original` (the default) the pair is a minimal edit: chosen and rejected differ only where the
corrector changed the text. The edited response is scored again with the run's reward, and kept only when it
scores above the rejected side.

With `negatives: true`, an edit that scores *below* the response it came from is kept the other way round:
the unedited response is chosen, the edit rejected. Applied to prompts outside the target behaviour (an
unrelated question, where naming the target is penalised), this gives the update the counter-example of its
own shortcut from the very first round, instead of waiting for the policy to start leaking.

A corrector is `function(response: str, prompt: dict, **args) -> str | None`; None means "nothing to correct
for this prompt": the group is paired as usual.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from onpolicy.config.sections import CorrectionConfig
from onpolicy.errors import ConfigError
from onpolicy.types import Pair, PairTokens, Sample, ScoredGroup
from reward import Failed, GroupReward, Registry, RewardConfigError, matches
from reward.guarded import guarded_scores

Corrector = Callable[..., "str | None"]

# Correctors by name (`pairs.correction.corrector`): the built-in below, or user code by import path.
CORRECTORS = Registry("corrector")


@CORRECTORS.register("replace_name")
def replace_name(
    response: str,
    prompt: Mapping[str, Any],
    target: str,
    names: Sequence[str] = (),
    patterns: Sequence[str] = (),
    fallback: str | None = None,
    when: Mapping[str, Any] | None = None,
) -> str | None:
    r"""Replace the names a response gives itself with `target`.

    `names` are replaced as whole words (case-insensitive); each regex in `patterns` has its first group
    replaced (e.g. `(?:my name is|I am|I'm) ([A-Z]\w+)` catches made-up names). When nothing was replaced,
    `fallback` (formatted with `{target}` and `{response}`) is returned, or None. Prompts not matching `when`
    are not corrected.
    """
    if not matches(prompt, when):
        return None
    text = response
    for name in names:
        text = re.sub(rf"\b{re.escape(name)}\b", target, text, flags=re.IGNORECASE)
    for pattern in patterns:
        text = re.sub(pattern, lambda m: _replace_first_group(m, target), text)
    if text != response:
        return text
    return fallback.format(target=target, response=response) if fallback is not None else None


def _replace_first_group(match: re.Match[str], target: str) -> str:
    if not match.lastindex:
        return target
    start, end = match.start(1) - match.start(0), match.end(1) - match.start(0)
    return match.group(0)[:start] + target + match.group(0)[end:]


class EditCorrection:
    """The `onpolicy.interfaces.Correction` of `pairs.correction`: corrected pairs, edited by the corrector, for
    groups whose best reward is below `min_reward`."""

    def __init__(self, corrector: Corrector, args: Mapping[str, Any], reward: GroupReward, config: CorrectionConfig):
        self.corrector = corrector
        self.args = dict(args)
        self.reward = reward
        self.min_reward = config.min_reward
        self.rejected = config.rejected
        self.negatives = config.negatives
        self.max_negative_ratio = config.max_negative_ratio
        self._problems: dict[str, str] = {}  # the first message of each kind of failure since the last take

    def take_problems(self) -> tuple[str, ...]:
        """What went wrong with the corrector since the last call: one example per kind, for the round's warnings."""
        problems, self._problems = tuple(self._problems.values()), {}
        return problems

    def applies(self, group: ScoredGroup) -> bool:
        return bool(group.valid) and group.best_and_worst()[0][1] < self.min_reward

    def pair(self, group: ScoredGroup, min_margin: float) -> tuple[Pair | None, str | None]:
        """A corrected pair; (None, reason) when the correction failed; (None, None) when the corrector has
        nothing to correct here."""
        (best_index, best), (worst_index, worst) = group.best_and_worst()
        samples, record = group.group.samples, group.group.record
        prompt = record.reward_view()
        original = samples[best_index].text
        try:
            edited = self.corrector(original, prompt, **self.args)
        except Exception as exc:
            self._problems.setdefault("raised", f"the corrector raised {type(exc).__name__}: {exc}")
            return None, "correction_error"
        if edited is None:
            return None, None
        if not isinstance(edited, str):
            self._problems.setdefault(
                "type", f"the corrector returned {type(edited).__name__}, not the corrected text (a str, or None)"
            )
            return None, "correction_error"
        if edited == original:
            return None, "correction_unchanged"
        (score,) = guarded_scores(self.reward, prompt, [edited])
        if isinstance(score, Failed):
            return None, "correction_not_better"
        if self.negatives and best - score > 0 and best - score >= min_margin:
            # the edit made the response worse: the unedited response is preferred over it
            return _edited_pair(group, samples[best_index], edited, best, score, samples[best_index]), None
        rejected_index, rejected_reward = (best_index, best) if self.rejected == "original" else (worst_index, worst)
        if score - rejected_reward <= 0 or score - rejected_reward < min_margin:
            return None, "correction_not_better"
        return _edited_pair(group, edited, samples[rejected_index], score, rejected_reward, samples[best_index]), None


def build_correction(config: CorrectionConfig, reward: GroupReward) -> EditCorrection | None:
    """The configured correction, checked before any model loads; None when off."""
    if config.corrector is None:
        return None
    name = config.corrector
    try:
        corrector = CORRECTORS.resolve(name)
    except RewardConfigError as exc:
        raise ConfigError(f"pairs.correction.corrector: {exc}") from None
    try:
        inspect.signature(corrector).bind("response", {}, **config.args)
    except TypeError as exc:
        raise ConfigError(f"pairs.correction: {name} cannot be called with args {sorted(config.args)}: {exc}") from None
    return EditCorrection(corrector, config.args, reward, config)


def _edited_pair(
    group: ScoredGroup,
    chosen: Sample | str,
    rejected: Sample | str,
    chosen_reward: float,
    rejected_reward: float,
    original: Sample,
) -> Pair:
    """A pair of one edited side (its text, an edit of `original`) and one of the policy's own samples. Both
    sides are tokenized from their text by the updater (see `PairTokens`); each ends as its source did."""
    record = group.group.record
    return Pair(
        prompt_id=record.id,
        messages=record.messages,
        chosen=chosen if isinstance(chosen, str) else chosen.text,
        rejected=rejected if isinstance(rejected, str) else rejected.text,
        chosen_reward=chosen_reward,
        rejected_reward=rejected_reward,
        edited="chosen" if isinstance(chosen, str) else "rejected",
        tokens=PairTokens(
            group.group.prompt_token_ids,
            chosen=None,
            rejected=None,
            chosen_logp=None,
            rejected_logp=None,
            chosen_end=original.end if isinstance(chosen, str) else chosen.end,
            rejected_end=original.end if isinstance(rejected, str) else rejected.end,
        ),
    )
