"""Imports point one way (commands -> report / experiments / audit / flower -> runs -> scenario ->
attacks / defenses / fl -> models / data / metrics -> config / registry), audit, experiments and
flower do not import each other (nor report and experiments), and there is no cycle; modules
stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "gradleak"

# Lower number = lower layer. A module may import its own layer or lower ones only.
LAYERS: list[tuple[str, int]] = [
    ("gradleak.errors", 0), ("gradleak.registry", 0), ("gradleak.config", 0), ("gradleak.io", 0),
    ("gradleak.defense_config", 0), ("gradleak.config_check", 0),
    ("gradleak.provenance", 0), ("gradleak.plugins", 0), ("gradleak.configs", 0),
    ("gradleak.config_values", 0), ("gradleak.attack_settings", 0), ("gradleak.progress", 0),
    ("gradleak.argtypes", 0), ("gradleak.update", 1),
    ("gradleak.images", 1), ("gradleak.text_view", 1), ("gradleak.threat", 1),
    ("gradleak.data", 1), ("gradleak.models", 1), ("gradleak.metrics", 1),
    ("gradleak.generative", 2), ("gradleak.fl", 2), ("gradleak.defenses", 2),
    ("gradleak.attacks", 3),
    ("gradleak.scenario", 4), ("gradleak.scenario_text", 4), ("gradleak.runner", 4), ("gradleak.analysis", 5),
    ("gradleak.runs", 6),
    ("gradleak.experiments", 7), ("gradleak.audit", 7), ("gradleak.flower", 7),
    ("gradleak.report", 7),
    ("gradleak.commands", 8), ("gradleak.cli", 8), ("gradleak", 9),
]
# Packages of one layer that must not import each other: each builds plans on gradleak.runs and
# the commands hand stored rows to the renderer (report).
_SIBLINGS = ("gradleak.audit", "gradleak.experiments", "gradleak.flower")
APART = [(a, b) for a in _SIBLINGS for b in _SIBLINGS if a != b] + [
    ("gradleak.report", "gradleak.experiments"), ("gradleak.experiments", "gradleak.report")]


def layer(module: str) -> int:
    for prefix, level in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return level
    raise AssertionError(f"module {module} has no layer: add it to LAYERS")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every gradleak module ``path`` imports, at module level, inside functions or under
    ``if TYPE_CHECKING:`` (an import for annotations only is a dependency too)."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gradleak")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.startswith("gradleak"):
                found.add(base)
    return found - {me}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def test_no_upward_import():
    bad = []
    for mod, deps in _graph().items():
        if mod == "gradleak":
            continue
        for dep in deps:
            if dep != "gradleak" and layer(dep) > layer(mod):
                bad.append(f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_sibling_packages_stay_apart():
    bad = [f"{mod} imports {dep}" for mod, deps in _graph().items() for dep in deps
           for a, b in APART if _within(mod, a) and _within(dep, b)]
    assert not bad, "imports between sibling packages:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    graph = _graph()
    modules = set(graph)

    def resolve(dep: str) -> str | None:  # `from gradleak.x import y` may name a submodule
        return dep if dep in modules else None

    edges = {m: {d for d in map(resolve, deps) if d and d != "gradleak"} for m, deps in graph.items()}
    # A package importing its own submodules (registration) is not a cycle of responsibility.
    edges = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 400:
            long_modules.append(f"{path.relative_to(SRC)} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long_functions.append(f"{path.relative_to(SRC)}:{node.name} ({n} lines)")
    assert not long_modules, "modules over 400 lines: " + ", ".join(long_modules)
    assert not long_functions, "functions over 80 lines: " + ", ".join(long_functions)
