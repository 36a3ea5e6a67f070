"""Reward backends for ranking sampled responses: rule rewards, user callables, weighted sums.

A reward scores the K responses to one prompt together (`GroupReward.score_group`); see `reward.base`.
This package does not import the training loop.
"""

from reward.base import Failed, GroupReward, RewardConfigError, Score
from reward.registry import Conditional, WeightedSum, build_reward, builtin_names, matches, register

__all__ = [
    "Conditional",
    "Failed",
    "GroupReward",
    "RewardConfigError",
    "Score",
    "WeightedSum",
    "build_reward",
    "builtin_names",
    "matches",
    "register",
]
