"""Reward backends for ranking sampled responses: rule rewards, user callables, reward models, LLM judges, and
weighted sums of them.

A reward scores the K responses to one prompt together (`GroupReward.score_group`); see `reward.base`.
This package does not import the training loop.
"""

from reward.base import (
    BatchReward,
    Failed,
    Group,
    GroupReward,
    Meter,
    Needs,
    Response,
    RewardConfigError,
    RoundGroups,
    Score,
    score_groups,
)
from reward.composite import Term, WeightedSum, matches
from reward.registry import Registry, build_reward, builtin_names, register, reward_needs

__all__ = [
    "BatchReward",
    "Failed",
    "Group",
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
    "score_groups",
]
