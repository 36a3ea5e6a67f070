"""Logging rounds to Weights & Biases (`onpolicy.interfaces.RoundLogger`): one W&B step per round, never a crash
because W&B is unreachable.

`wandb.mode: auto` runs online when credentials exist (WANDB_API_KEY, or a `wandb login`), offline otherwise;
offline runs land under the run directory's `wandb/` and can be uploaded later with `wandb sync`. If W&B fails
to start online, the run goes on offline; if it fails to log, the round is still in `rounds.jsonl` and the run
goes on with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import pathlib
import urllib.parse
from collections.abc import Mapping
from typing import Any

from onpolicy.config import WandbConfig
from onpolicy.interfaces import RoundLogger, Table

log = logging.getLogger(__name__)


class NullLogger:
    """Logs nothing (wandb.mode: disabled)."""

    mode = "disabled"
    run_id: str | None = None

    def steps_logged(self) -> set[int] | None:
        return None  # nothing to catch up with

    def log_round(
        self, round_number: int, metrics: Mapping[str, Any], tables: Mapping[str, Table] | None = None
    ) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger:
    """A W&B run whose step is the round number."""

    def __init__(self, run: Any, mode: str, run_dir: pathlib.Path) -> None:
        self.run = run
        self.mode = mode
        self.run_id: str | None = run.id
        self.run_dir = run_dir
        self._warned = False

    def steps_logged(self) -> set[int] | None:
        """The steps (rounds) this W&B run already holds from earlier processes of the job, when known:
        online, the steps before the resumed run's starting step; offline, what earlier segments hold."""
        if self.mode == "offline":
            from onpolicy.run.wandb_offline import offline_history

            return {int(row["_step"]) for row in offline_history(self.run_dir, self.run_id) if "_step" in row}
        return set(range(self.run.starting_step)) if self.run.resumed else set()

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


def start_logger(
    config: WandbConfig, run_dir: pathlib.Path, run_config: Mapping[str, Any], run_id: str | None = None
) -> RoundLogger:
    """A W&B run for this job (offline when online fails), or a null logger when disabled. With `run_id`, the
    run of an interrupted job continues: online, the same W&B run resumes; offline, W&B writes a new segment
    under the same id (W&B cannot resume offline runs), which `wandb sync --append` adds to the same run;
    `steps_logged` says which rounds the run already holds."""
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
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(
                    init_timeout=config.init_timeout,
                    silent=True,
                    console="off",
                    # Rounds reach the offline file within a second, not 15: a killed job loses less.
                    x_transaction_log_flush_interval=1.0,
                ),
            )
            return WandbLogger(run, attempt, run_dir)
        except Exception as exc:
            log.warning("W&B could not start in %s mode (%s)", attempt, exc)
            with contextlib.suppress(Exception):  # the failed attempt's service and global run: none for the next
                wandb.teardown()
    log.warning("W&B is off for this run; every round is still written to %s", run_dir / "rounds.jsonl")
    return NullLogger()
