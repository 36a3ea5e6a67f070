"""What every benchmark shares: the embedded model, repeated timing, the machine line and the table printer."""

from __future__ import annotations

import concurrent.futures
import datetime
import multiprocessing
import os
import pathlib
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from onpolicy.cli import quiet_libraries

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("WANDB_MODE", "offline")
quiet_libraries(verbose=False)  # one table on stdout, not the libraries' logs


def embedded_model() -> str:
    """The embedded SmolLM2-135M-Instruct as an HF folder (converted once into the onpolicy cache)."""
    from onpolicy.config import ModelConfig
    from onpolicy.run.model_store import resolve_model

    return str(resolve_model(ModelConfig()))


def run_identity_demo(
    overrides: Sequence[str],
    echo: Callable[[str], None] = lambda line: None,
    inspect: Callable[[pathlib.Path], None] = lambda run: None,
    config_name: str = "identity.yaml",
) -> list[dict]:
    """configs/identity.yaml (or another shipped `config_name`) with `overrides` (W&B offline) in a temporary run
    directory: every round's record from rounds.jsonl, round 0 (the evaluation of the initial policy, where the
    config has one) included. `inspect` sees the run directory before it is deleted."""
    from onpolicy.config import load_config
    from onpolicy.loop import run_job
    from onpolicy.run.rundir import RunDirectory

    root = pathlib.Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / config_name, ["wandb.mode=offline", *overrides])
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        run = pathlib.Path(folder) / "run"
        run_job(config, run, echo=echo)
        inspect(run)
        return RunDirectory(run).read_rounds()


def run_identity_demo_alone(overrides: Sequence[str], config_name: str = "identity.yaml") -> list[dict]:
    """`run_identity_demo` in a fresh process (`alone`), for benchmarks that compare jobs."""
    return alone(run_identity_demo, list(overrides), config_name=config_name)


def alone(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` in a fresh process: a job's peak memory (`perf/peak_rss_gib`, the process's
    high-water mark) is then its own, not the largest of the jobs before it, and no job meets the process-wide
    state an earlier vLLM engine left (an engine with LoRA support fails to start after another engine in the
    same process). `function` must be importable (a module's top-level function)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args, **kwargs).result()


def median_seconds(action: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """The median wall-clock seconds of `repeats` calls of `action`, and every timing."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def machine() -> str:
    """One line saying when and on what a benchmark ran."""
    import torch

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{datetime.date.today().isoformat()}; {cpu}, {os.cpu_count()} cores, {gpu}; "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table (pastes into docs/performance.md as it is)."""
    print(f"\n{title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(_cell(value) for value in row) + " |")
    print(f"\n{machine()}")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
