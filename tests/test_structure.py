"""The shape of the house: a light core, imports that only go down, and developer tooling outside the wheel."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"pytorch_lightning", "lightning", "matplotlib", "pandas", "statsmodels", "onnx", "onnxruntime"}


@pytest.mark.parametrize("statement", ["import lstm_attn", "import lstm_attn.functional, lstm_attn.ops"])
def test_the_library_imports_torch_and_the_extension_only(statement):
    """The model's classes load Lightning when first touched; the ops, their backends and plans never do."""
    code = f"{statement}, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))"
    out = subprocess.run([sys.executable, "-c", "import sys; " + code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by name: lstm_attn/ and kernels/ (installed as lstm_attn.kernels)."""
    found = {"lstm_attn._C": None}  # the compiled extension: a leaf
    for folder, prefix in ((ROOT / "lstm_attn", "lstm_attn"), (ROOT / "kernels", "lstm_attn.kernels")):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((prefix, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The package's modules that `name` imports, wherever in the file (a deferred import still binds the two)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            # `from pkg import sub` needs the submodule; `from pkg import name`, the package itself.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_modules_or_subpackages():
    modules = _modules()
    graph = {name: _imports(name, path, modules) if path else set() for name, path in modules.items()}
    assert _cycles(graph) == []
    # One level up: lstm_attn.training, lstm_attn.bench and lstm_attn.kernels as wholes, beside the top modules.
    def top(name):
        return ".".join(name.split(".")[:2])
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        packages.setdefault(top(name), set()).update(top(t) for t in targets if top(t) != top(name))
    assert _cycles(packages) == []


def test_the_wheel_holds_the_library_and_no_developer_tooling():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"] == \
        ["lstm_attn", "lstm_attn.kernels", "lstm_attn.training", "lstm_attn.bench"]
    assert config["project"]["dependencies"][:2] == ["torch>=2.11", "pytorch-lightning>=2.2"]
    for path in [*(ROOT / "lstm_attn").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]:
        text = path.read_text()
        assert "benchmarks" not in {n.module.split(".")[0] for n in ast.walk(ast.parse(text))
                                    if isinstance(n, ast.ImportFrom) and n.module}, path
