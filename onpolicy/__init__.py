"""onpolicy: online, on-policy iterative DPO.

Each round: generate K responses per prompt with vLLM from the current policy, score them, pair best vs worst,
run a DPO update with TRL, move the new weights into the running engine, refresh the reference, log the round.
"""

from reward.registry import REWARDS

__version__ = "0.1.0"

# onpolicy's own reward joins the reward package's built-ins: `human` (people label the round's groups in a page
# the job serves), registered by its module once the registry is first read
REWARDS.include("onpolicy.human.reward")
