"""What a fresh clone installs: the lock (no machine's paths, no torch), pyproject's ranges (no
caps) and the per-machine torch choice (scripts/install_torch.py)."""

from __future__ import annotations

import doctest
import functools
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PT = "https://download.pytorch.org/whl"


@functools.cache
def _script(name: str) -> ModuleType:
    """scripts/NAME.py as a module (the scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _install_torch() -> ModuleType:
    return _script("install_torch")


@pytest.mark.parametrize("name", ["install_torch", "check_lock"])
def test_script_examples(name: str) -> None:
    failed, attempted = doctest.testmod(_script(name))
    assert attempted > 0 and failed == 0


def test_check_lock_reads_every_pin_with_its_hashes() -> None:
    entries = _script("check_lock").pins(LOCK.read_text())
    pins = _pins()
    assert sorted((n, v) for n, v, _ in entries) == sorted((n, v) for n, vs in pins.items() for v, _ in vs)
    hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", LOCK.read_text())
    assert sum(len(h) for _, _, h in entries) == len(hashes)


def _pins() -> dict[str, list[tuple[str, str]]]:
    """name -> [(version, marker)] from the lock's requirement lines (continuations joined)."""
    text = LOCK.read_text().replace("\\\n", " ")
    pins: dict[str, list[tuple[str, str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith(" "):
            continue
        req = Requirement(line.split(" --hash")[0].strip())
        (spec,) = req.specifier
        assert spec.operator == "==", line
        assert "--hash=sha256:" in line, f"{req.name} has no hash"
        pins.setdefault(req.name, []).append((spec.version, str(req.marker or "")))
    return pins


def test_lock_names_no_machine_path_and_no_option() -> None:
    text = LOCK.read_text()
    offending = [
        line for line in text.splitlines() if line.lstrip().startswith("-") and not line.lstrip().startswith("--hash")
    ]
    assert offending == [], "the lock must not carry pip options (find-links, index urls): " + repr(offending)
    assert "file:" not in text and not re.search(r"(^|\s)/\w", text), "the lock names a local path"


def test_lock_holds_no_torch_build() -> None:
    names = set(_pins())
    gpu_stack = {n for n in names if n == "torch" or n == "triton" or n.startswith(("nvidia-", "cuda-"))}
    assert gpu_stack == set(), f"torch is chosen per machine, not locked: {sorted(gpu_stack)}"
    # ... but torch's own (build-independent) dependencies are pinned
    assert {"sympy", "networkx", "filelock", "fsspec"} <= names


def test_lock_covers_other_platforms() -> None:
    pins = _pins()
    assert any("darwin" in marker for _, marker in pins["appnope"]), "ipykernel needs appnope on macOS"
    # ipython's pexpect is left out on Windows (colorama, once the Windows-only pin, is needed
    # everywhere since the docs tools came in)
    assert any("win32" in marker for _, marker in pins["pexpect"]), "the lock must resolve for Windows"


def test_pyproject_ranges_have_no_caps_and_admit_the_lock() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    for req in requirements:
        caps = [s for s in req.specifier if s.operator in ("<", "<=", "==", "~=", "===")]
        assert caps == [], f"{req}: a library states what works; pin exact versions in the lock, not here"
        assert any(s.operator == ">=" for s in req.specifier), f"{req}: give the lowest version tested"
        if req.name == "torch":
            continue
        versions = [Version(v) for v, _ in pins[req.name]]
        assert all(req.specifier.contains(v) for v in versions), f"the lock's {req.name} {versions} is outside {req}"


@pytest.mark.skipif(
    os.environ.get("S2E_STACK") in ("latest", "oldest"),
    reason="make test-latest / test-oldest run the suite on another stack than the lock's, on purpose",
)
def test_the_installed_stack_is_the_locked_one() -> None:
    from importlib.metadata import version

    pins = _pins()
    for name in ("transformers", "transformer-lens", "numpy", "safetensors", "typer"):
        versions = {v for v, _ in pins[name]}
        assert version(name) in versions, f"{name} {version(name)} is not the locked {versions}: run make install"


@pytest.mark.parametrize(
    "choice, system, nvidia, expected",
    [
        (
            "auto",
            "Linux",
            False,
            [("torch==2.13.0+cpu", "https://download.pytorch.org/whl/cpu"), ("torch==2.13.0", None)],
        ),
        ("auto", "Linux", True, [("torch==2.13.0", None)]),
        ("auto", "Darwin", False, [("torch==2.13.0", None)]),
        ("auto", "Windows", False, [("torch==2.13.0", None)]),
        ("cpu", "Linux", True, [("torch==2.13.0+cpu", "https://download.pytorch.org/whl/cpu")]),
        ("cpu", "Darwin", False, [("torch==2.13.0", None)]),
        ("pypi", "Linux", False, [("torch==2.13.0", None)]),
        ("cuda", "Linux", False, [("torch==2.13.0", None)]),
        ("cu126", "Linux", False, [("torch==2.13.0+cu126", "https://download.pytorch.org/whl/cu126")]),
        ("rocm6.4", "Linux", False, [("torch==2.13.0+rocm6.4", "https://download.pytorch.org/whl/rocm6.4")]),
        ("keep", "Linux", False, []),
    ],
)
def test_torch_choice(choice: str, system: str, nvidia: bool, expected: list[tuple[str, str | None]]) -> None:
    attempts = _install_torch().plan(choice, "2.13.0", "https://download.pytorch.org/whl/", system, nvidia)
    assert [(a.requirement, a.index) for a in attempts] == expected


def test_torch_choice_without_the_index_uses_pip_sources_only() -> None:
    attempts = _install_torch().plan("auto", "2.13.0", "https://x.invalid/whl", "Linux", False, index_reachable=False)
    assert [(a.requirement, a.index) for a in attempts] == [("torch==2.13.0+cpu", None), ("torch==2.13.0", None)]
    assert "--extra-index-url" not in attempts[0].pip_args("python")


@pytest.mark.parametrize("choice, system", [("nonsense", "Linux"), ("cu126", "Darwin"), ("cu12", "Linux")])
def test_bad_torch_choice_is_refused(choice: str, system: str) -> None:
    with pytest.raises(SystemExit, match="TORCH="):
        _install_torch().plan(choice, "2.13.0", "https://download.pytorch.org/whl", system, False)


@pytest.mark.parametrize(
    "installed, requirement, ok",
    [
        ("2.13.0+cpu", "torch==2.13.0+cpu", True),
        ("2.13.0", "torch==2.13.0+cpu", False),
        ("2.13.0+cpu", "torch==2.13.0", True),
        ("2.14.1", "torch==2.13.0", False),
        (None, "torch==2.13.0", False),
    ],
)
def test_installed_torch_satisfies(installed: str | None, requirement: str, ok: bool) -> None:
    module = _install_torch()
    assert module.satisfied(installed, module.Attempt("x", requirement, None)) is ok


def test_keep_uses_the_installed_torch() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "install_torch.py"), "--torch", "keep"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "keeping the installed torch" in done.stdout
