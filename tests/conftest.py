"""Session fixtures and the test tiers.

Every test falls in one tier, marked automatically so that `-m` selects by it:

- `unit`: pure functions and small objects against hand-worked numbers; no model is loaded (a unit test that
  tries fails, pointing here);
- `models`: tiny random models (or the embedded SmolLM2) through the real vLLM engine and the real TRL trainer:
  the tests that use a model fixture below;
- `e2e`: whole runs through the CLI in a fresh process, marked `slow` in their module (run in CI too).
"""

import os
import pathlib

import pytest


def _own_cores_for_this_worker() -> None:
    """Under pytest-xdist (`-n N`), pin this worker, and every engine, trainer and CLI run it starts, to its own
    share of the CPUs. Unpinned, two vLLM engines on the same cores spin-wait on each other's threads (generation
    then runs several times slower); pinned, each computes on its own cores while the other waits on imports,
    engine start-up and disk, which is most of an end-to-end test's time."""
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker is None or workers is None:
        return
    cpus = sorted(os.sched_getaffinity(0))
    index, count = int(worker.removeprefix("gw")), int(workers)
    share = max(len(cpus) // count, 1)
    mine = cpus[(index * share) % len(cpus) :][:share]
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = str(len(mine))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine))


_own_cores_for_this_worker()
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers import build_tiny_llama, build_tiny_reward_model  # noqa: E402

MODEL_FIXTURES = {"tiny_model_path", "tiny_base_model_path", "tiny_reward_model_path", "embedded_model_path"}


# The longest files (minutes each), started first: with two workers, a long file taken last would run alone.
LONGEST_FIRST = ("test_identity_demo.py", "test_distributed.py", "test_resume.py", "test_server.py", "test_sweep.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST else 99)
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.e2e)
        elif MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.models)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_load_no_model(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `unit` test that loads a model belongs in `models`: it must ask for a model fixture."""
    if request.node.get_closest_marker("unit") is None:
        return
    from transformers import modeling_utils

    def refuse(*args, **kwargs):
        raise AssertionError("a unit-tier test loaded a model: use a model fixture (tests/conftest.py)")

    monkeypatch.setattr(modeling_utils.PreTrainedModel, "from_pretrained", refuse)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> pathlib.Path:
    """A tiny random Llama folder shared by the whole session (read-only for tests)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_base_model_path(tmp_path_factory) -> pathlib.Path:
    """A tiny random Llama whose tokenizer has no chat template, as a base model's has none."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-base-llama"), chat_template=None)


@pytest.fixture(scope="session")
def tiny_reward_model_path(tmp_path_factory) -> pathlib.Path:
    """A tiny random sequence classifier (one logit) with its own chat template, shared by the session."""
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"))


@pytest.fixture(scope="session")
def embedded_model_path(tmp_path_factory) -> pathlib.Path:
    """The embedded SmolLM2 converted once per session into a fresh cache folder (~30 s)."""
    from onpolicy.run.model_store import embedded_model_folder

    return embedded_model_folder(tmp_path_factory.mktemp("onpolicy-cache"))


CHROMIUM = pathlib.Path("/usr/bin/chromium")
# Debian's Chromium, headless, with nothing reaching out to the network (this machine's is closed).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """A real headless Chromium (Debian's, installed by scripts/test.sh), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"the browser tests need {CHROMIUM}: scripts/test.sh installs it with apt-get (apt-get install chromium)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()
