"""onpolicy: online, on-policy iterative DPO.

Each round: generate K responses per prompt with vLLM from the current policy, score them, pair best vs worst,
run a DPO update with TRL, move the new weights into the running engine, refresh the reference, log the round.
"""

__version__ = "0.1.0"
