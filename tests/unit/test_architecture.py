"""The rules of the code's shape (docs/architecture.md), checked on every `make test`.

- the layers, from pyproject.toml's import-linter contract (imports inside functions count);
- no circle of imports between modules;
- no product module over MAX_LINES lines;
- every `from our.module import name` names something that module defines (a lazy import of a
  name that moved fails only when its function runs, often in a rarely used path);
- ruff's rules, as configured in pyproject.toml.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import grimp
import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "registry", "serving", "training", "loadtest", "loraplex")
MAX_LINES = 400
BIN = Path(sys.executable).parent


def _product_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_layers_hold():
    out = _run("lint-imports", "--no-cache")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    # Tarjan's strongly connected components; a component of several modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_cycles_are_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert _cycles(edges) == []


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in _product_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules by job (at most {MAX_LINES} lines each)"


@cache
def _module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _defined_names(module: str) -> frozenset[str] | None:
    # Names bound at a module's top level (None: it binds names dynamically, so anything goes).
    tree = ast.parse(_module_file(module).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" for a in node.names):
                return None
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return None if "__getattr__" in names else frozenset(names)


def _missing_names(path: Path) -> list[str]:
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        if node.module.split(".")[0] not in PACKAGES:
            continue
        if _module_file(node.module) is None:
            missing.append(f"line {node.lineno}: no module {node.module}")
            continue
        defined = _defined_names(node.module)
        for alias in node.names:
            known = defined is None or alias.name in defined or _module_file(f"{node.module}.{alias.name}")
            if not known:
                missing.append(f"line {node.lineno}: {node.module} has no {alias.name}")
    return missing


def test_moved_names_are_caught(tmp_path):
    assert {"ADAPTER_FILES", "CONFIG_FILE", "is_adapter_dir"} <= _defined_names("common.peft_format")
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n"
                     "    from common.peft_format import CONFIG_FILE, NO_SUCH\n"
                     "    from common.nowhere import x\n")
    assert _missing_names(probe) == ["line 2: common.peft_format has no NO_SUCH", "line 3: no module common.nowhere"]


def test_every_imported_name_exists():
    files = _product_files() + sorted((ROOT / "tests").rglob("*.py"))
    broken = {str(p.relative_to(ROOT)): m for p in files if (m := _missing_names(p))}
    assert broken == {}


def test_ruff_rules_hold():
    out = _run("ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
