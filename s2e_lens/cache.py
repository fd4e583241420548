"""Where s2e_lens keeps converted checkpoints, and how it writes them atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from s2e_lens.registry import PackagedModel

CACHE_ENV = "S2E_CACHE"
SOURCE_FILE = "s2e_source.json"  # written last into a converted checkpoint


def cache_root() -> Path:
    """The cache directory: ``$S2E_CACHE``, else ``$XDG_CACHE_HOME/s2e_lens``, else ``~/.cache/s2e_lens``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "s2e_lens"


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces ``target`` only if the block finishes.

    The scratch directory sits beside ``target`` (same file system) so that the final
    ``rename`` is atomic: readers see either no directory or a complete one, never a half
    written checkpoint. On an exception the scratch directory is removed and ``target`` is
    left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield scratch
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "wb") -> Iterator[object]:
    """Open a temporary file beside ``target``; it replaces ``target`` only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def checkpoint_dir(spec: PackagedModel) -> Path:
    """Where the converted float32 checkpoint of a packaged model lives."""
    return cache_root() / "models" / spec.name / spec.sha256[:16]


def is_cached(spec: PackagedModel) -> bool:
    return (checkpoint_dir(spec) / SOURCE_FILE).is_file()


def remove_cached(spec: PackagedModel) -> bool:
    """Delete the converted checkpoint of ``spec``; True if one was there."""
    target = checkpoint_dir(spec)
    if target.exists():
        shutil.rmtree(target)
        return True
    return False
