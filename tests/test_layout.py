"""The package's shape: imports run one way, downward, with no cycles.

cli -> experiments -> reporting -> behaviours -> engine -> models -> core -> io, and
``errors`` / ``version`` below everything. Checked from every module's own import statements
(at module level and inside functions alike), so a new upward import fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "s2e_lens"
LAYERS = ["base", "io", "core", "models", "engine", "behaviours", "reporting", "experiments", "cli"]
BASE = {"errors", "version"}


def layer_of(module: str) -> str:
    """``s2e_lens.engine.mapper`` -> ``engine``; ``s2e_lens.errors`` -> ``base``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "top"  # the package itself (s2e_lens/__init__.py): the public API, above everything
    return "base" if parts[1] in BASE else parts[1]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def imports(path: Path) -> list[tuple[int, str]]:
    """Every ``s2e_lens`` module this file imports (line, module), TYPE_CHECKING blocks
    included: an upward import only for the type checker is still a circle between layers."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("s2e_lens"):
            if node.module == "s2e_lens":
                found += [(node.lineno, f"s2e_lens.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("s2e_lens")]
    return found


def test_every_module_is_in_a_layer() -> None:
    layers = {layer_of(m) for m in modules()}
    assert layers <= set(LAYERS) | {"top"}, layers - set(LAYERS)


@pytest.mark.parametrize("module", [m for m in modules() if layer_of(m) != "top"])
def test_imports_point_down_or_sideways(module: str) -> None:
    own = LAYERS.index(layer_of(module))
    upward = [
        f"line {line}: {target} ({layer_of(target)})"
        for line, target in imports(modules()[module])
        if LAYERS.index(layer_of(target)) > own
    ]
    assert upward == [], f"{module} ({layer_of(module)}) imports upward: {upward}"


def test_package_code_never_imports_from_the_package_root() -> None:
    offenders = []
    for module, path in modules().items():
        if module == "s2e_lens":
            continue
        tree = ast.parse(path.read_text())
        offenders += [
            f"{module}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "s2e_lens"
        ]
    assert offenders == []


def test_core_imports_no_model_code() -> None:
    heavy = ("transformers", "transformer_lens")
    offenders = []
    for module, path in modules().items():
        if layer_of(module) != "core":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n.split(".")[0] in heavy for n in names):
                offenders.append(f"{module}:{node.lineno}")
    assert offenders == []


def test_no_import_cycles_between_modules() -> None:
    graph = {m: {t for _, t in imports(p) if t in modules() and t != m} for m, p in modules().items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m)
    # a package's __init__ importing its own submodules is not a cycle of behaviour
    cycles = [
        c
        for c in cycles
        if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:], strict=False))
    ]
    assert cycles == []


def test_tab_completion_offers_every_name_the_readme_uses() -> None:
    """``dir(s2e)`` (what Jupyter completes) lists the public names and sub-modules, each one
    resolves, and every ``s2e.NAME`` in the README's Python examples is among them."""
    import re

    import s2e_lens as s2e

    names = dir(s2e)
    assert {"figures", "behaviours", "load_model", "compute_plan"} <= set(names)
    assert all(getattr(s2e, n) is not None for n in names)
    readme = (PACKAGE.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    used = {m for block in blocks for m in re.findall(r"\bs2e\.([A-Za-z_]\w*)", block)}
    assert used and used <= set(names), sorted(used - set(names))
