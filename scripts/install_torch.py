"""Install the torch build that fits this machine into the running Python (the Makefile's venv).

torch is the one dependency whose right build depends on the machine, so it is kept out of the
hashed requirements.lock and chosen here, after the lock is installed:

    python scripts/install_torch.py [--torch auto|cpu|pypi|cuda|cu126|cu128|cu130|rocm6.4|xpu|keep]
                                    [--version 2.13.0] [--index https://download.pytorch.org/whl]

- ``auto`` (the default): macOS and Windows take PyPI's build (CPU, plus MPS on Apple silicon);
  Linux with an NVIDIA GPU (``nvidia-smi -L`` lists one) takes PyPI's build, which is the CUDA
  one; Linux without takes the CPU build from PyTorch's CPU index (about 190 MB instead of
  about 3 GB of CUDA libraries). If that index cannot be reached (a machine that sees only a
  PyPI mirror), it falls back to PyPI's build, which also runs on the CPU, and says so.
- ``cpu``: the CPU build, no fallback. ``pypi`` / ``cuda``: PyPI's build. ``cuXYZ``,
  ``rocmX.Y``, ``xpu``: that build from PyTorch's index for it.
- ``keep``: install nothing; use the torch already installed (checked to import).

pip's own configuration is honoured (a local wheel folder in ``PIP_FIND_LINKS`` or pip.conf
keeps working); nothing here names a path of any machine. Standard library only: it runs
before anything else is installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata

DEFAULT_VERSION = "2.13.0"
DEFAULT_INDEX = "https://download.pytorch.org/whl"
NAMED = ("auto", "cpu", "pypi", "cuda", "keep")
INDEX_VARIANT = re.compile(r"^(cu\d{3}|rocm\d+(\.\d+)*|xpu)$")


@dataclass(frozen=True)
class Attempt:
    """One pip install of torch: what it installs and from where."""

    label: str  # what the user is told, e.g. "CPU build from PyTorch's cpu index"
    requirement: str  # e.g. "torch==2.13.0+cpu"
    index: str | None  # an extra index URL, or None for pip's configured index (PyPI)

    def pip_args(self, python: str) -> list[str]:
        extra = ["--extra-index-url", self.index] if self.index else []
        return [python, "-m", "pip", "install", "-q", self.requirement, *extra]


def has_nvidia_gpu() -> bool:
    """True when the NVIDIA driver lists at least one GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "GPU" in done.stdout


def reachable(url: str, timeout: float = 15.0) -> bool:
    """True when the index answers (any HTTP status); honours the usual proxy variables."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def plan(
    choice: str, version: str, index: str, system: str, nvidia: bool, index_reachable: bool = True
) -> list[Attempt]:
    """The pip installs to try in order (the first that succeeds wins); [] for ``keep``.

    When PyTorch's index cannot be reached, its builds are still looked for in the sources of
    pip's own configuration (a mirror, a local wheel folder), without the index.

    >>> [a.requirement for a in plan("auto", "2.13.0", DEFAULT_INDEX, "Linux", nvidia=False)]
    ['torch==2.13.0+cpu', 'torch==2.13.0']
    >>> [a.requirement for a in plan("auto", "2.13.0", DEFAULT_INDEX, "Linux", nvidia=True)]
    ['torch==2.13.0']
    >>> plan("cu128", "2.13.0", DEFAULT_INDEX, "Linux", nvidia=False)[0].index
    'https://download.pytorch.org/whl/cu128'
    >>> plan("cpu", "2.13.0", DEFAULT_INDEX, "Linux", nvidia=False, index_reachable=False)[0].index is None
    True
    """
    index = index.rstrip("/")
    if not index_reachable:
        return [
            Attempt(a.label.split(" from ")[0] + " from pip's configured sources", a.requirement, None)
            if a.index
            else a
            for a in plan(choice, version, index, system, nvidia)
        ]
    pypi = Attempt("PyPI's build", f"torch=={version}", None)
    if choice == "keep":
        return []
    if choice in ("pypi", "cuda"):
        return [pypi]
    if system != "Linux":
        # PyTorch publishes macOS and Windows CPU builds on PyPI itself (no +cpu label there)
        if choice in ("auto", "cpu"):
            return [pypi]
        raise SystemExit(f"error: TORCH={choice} is a Linux build; on {system} use TORCH=auto (PyPI's build)")
    cpu = Attempt("CPU build from PyTorch's cpu index", f"torch=={version}+cpu", f"{index}/cpu")
    if choice == "cpu":
        return [cpu]
    if choice == "auto":
        return [pypi] if nvidia else [cpu, pypi]
    if INDEX_VARIANT.match(choice):
        label = f"{choice} build from PyTorch's {choice} index"
        return [Attempt(label, f"torch=={version}+{choice}", f"{index}/{choice}")]
    raise SystemExit(
        f"error: unknown TORCH={choice!r}; use one of {', '.join(NAMED)}, or a PyTorch index name such as "
        "cu126, cu128, cu130, rocm6.4, xpu"
    )


def installed_version() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def satisfied(installed: str | None, attempt: Attempt) -> bool:
    """The installed torch already is what the attempt would install (same version and build label)."""
    if installed is None:
        return False
    wanted = attempt.requirement.split("==", 1)[1]
    if "+" in wanted:
        return installed == wanted
    return installed.split("+", 1)[0] == wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", default=os.environ.get("TORCH", "auto"))
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--index", default=DEFAULT_INDEX)
    args = parser.parse_args(argv)
    system = platform.system()
    nvidia = system == "Linux" and args.torch == "auto" and has_nvidia_gpu()
    attempts = plan(args.torch, args.version, args.index, system, nvidia)
    if args.torch == "auto":
        why = "NVIDIA GPU found" if nvidia else ("no NVIDIA GPU" if system == "Linux" else system)
        print(f"torch: TORCH=auto on {system} {platform.machine()} ({why})")
    if any(a.index for a in attempts) and not reachable(f"{args.index.rstrip('/')}/"):
        print(f"torch: PyTorch's index {args.index} cannot be reached; looking only in pip's configured sources")
        attempts = plan(args.torch, args.version, args.index, system, nvidia, index_reachable=False)
    have = installed_version()
    if not attempts:
        if have is None:
            print("error: TORCH=keep, but no torch is installed in this environment", file=sys.stderr)
            return 1
        print(f"torch: keeping the installed torch {have} (TORCH=keep)")
        return 0
    for i, attempt in enumerate(attempts):
        if satisfied(have, attempt):
            print(f"torch: {have} already installed ({attempt.label})")
            return 0
        print(f"torch: installing {attempt.requirement}, {attempt.label}")
        if subprocess.run(attempt.pip_args(sys.executable), check=False).returncode == 0:
            print(f"torch: installed {installed_version()}")
            return 0
        if i + 1 < len(attempts):
            nxt = attempts[i + 1]
            print(
                f"torch: {attempt.requirement} could not be installed; falling back "
                f"to {nxt.label} ({nxt.requirement}), which runs on the CPU too but on Linux x86_64 brings about "
                "3 GB of CUDA libraries. To avoid that, make PyTorch's cpu index reachable (or point "
                "TORCH_INDEX at a mirror of it) and run 'make install TORCH=cpu'."
            )
    print(
        f"error: could not install torch {args.version} (TORCH={args.torch}); see pip's message above. "
        "Set TORCH=cpu|pypi|cu126|..., or install torch yourself and use TORCH=keep.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
