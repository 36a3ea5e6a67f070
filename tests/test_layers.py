"""The layers the folders show hold in the imports:

- no import circle anywhere in onpolicy/ and reward/ (deferred and type-checking imports included, since they hide
  a circle rather than remove it; importing `a.b.c` runs `a` and `a.b` first, so those count too), and every
  module imports first in a fresh interpreter (what a circle breaks at run time);
- no module imports one of a higher layer (`LAYERS`), and the two backends, generation (the actor) and train
  (the learner), do not import each other;
- the round's stages, flat beside loop.py, import no backend: neither onpolicy.generation nor onpolicy.train,
  nor the libraries those wrap."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The round's stages and the vocabulary they share: pure steps over the records of onpolicy.types.
STAGES = [
    "onpolicy.scoring",
    "onpolicy.pairing",
    "onpolicy.correction",
    "onpolicy.replay",
    "onpolicy.diagnostics",
    "onpolicy.evaluation",
    "onpolicy.metrics",
    "onpolicy.prompts",
    "onpolicy.tokens",
    "onpolicy.templates",
    "onpolicy.types",
    "onpolicy.interfaces",
    "onpolicy.errors",
]
BACKENDS = ("onpolicy.generation", "onpolicy.train", "onpolicy.components", "vllm", "trl", "peft")
# From the bottom up: a module imports its own layer and those below. The reward package and the records come
# first; the config tree; the roles and the stages over them (with the machine's defaults); the run's plumbing;
# people as the judge, then the rewards the config names; the two backends; the composition root; the loop; the
# command line. (`onpolicy` alone is the package's face, at the bottom: importing any onpolicy module runs it.)
FOUNDATION = ("reward", "onpolicy", "onpolicy.errors", "onpolicy.types", "onpolicy.jsonable")
LAYERS = [
    FOUNDATION,
    ("onpolicy.config",),
    (*(stage for stage in STAGES if stage not in FOUNDATION), "onpolicy.devices"),
    ("onpolicy.run",),
    ("onpolicy.human",),
    ("onpolicy.reward_terms",),
    ("onpolicy.train", "onpolicy.generation"),
    ("onpolicy.components",),
    ("onpolicy.loop",),
    ("onpolicy.cli",),
]
APART = [("onpolicy.generation", "onpolicy.train")]  # same layer, and neither imports the other


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for package in ("onpolicy", "reward"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imported(module: str) -> set[str]:
    """Every module `module` imports, at any depth of its code, as written (absolute names)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _project_imports(module: str) -> set[str]:
    """The project's own modules that `module` imports (a name resolved to the module that defines it), with the
    packages above each (whose `__init__` runs first)."""
    found = set()
    for name in _imported(module):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        while name:
            if name in MODULES and name != module and not module.startswith(f"{name}."):
                found.add(name)  # a module's own packages ran before it: no arrow back up to them
            name = name.rpartition(".")[0]
    return found


def _layer(module: str) -> int:
    """The index in `LAYERS` of the most specific prefix naming `module`."""
    best = max(
        (len(prefix), i)
        for i, layer in enumerate(LAYERS)
        for prefix in layer
        if module == prefix or module.startswith(f"{prefix}.")
    )
    return best[1]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(f"{prefix}.")


def test_no_module_imports_itself_through_others():
    graph = {module: _project_imports(module) for module in MODULES}
    circles = []
    for start in graph:
        # a path from one of start's imports back to start is a circle through start
        seen, frontier = set(), [(dep, [start, dep]) for dep in graph[start]]
        while frontier:
            node, path = frontier.pop()
            if node == start:
                circles.append(" -> ".join(path))
                break
            if node in seen:
                continue
            seen.add(node)
            frontier.extend((dep, [*path, dep]) for dep in graph[node])
    assert not circles, circles


def _arrows(wrong) -> list[str]:
    """Every import `module -> imported` of the project for which `wrong(module, imported)` holds."""
    arrows = ((module, imported) for module in MODULES for imported in _project_imports(module))
    return sorted(f"{module} -> {imported}" for module, imported in arrows if wrong(module, imported))


def test_no_module_imports_a_higher_layer():
    upward = _arrows(lambda module, imported: _layer(imported) > _layer(module))
    assert not upward, upward


def test_generation_and_training_do_not_import_each_other():
    def crosses(module, imported):
        return any(_within(module, a) and _within(imported, b) for pair in APART for a, b in (pair, pair[::-1]))

    crossing = _arrows(crosses)
    assert not crossing, crossing


# Each module imported first, in a child forked from a process that has the slow libraries loaded and no project
# module: a circle among the project's modules fails there as it would in a fresh interpreter.
IMPORT_EACH_FIRST = """
import importlib, os, sys, traceback
for library in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
    try:
        importlib.import_module(library)
    except ImportError:
        pass
assert not any(name == "onpolicy" or name.startswith(("onpolicy.", "reward")) for name in sys.modules)
failed = 0
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException:
            print(f"--- import {module} first:", flush=True)
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    failed += os.waitpid(pid, 0)[1] != 0
sys.exit(min(failed, 1))
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    command = [sys.executable, "-c", IMPORT_EACH_FIRST, *sorted(MODULES)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_backend(stage):
    backends = sorted(
        name for name in _imported(stage) if any(name == b or name.startswith(f"{b}.") for b in BACKENDS)
    )
    assert not backends, f"{stage} imports {backends}: a stage sees backends through onpolicy.interfaces only"


def test_the_check_sees_deferred_imports_and_the_packages_they_run():
    """The walk finds an import inside a function (where a circle would hide), resolved to its module, and the
    package whose `__init__` importing it runs first."""
    assert "onpolicy.train.reward_training" in _project_imports("onpolicy.cli")  # imported inside a function
    assert "onpolicy.config" in _project_imports("onpolicy.reward_terms")  # it imports onpolicy.config.sections
