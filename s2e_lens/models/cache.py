"""Where s2e_lens keeps converted checkpoints (written through :mod:`s2e_lens.io.files`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from s2e_lens.io.files import expand_user

if TYPE_CHECKING:
    from s2e_lens.models.registry import PackagedModel

CACHE_ENV = "S2E_CACHE"
SOURCE_FILE = "s2e_source.json"  # written last into a converted checkpoint


def cache_root() -> Path:
    """The cache directory: ``$S2E_CACHE``, else ``$XDG_CACHE_HOME/s2e_lens``, else ``~/.cache/s2e_lens``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return expand_user(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = expand_user(xdg) if xdg else expand_user("~") / ".cache"
    return base / "s2e_lens"


def checkpoint_dir(spec: PackagedModel) -> Path:
    """Where the converted float32 checkpoint of a packaged model lives."""
    return cache_root() / "models" / spec.name / spec.sha256[:16]


def is_cached(spec: PackagedModel) -> bool:
    return (checkpoint_dir(spec) / SOURCE_FILE).is_file()
