"""Under two or more pytest-xdist workers, each worker holds its own share of the CPUs, and the engines and CLI
runs it starts are told to compute on exactly those (tests/conftest.py)."""

import os

import pytest


@pytest.mark.skipif("PYTEST_XDIST_WORKER" not in os.environ, reason="the suite runs in one process")
def test_a_worker_computes_on_its_own_cores_only():
    mine = sorted(os.sched_getaffinity(0))
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    assert len(mine) <= max(os.cpu_count() // workers, 1)  # a share, not every core
    assert os.environ["OMP_NUM_THREADS"] == str(len(mine))
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, mine))
