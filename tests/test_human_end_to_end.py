"""A whole run judged by a person: two rounds of the tiny model through the CLI, every group labelled in the
labelling page by a real headless Chromium, with the job stopped mid-labelling and resumed. (A SIGKILL loses
no label either: each is fsynced before the page moves on, tests/test_labels.py.)"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from tests.helpers import ROOT, read_jsonl, tiny_config

pytestmark = pytest.mark.slow


class Job:
    """`onpolicy run` in a fresh process, its output read line by line as it comes."""

    def __init__(self, config_file, run_dir) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "onpolicy.cli", "run", str(config_file), "--run-dir", str(run_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, "WANDB_MODE": "offline"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """A job a failed assertion left waiting for labels is ended, not left running behind the suite."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, "".join(self.output)[-3000:]
                continue
            if match := re.search(pattern, line):
                return match
        raise TimeoutError(f"no line matching {pattern!r}:\n{''.join(self.output)[-3000:]}")


def label(page, groups: int) -> None:
    """Label `groups` groups in the page: the first answer the best, the second the worst."""
    for _ in range(groups):
        page.wait_for_selector(".answer")
        shown = page.locator(".turn.last .body").inner_text()
        page.keyboard.press("1")
        page.keyboard.press("2")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "shown => !document.querySelector('.turn.last .body') "
            "|| document.querySelector('.turn.last .body').innerText !== shown",
            arg=shown,
        )


def test_a_person_labels_two_rounds_in_the_page_through_a_stop_and_resume(tiny_model_path, tmp_path, browser):
    config = tiny_config(tiny_model_path, rounds=2, reward=[{"name": "human", "args": {"port": 0}}])
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"

    with Job(config_file, run_dir) as job:
        link = job.wait_for(r"http://\S+#token=\S+").group()
        job.wait_for(r"round 1: 4 of 4 group\(s\) to label")
        page = browser.new_context().new_page()
        page.goto(link)
        page.fill("#name", "ana")
        page.click("text=Start")
        label(page, 2)
        job.process.send_signal(signal.SIGTERM)  # stopped with half the round labelled: the wait ends at once
        assert job.process.wait(60) == 143, "".join(job.output)[-3000:]
        assert len(read_jsonl(run_dir / "rounds/0001/labels.jsonl")) == 2
        assert not (run_dir / "rounds.jsonl").exists() or not read_jsonl(run_dir / "rounds.jsonl")  # round 1 abandoned
        with open(run_dir / "rounds/0001/labels.jsonl", "a") as labels:  # a label import killed mid-append
            labels.write('{"group": "0", "best": 1, "wor')

    with Job(config_file, run_dir) as resumed:
        link = resumed.wait_for(r"http://\S+#token=\S+").group()
        resumed.wait_for(r"round 1: 2 of 4 group\(s\) to label")  # the same answers again: only what is left
        page = browser.new_context().new_page()
        page.goto(link)  # a new token: the old page's is void
        page.fill("#name", "ben")
        page.click("text=Start")
        label(page, 2)
        resumed.wait_for(r"round 2: 4 of 4 group\(s\) to label")
        label(page, 4)
        assert resumed.process.wait(300) == 0, "".join(resumed.output)[-3000:]

    rounds = {r["round"]: r for r in read_jsonl(run_dir / "rounds.jsonl")}
    for n in (1, 2):
        assert rounds[n]["reward/human/labelled"] == 4 and rounds[n]["reward/human/unlabelled"] == 0
        texts = {
            (row["prompt_id"], row["sample"]): row["text"]
            for row in read_jsonl(run_dir / f"rounds/{n:04d}/samples.jsonl")
        }
        for pair in read_jsonl(run_dir / f"rounds/{n:04d}/pairs.jsonl"):  # the person's pick: answer 1 over answer 2
            assert (pair["chosen_reward"], pair["rejected_reward"]) == (1.0, 0.0)
            assert (pair["chosen"], pair["rejected"]) == (texts[pair["prompt_id"], 0], texts[pair["prompt_id"], 1])
    assert rounds[2]["pairs/kept"] > 0
    by = [row["labeller"] for row in read_jsonl(run_dir / "rounds/0001/labels.jsonl")]
    assert by == ["ana", "ana", "ben", "ben"]
    assert (run_dir / "final").is_dir()
