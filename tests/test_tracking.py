"""W&B in offline mode, read back; an unreachable W&B server never ends the run."""

import pathlib
import time

import pytest

from onpolicy.config import WandbConfig
from onpolicy.run.tracking import NullLogger, WandbLogger, resolve_mode, start_logger
from onpolicy.run.wandb_offline import offline_history


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    return monkeypatch


def test_auto_mode_is_offline_without_credentials_and_online_with_them(clean_env, tmp_path):
    assert resolve_mode(WandbConfig()) == "offline"
    clean_env.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode(WandbConfig()) == "online"
    clean_env.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolve_mode(WandbConfig()) == "online"
    clean_env.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(WandbConfig()) == "disabled"
    assert resolve_mode(WandbConfig(mode="offline")) == "offline"


def test_offline_run_logs_one_step_per_round(clean_env, tmp_path):
    logger = start_logger(WandbConfig(), tmp_path, {"rounds": 2})
    assert isinstance(logger, WandbLogger) and logger.mode == "offline"
    logger.log_round(1, {"reward/mean": 0.25, "pairs/kept": 3.0})
    logger.log_round(2, {"reward/mean": 0.5, "pairs/kept": 4.0})
    logger.finish()
    history = _history_once_written(tmp_path)
    assert [(row["_step"], row["reward/mean"], row["pairs/kept"]) for row in history] == [(1, 0.25, 3), (2, 0.5, 4)]


def test_a_torn_or_damaged_offline_record_ends_the_history_before_it_instead_of_raising(clean_env, tmp_path):
    """wandb-core killed mid-flush leaves a record shorter than its stated length, or bytes that fail the chunk's
    CRC-32: the history ends at the last record that checks out, so that every resume can still read it."""
    logger = start_logger(WandbConfig(), tmp_path, {"rounds": 3})
    for step in (1, 2, 3):
        logger.log_round(step, {"reward/mean": step / 8, f"marker/step_{step}": float(step)})
    logger.finish()
    assert [row["_step"] for row in _history_once_written(tmp_path)] == [1, 2, 3]
    (segment,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    intact = segment.read_bytes()
    third = intact.index(b"marker/step_3")  # inside round 3's history record
    for damaged in (
        intact[:third],  # torn: cut inside the record
        intact[:third] + b"\xff" + intact[third + 1 :],  # one byte changed: the checksum fails
        intact[:third] + bytes(7),  # a chunk header promising more than is there
    ):
        segment.write_bytes(damaged)
        assert [row["_step"] for row in offline_history(tmp_path)] == [1, 2]
    segment.write_bytes(intact[:7] + b"\x00\x01garbage")  # nothing whole: no rows, no error
    assert offline_history(tmp_path) == []


def _history_once_written(run_dir):
    """The offline history, waiting for it: W&B's service process may still be writing the file when finish()
    returns (seen on a loaded machine, for both an offline run and one that fell back to offline)."""
    deadline = time.monotonic() + 15
    while not (history := offline_history(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return history


def test_unreachable_server_falls_back_to_offline(clean_env, tmp_path):
    clean_env.setenv("WANDB_API_KEY", "k" * 40)
    clean_env.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    logger = start_logger(WandbConfig(mode="online", init_timeout=3), tmp_path, {})
    assert isinstance(logger, WandbLogger) and logger.mode == "offline"
    logger.log_round(1, {"reward/mean": 1.0})
    logger.finish()
    assert [row["reward/mean"] for row in _history_once_written(tmp_path)] == [1.0]


def test_disabled_logs_nothing(clean_env, tmp_path):
    logger = start_logger(WandbConfig(mode="disabled"), tmp_path, {})
    assert isinstance(logger, NullLogger)
    logger.log_round(1, {"x": 1.0})
    logger.finish()
    assert not list(pathlib.Path(tmp_path).rglob("*.wandb"))


def test_a_failing_log_call_warns_once_and_goes_on(caplog, tmp_path):
    class Broken:
        id = "broken"

        def log(self, *args, **kwargs):
            raise ConnectionError("gone")

    logger = WandbLogger(Broken(), "online", tmp_path)
    logger.log_round(1, {"x": 1.0})
    logger.log_round(2, {"x": 1.0})
    assert [r.getMessage() for r in caplog.records].count(
        "W&B could not log round 1 (gone); rounds.jsonl keeps every round"
    ) == 1
