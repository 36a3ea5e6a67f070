"""Logging rounds to Weights & Biases: one W&B step per round, never a crash because W&B is unreachable.

`wandb.mode: auto` runs online when credentials exist (WANDB_API_KEY, or a `wandb login`), offline otherwise;
offline runs land under the run directory's `wandb/` and can be uploaded later with `wandb sync`. If W&B fails
to start online, the run goes on offline; if it fails to log, the round is still in `rounds.jsonl` and the run
goes on with a warning.
"""

from __future__ import annotations

import logging
import netrc
import os
import pathlib
import urllib.parse
from collections.abc import Mapping
from typing import Any, Protocol

from onpolicy.config import WandbConfig

log = logging.getLogger(__name__)


Table = tuple[list[str], list[list[Any]]]  # (columns, rows)


class RoundLogger(Protocol):
    def log_round(
        self, round_number: int, metrics: Mapping[str, Any], tables: Mapping[str, Table] | None = None
    ) -> None: ...

    def finish(self) -> None: ...


class NullLogger:
    """Logs nothing (wandb.mode: disabled)."""

    mode = "disabled"

    def log_round(
        self, round_number: int, metrics: Mapping[str, Any], tables: Mapping[str, Table] | None = None
    ) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger:
    """A W&B run whose step is the round number."""

    def __init__(self, run: Any, mode: str) -> None:
        self.run = run
        self.mode = mode
        self._warned = False

    def log_round(
        self, round_number: int, metrics: Mapping[str, Any], tables: Mapping[str, Table] | None = None
    ) -> None:
        try:
            import wandb

            payload = dict(metrics)
            for name, (columns, rows) in (tables or {}).items():
                payload[name] = wandb.Table(columns=columns, data=rows)
            self.run.log(payload, step=round_number)
        except Exception as exc:  # the round is in rounds.jsonl already; W&B trouble must not end the job
            if not self._warned:
                log.warning("W&B could not log round %d (%s); rounds.jsonl keeps every round", round_number, exc)
                self._warned = True

    def finish(self) -> None:
        try:
            self.run.finish()
        except Exception as exc:
            log.warning("W&B did not finish cleanly: %s", exc)


def resolve_mode(config: WandbConfig) -> str:
    """online / offline / disabled, deciding `auto` from the environment and stored credentials."""
    if config.mode != "auto":
        return config.mode
    env = os.environ.get("WANDB_MODE")
    if env in {"online", "offline", "disabled"}:
        return env
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:  # `wandb login` stores the key in ~/.netrc
        return "online" if netrc.netrc().authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


def start_logger(config: WandbConfig, run_dir: pathlib.Path, run_config: Mapping[str, Any]) -> RoundLogger:
    """A W&B run for this job (offline when online fails), or a null logger when disabled."""
    mode = resolve_mode(config)
    if mode == "disabled":
        return NullLogger()
    import wandb

    attempts = [mode] if mode == "offline" else [mode, "offline"]
    for attempt in attempts:
        try:
            run = wandb.init(
                project=config.project,
                entity=config.entity,
                name=config.name or run_dir.name,
                group=config.group,
                tags=config.tags or None,
                dir=str(run_dir),
                config=dict(run_config),
                mode=attempt,
                settings=wandb.Settings(init_timeout=config.init_timeout, silent=True, console="off"),
            )
            return WandbLogger(run, attempt)
        except Exception as exc:
            log.warning("W&B could not start in %s mode (%s)", attempt, exc)
    log.warning("W&B is off for this run; every round is still written to %s", run_dir / "rounds.jsonl")
    return NullLogger()
