"""Reward backends for ranking sampled responses: rule rewards, user callables, reward models, LLM judges, and
weighted sums of them.

A reward scores the K responses to one prompt together (`GroupReward.score_group`); see `reward.base`.
This package does not import the training loop.
"""

from reward.base import (
    Failed,
    GroupReward,
    Meter,
    Needs,
    Response,
    RewardConfigError,
    RoundGroups,
    Score,
)
from reward.composite import Term, WeightedSum, matches
from reward.registry import Registry, build_reward, builtin_names, register, reward_needs

__all__ = [
    "Failed",
    "GroupReward",
    "Meter",
    "Needs",
    "Response",
    "Registry",
    "RewardConfigError",
    "RoundGroups",
    "Score",
    "Term",
    "WeightedSum",
    "build_reward",
    "builtin_names",
    "matches",
    "register",
    "reward_needs",
]
