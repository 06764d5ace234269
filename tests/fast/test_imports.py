"""Fast tier: the engine's modules import each other in one direction only, and the web
process loads no model code."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "search" / "engine"


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def engine_imports() -> dict[str, set[str]]:
    """module -> engine modules it imports (relative imports, at any depth in the file).
    ``from . import name`` counts as importing the package when ``name`` is not a module."""
    paths = list(ENGINE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {}
    for path in paths:
        package = path.relative_to(ENGINE).parts[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = list(package[: len(package) - (node.level - 1)])
            if node.module:
                targets.add(".".join(base + node.module.split(".")))
                continue
            for alias in node.names:
                name = ".".join(base + [alias.name])
                targets.add(name if name in modules else ".".join(base) or "__init__")
        graph[module_name(path)] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_engine_has_no_import_loops():
    graph = engine_imports()
    assert {"pipeline", "config", "layout", "backbones", "backbones.resnet"} <= set(graph)
    assert "verification" not in graph["config"] and "config" in graph["verification"]
    assert graph["backbones.resnet"] >= {"errors", "backbones.base"} and "backbones.resnet" in graph["backbones"]
    assert find_cycle(graph) is None, f"import loop: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_web_process_does_not_load_torch_opencv_or_scikit_learn():
    code = ("import os, sys, django; django.setup(); "
            "import retrieval_site.urls, search.views, search.forms, search.queue, search.admin; "
            "from django.core.management import call_command; call_command('check', stdout=open(os.devnull, 'w')); "
            "print(','.join(m for m in ('torch', 'cv2', 'sklearn') if m in sys.modules))")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="retrieval_site.settings")
    out = subprocess.run([sys.executable, "-c", code], cwd=ENGINE.parents[1], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "", f"the web process imported {out}"


def test_the_worker_finds_every_task_by_autodiscovery():
    code = ("from workers.celery import app; app.loader.import_default_modules(); "
            "print(','.join(sorted(n for n in app.tasks if n.startswith('search.'))))")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="retrieval_site.settings")
    out = subprocess.run([sys.executable, "-c", code], cwd=ENGINE.parents[1], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "search.maintain,search.run_search,search.shard_stage"
