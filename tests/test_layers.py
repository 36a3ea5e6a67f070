"""The layers the folders show hold in the imports: no import circle anywhere in onpolicy/ and reward/ (deferred
and type-checking imports included, since they hide a circle rather than remove it), and the round's stages,
flat beside loop.py, import no backend: neither onpolicy.generation nor onpolicy.train, nor the libraries
those wrap."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The round's stages and the vocabulary they share: pure steps over the records of onpolicy.types.
STAGES = [
    "onpolicy.scoring",
    "onpolicy.pairing",
    "onpolicy.correction",
    "onpolicy.diagnostics",
    "onpolicy.evaluation",
    "onpolicy.metrics",
    "onpolicy.prompts",
    "onpolicy.tokens",
    "onpolicy.types",
    "onpolicy.interfaces",
    "onpolicy.errors",
]
BACKENDS = ("onpolicy.generation", "onpolicy.train", "onpolicy.components", "vllm", "trl", "peft")


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
    """The project's own modules that `module` imports (a name resolved to the module that defines it)."""
    found = set()
    for name in _imported(module):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


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


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_backend(stage):
    backends = sorted(
        name for name in _imported(stage) if any(name == b or name.startswith(f"{b}.") for b in BACKENDS)
    )
    assert not backends, f"{stage} imports {backends}: a stage sees backends through onpolicy.interfaces only"


def test_the_check_sees_deferred_imports():
    """The walk finds an import inside a function (where a circle would hide), resolved to its module."""
    assert "onpolicy.train.reward_training" in _project_imports("onpolicy.cli")  # imported inside a function
