"""Data flows one way: config -> data -> models -> optimization -> sharpness / visualization -> report -> pipeline.

Read from the source (no imports run): every project import, at module level or inside a function,
must point to the same layer or a lower one, and no two modules may import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"utils": 0, "config": 1, "data": 2, "models": 3, "optimization": 4, "sharpness": 5, "visualization": 5,
          "report": 6, "pipeline": 7, "run": 8}


def project_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module in LAYERS:  # `from utils import io` imports the module utils.io
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.split(".")[0] in LAYERS}


def modules() -> dict[str, Path]:
    found = {p.stem: p for p in ROOT.glob("*.py") if p.stem in LAYERS}
    for package in LAYERS:
        for p in (ROOT / package).glob("*.py") if (ROOT / package).is_dir() else []:
            if p.stem != "__init__":
                found[f"{package}.{p.stem}"] = p
    return found


def test_every_import_points_down_or_sideways():
    wrong = []
    for name, path in modules().items():
        for target in project_imports(path):
            if LAYERS[target.split(".")[0]] > LAYERS[name.split(".")[0]]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_no_import_cycles():
    graph = {name: {t for t in project_imports(path) if t in modules()} for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_modules_and_functions_stay_readable_and_utils_holds_infrastructure_only():
    """Each module one idea (≤ 450 lines), each function readable at once (≤ 80 lines); utils/ holds infrastructure
    (errors, io, lock, distributed, device, hub, progress) in under 1,000 lines, not the lab's domain code."""
    long_modules, long_functions = [], []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > 450:
            long_modules.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long_functions.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long_modules and not long_functions, long_modules + long_functions
    utils = {p.stem for p in (ROOT / "utils").glob("*.py")} - {"__init__"}
    assert utils == {"errors", "io", "lock", "distributed", "device", "hub", "progress"}
    assert sum(len(p.read_text().splitlines()) for p in (ROOT / "utils").glob("*.py")) < 1000
