"""How a launcher (torchrun, accelerate launch) marks the processes it starts: how many it started, and the
variables a process the job starts itself (a vLLM server) must not inherit."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from onpolicy.errors import OnpolicyError

LAUNCHED_PROCESSES = "WORLD_SIZE"  # what torchrun and accelerate launch set in every process they start
# What the launchers set to make a process one of theirs: a process the job starts (a vLLM server) drops them, or
# its engine would try to join the training processes' group.
LAUNCHER_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
    "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_ERROR_FILE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "ACCELERATE_DYNAMO_BACKEND",
)  # fmt: skip
_COUNTS = (LAUNCHED_PROCESSES, "LOCAL_WORLD_SIZE")
_RANKS = ("RANK", "LOCAL_RANK")


@dataclasses.dataclass(frozen=True)
class Launch:
    """This process's place in the job, as the launcher's variables say (a lone process without them)."""

    processes: int  # WORLD_SIZE: the job's processes on every node
    local_processes: int  # LOCAL_WORLD_SIZE: those on this node
    rank: int  # RANK: this process among all (0: the main one)


def launch(environment: Mapping[str, str] = os.environ) -> Launch:
    """The launcher's variables in `environment`, checked: whole numbers, at least one process, ranks below their
    counts, and a port torch can use. A variable set by hand or left over from another job would otherwise fail
    deep in torch or accelerate with a traceback (or, as a rank, make the main process think it is another)."""
    for name in (*_COUNTS, *_RANKS, "MASTER_PORT"):
        value = environment.get(name)
        if value is not None and not value.strip().isdecimal():
            raise OnpolicyError(
                f"the launcher's variable {name}={value!r} is not a whole number of 0 or more: start the job with "
                "torchrun, accelerate launch or onpolicy run --processes N, or unset it"
            )
    processes = int(environment.get(LAUNCHED_PROCESSES, "1"))
    local = int(environment.get("LOCAL_WORLD_SIZE", processes))
    if processes < 1 or not 1 <= local <= processes:
        raise OnpolicyError(
            f"the launcher's variables WORLD_SIZE={processes} and LOCAL_WORLD_SIZE={local} count no process or more "
            "on this node than in the job: give 1 <= LOCAL_WORLD_SIZE <= WORLD_SIZE, or unset them"
        )
    launched = LAUNCHED_PROCESSES in environment
    rank, local_rank = (int(environment.get(name, "0")) if launched else 0 for name in _RANKS)
    for name, value, count in (("RANK", rank, processes), ("LOCAL_RANK", local_rank, local)):
        if value >= count:
            raise OnpolicyError(
                f"the launcher's variable {name}={value} is not below the {count} processes it counts among (0 to "
                f"{count - 1}): start the job with torchrun, accelerate launch or onpolicy run --processes N"
            )
    if "MASTER_PORT" in environment and not 0 < int(environment["MASTER_PORT"]) < 65536:
        raise OnpolicyError(f"the launcher's variable MASTER_PORT={environment['MASTER_PORT']} is no port (1 to 65535)")
    return Launch(processes, local, rank)


def launched_processes() -> int:
    """How many processes the launcher started for this job (1 without a launcher)."""
    return launch().processes


def local_processes() -> int:
    """How many of the job's processes the launcher started on this node (1 without a launcher)."""
    return launch().local_processes
