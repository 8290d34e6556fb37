"""Imports point one way: every import of our own packages, at module level, inside functions or under
TYPE_CHECKING, goes to a lower floor (or, for training, to evaluation beside it), and no package's modules import
each other in a cycle. The floors are the README's Layout."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# floor of each package; a module may import its own package and packages on lower floors only
FLOORS = {"kronos": 0, "marketdata": 0, "forecast": 1, "evaluation": 2, "training": 3, "live": 4, "web": 5, "app": 6}


def imports_of(path: Path, package: str) -> set[str]:
    """Our own modules a file imports, as dotted names (relative imports resolved)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package, *path.relative_to(ROOT / package).parent.parts, *([base] if base else [])])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in FLOORS}
    return out


def modules() -> dict[str, set[str]]:
    found = {}
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = imports_of(path, package)
    return found


def test_imports_point_down() -> None:
    wrong = []
    for name, imported in modules().items():
        floor = FLOORS[name.split(".")[0]]
        for target in sorted(imported):
            top = target.split(".")[0]
            if top != name.split(".")[0] and FLOORS[top] >= floor:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_cycle_inside_a_package() -> None:
    graph = modules()
    # an import of a name inside a module counts as an import of that module
    edges = {m: {t if t in graph else t.rsplit(".", 1)[0] for t in ts} & graph.keys() - {m} for m, ts in graph.items()}
    edges = {m: {t for t in ts if t.split(".")[0] == m.split(".")[0] and t != m.split(".")[0]} for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_check_sees_a_wrong_way_import(tmp_path, monkeypatch) -> None:
    # the walker itself: a function-level upward import and a TYPE_CHECKING one are both found
    source = tmp_path / "kronos" / "x.py"
    source.parent.mkdir()
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.config import Config\n"
                      "def f():\n    from .sampler import S\n    import forecast.metrics\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = imports_of(source, "kronos")
    assert {"app.config", "app.config.Config", "kronos.sampler", "forecast.metrics"} <= found
