"""`onpolicy sweep CONFIG --grid KEY=V1,V2 ... [--seeds N]`: every combination of the grid's values, each seed,
as runs of their own, one after another.

Each run is an ordinary `onpolicy run CONFIG KEY=VALUE ... seed=S` in a fresh process, in its own run
directory under `--out` (named by its values), in one W&B group (the sweep's name). Running the same sweep
again resumes it: finished runs say so and are skipped, an interrupted one continues from its last complete
round. A run that fails does not stop the others; the sweep then ends with exit code 2 naming it.

Users who spread a sweep over machines use W&B's own scheduler instead: `--wandb-sweep FILE` writes a W&B sweep
config (grid method) whose `wandb agent`s each run `onpolicy run CONFIG KEY=VALUE ...`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import pathlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from onpolicy.config import load_config
from onpolicy.config.loading import parse_override
from onpolicy.errors import OnpolicyError
from onpolicy.run.stopping import PassedOn


@dataclasses.dataclass(frozen=True)
class SweepRun:
    overrides: tuple[str, ...]  # KEY=VALUE, seed=S and the W&B group
    run_dir: pathlib.Path


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """`KEY=V1,V2` items as {KEY: [V1, V2]} (values as written: each is parsed like a command-line override)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise OnpolicyError(f"--grid {item!r}: give KEY=VALUE1,VALUE2 (e.g. train.beta=0.1,0.3)")
        if key.strip() in grid:
            raise OnpolicyError(f"--grid: {key.strip()} is given twice")
        grid[key.strip()] = [value.strip() for value in _split_values(values)]
    return grid


def plan(
    config: str, grid: dict[str, list[str]], seeds: int, out: pathlib.Path, overrides: Sequence[str] = ()
) -> list[SweepRun]:
    """Every run of the sweep, each config checked (a bad value fails here, before any run starts)."""
    if seeds < 1:
        raise OnpolicyError(f"--seeds {seeds}: give 1 or more")
    if "seed" in grid:
        raise OnpolicyError("--grid seed=...: use --seeds N for seeds")
    base_seed = load_config(config, overrides).seed
    group = out.name
    runs = []
    for values in itertools.product(*grid.values()):
        for seed in range(base_seed, base_seed + seeds):
            chosen = [f"{key}={value}" for key, value in zip(grid, values)]
            run_overrides = (*overrides, *chosen, f"seed={seed}", f"wandb.group={group}")
            load_config(config, run_overrides)
            runs.append(SweepRun(run_overrides, out / _dir_name([*chosen, f"seed={seed}"])))
    return runs


def run_sweep(config: str, runs: Sequence[SweepRun], echo: Callable[[str], None] = print) -> list[SweepRun]:
    """Run each planned run in a fresh process, one after another; returns those that failed. A SIGINT or SIGTERM
    goes on to the run in flight, which stops at its next safe point (`onpolicy.run.stopping`); the sweep waits for
    it and then raises `Stopped`, starting no other run (a sweep that died at once would leave its run going on
    alone, holding the run directory that resuming the sweep needs)."""
    failed = []
    with PassedOn() as runner:
        for i, run in enumerate(runs, start=1):
            runner.check()
            echo(f"sweep {i}/{len(runs)}: {' '.join(run.overrides)} -> {run.run_dir}")
            command = [sys.executable, "-m", "onpolicy.cli", "run", config, *run.overrides, "--run-dir",
                       str(run.run_dir)]  # fmt: skip
            returncode = runner.run(command)
            if runner.signum is not None:
                echo(f"sweep {i}/{len(runs)}: stopped (exit code {returncode})")
            elif returncode != 0:
                echo(f"sweep {i}/{len(runs)}: failed (exit code {returncode}); the sweep goes on")
                failed.append(run)
        runner.check()
    return failed


def wandb_sweep_config(config: str, grid: dict[str, list[str]], seeds: int, base_seed: int) -> dict[str, Any]:
    """A W&B sweep (grid method) over the same values: each agent runs `onpolicy run CONFIG KEY=VALUE ...`."""
    parameters = {key: {"values": [parse_override(f"{key}={v}")[1] for v in values]} for key, values in grid.items()}
    parameters["seed"] = {"values": list(range(base_seed, base_seed + seeds))}
    return {
        "program": "onpolicy",
        "method": "grid",
        "parameters": parameters,
        "command": ["${env}", "onpolicy", "run", str(pathlib.Path(config).resolve()), "${args_no_hyphens}"],
    }


def write_wandb_sweep(file: pathlib.Path, config: str, grid: dict[str, list[str]], seeds: int) -> None:
    sweep = wandb_sweep_config(config, grid, seeds, load_config(config).seed)
    file.write_text(yaml.safe_dump(sweep, sort_keys=False))


def _split_values(values: str) -> list[str]:
    """Comma-separated values, commas inside brackets or braces kept (`train.lora={r: 8},{r: 16}`)."""
    parts, depth, current = [], 0, ""
    for char in values:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _dir_name(parts: Sequence[str]) -> str:
    """A folder name from KEY=VALUE parts (the last one `seed=N`): readable, safe on any filesystem, and unique
    by construction. A name the parts give as they are is the parts; a name that had to lose characters (replaced,
    or cut at 180) ends with `.h` and a digest of the parts, so two grid points never share a folder: a name
    without a digest ends in `=` and digits (the seed), one with a digest does not."""
    joined = ",".join(parts)
    safe = re.sub(r"[^A-Za-z0-9=.,_+-]+", "_", joined).strip("_")
    if safe == joined and len(safe) <= _NAME_LENGTH:
        return safe
    digest = hashlib.sha256(joined.encode()).hexdigest()[:12]
    return f"{safe[:_NAME_LENGTH]}.h{digest}"


_NAME_LENGTH = 180  # with a digest, 194 characters: under the 255 bytes of common file systems
