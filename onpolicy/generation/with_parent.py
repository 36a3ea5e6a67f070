"""`python -m onpolicy.generation.with_parent COMMAND...`: run COMMAND as a process that ends when the process that started
it dies, however it dies (SIGKILL and the OOM killer included).

A vLLM server the job starts must not outlive the job: a clean exit stops it, but a killed job has no say, and its
server would go on holding a port, memory and perhaps a GPU. On Linux the kernel sends this process SIGTERM when
its parent dies (`PR_SET_PDEATHSIG`, which survives the `exec` into COMMAND); vLLM's server shuts down on SIGTERM.
Elsewhere COMMAND simply runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(command: list[str]) -> None:
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            sys.exit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
