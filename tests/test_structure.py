"""The package's shape: no import cycles, a CLI that only dispatches, a stage registry that matches
the recipe, and a deployment side that imports without Megatron-Core or Model Optimizer."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

#: Installed module prefix -> source folder (pyproject's package-dir).
SOURCES = {"minitron": REPO / "minitron", "minitron.conversion": REPO / "conversion",
           "minitron.deploy": REPO / "deploy"}


def package_modules() -> dict[str, Path]:
    modules = {}
    for prefix, root in SOURCES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([prefix, *parts])] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> package modules it imports, counting imports inside functions too, and the packages
    whose __init__ such an import runs first."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                while target:  # importing a.b.c runs a/__init__ and a/b/__init__ first...
                    if not name.startswith(target + "."):  # ...unless they are this module's own packages
                        edges.add(target)
                    target = target.rpartition(".")[0]
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_import_graph_has_no_cycles():
    graph = import_graph()
    assert len(graph) > 60 and "minitron.deploy.serving.server" in graph  # the walk saw the whole package
    assert "minitron.run_folder" in graph["minitron.pipeline"]
    assert cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph["minitron.run_folder"] = graph["minitron.run_folder"] | {"minitron.pipeline"}
    assert any({"minitron.pipeline", "minitron.run_folder"} <= set(c) for c in cycles(graph))


def test_cli_only_parses_and_dispatches():
    from minitron import cli

    tree = ast.parse((REPO / "minitron/cli.py").read_text())
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    # Building the parser may take a page; anything else is dispatch or argument helpers, a few lines each.
    long = [f.name for f in functions if f.end_lineno - f.lineno > (120 if f.name == "parser" else 25)]
    assert "parser" in {f.name for f in functions} and long == []
    calls = {n.func.attr for f in functions for n in ast.walk(f)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert not calls & {"load_recipe", "run", "train", "prune", "export"}, "cli.py runs no job itself"
    nested_imports = [n for f in tree.body if isinstance(f, ast.FunctionDef)
                      for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert nested_imports == []
    parser = cli.parser()  # asserts that every subcommand has a COMMANDS entry
    assert cli.COMPUTE_COMMANDS <= set(cli.COMMANDS)  # the ones re-run under the tuned CPU runtime exist
    assert parser is not None
    for command, target in cli.COMMANDS.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), command


def test_stage_registry_matches_the_recipe():
    from minitron.recipe import STAGES as RECIPE_STAGES
    from minitron.stages import STAGES

    assert tuple(STAGES) == RECIPE_STAGES
    for kind, runner in STAGES.items():
        module = runner.__module__.rsplit(".", 1)[1]
        assert module.rstrip("_") == kind, (kind, module)  # stage files are named after their stages


BLOCKER = """
import importlib.abc, runpy, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("megatron", "modelopt"):
            raise ImportError(f"{name} is not installed (hidden by the test)")
sys.meta_path.insert(0, Hide())
sys.argv = ["minitron", *sys.argv[1:]]
import minitron, minitron.recipe, minitron.deploy.engine, minitron.deploy.serving.server
runpy.run_module("minitron.cli", run_name="__main__")
"""


@pytest.mark.parametrize("command", [["serve", "--help"], ["build-engine", "--help"], ["query", "--help"]])
def test_deploy_side_imports_without_megatron_or_modelopt(command):
    """What the TensorRT-LLM container runs (no Megatron-Core, no Model Optimizer there)."""
    proc = subprocess.run([sys.executable, "-c", BLOCKER, *command], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: minitron" in proc.stdout


def test_the_blocker_does_hide_megatron():
    proc = subprocess.run([sys.executable, "-c", BLOCKER.replace("import minitron,", "import megatron.core,"),
                           "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "hidden by the test" in proc.stderr
