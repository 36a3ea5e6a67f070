"""How a launcher (torchrun, accelerate launch) marks the processes it starts: how many it started, and the
variables a process the job starts itself (a vLLM server) must not inherit."""

from __future__ import annotations

import os

LAUNCHED_PROCESSES = "WORLD_SIZE"  # what torchrun and accelerate launch set in every process they start
# What the launchers set to make a process one of theirs: a process the job starts (a vLLM server) drops them, or
# its engine would try to join the training processes' group.
LAUNCHER_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
    "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_ERROR_FILE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "ACCELERATE_DYNAMO_BACKEND",
)  # fmt: skip


def launched_processes() -> int:
    """How many processes the launcher started for this job (1 without a launcher)."""
    return int(os.environ.get(LAUNCHED_PROCESSES, "1"))


def local_processes() -> int:
    """How many of the job's processes the launcher started on this node (1 without a launcher)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get(LAUNCHED_PROCESSES, "1")))
