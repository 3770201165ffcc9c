"""The package's shape stays as documented: modules depend downwards only (no import cycle), the
generation path never reaches the training loop, the lock never reaches the probes, and the core
never imports an edge (CLI, server, chat, experiment). Imports inside functions count too.

    .venv/bin/pytest -q tests/test_layout.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "prealign").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The prealign modules `name` imports (`from pkg import sub` counts as `pkg.sub`)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                found.add(t)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_the_package():
    assert {"prealign.lock", "prealign.generate", "prealign.probes.guard", "prealign.cli"} <= set(MODULES)
    assert "prealign.modes" in GRAPH["prealign.lock"]  # a real edge is found


def test_no_import_cycle():
    assert _cycles() == []


def test_the_walker_finds_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "prealign.modes", GRAPH["prealign.modes"] | {"prealign.lock"})
    assert any({"prealign.lock", "prealign.modes"} <= set(c) for c in _cycles())


@pytest.mark.parametrize("module", ["prealign.lock", "prealign.generate", "prealign.conversation", "prealign.serve",
                                    "prealign.chat", "prealign.scaffold", "prealign.sampling"])
def test_generation_never_reaches_the_training_loop(module):
    assert "prealign.train" not in _reach(module)


def test_the_lock_never_reaches_the_probes():
    assert not {m for m in _reach("prealign.lock") if m.startswith("prealign.probes")}
    assert not {m for m in _reach("prealign.generate") if m.startswith("prealign.probes")}


EDGES = ("prealign.cli", "prealign._cli", "prealign.serve", "prealign.chat", "prealign.experiment", "prealign.report")


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith(EDGES) and m != "prealign"])
def test_the_core_never_imports_an_edge(module):
    assert not {m for m in GRAPH[module] if m.startswith(EDGES)}
