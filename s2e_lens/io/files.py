"""Every file and directory s2e_lens writes goes through here.

The rules, checked before any work is done (:func:`check_output`) and kept while writing:

- the scratch space is never inside the target: a file is written to a temporary file beside
  it, a directory to a scratch directory beside it, and each replaces its target with one
  ``rename`` only when it is complete;
- a target is never removed before its replacement is complete (an existing directory is
  renamed aside, the new one renamed in, and only then the old one deleted);
- nothing is replaced unless the caller says so (``overwrite=True``, the CLI's
  ``--overwrite``), and an input is never overwritten by an output, with or without it;
- the current directory, its ancestors and the file-system root are never targets of a
  directory write;
- an interruption (an exception, Ctrl-C, or SIGTERM once :func:`terminate_gracefully` is
  installed, as the CLI does) leaves no partial file or directory behind;
- files get the usual permissions under the user's umask (``0666 & ~umask``, directories
  ``0777 & ~umask``), not the private modes of temporary files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Literal

from s2e_lens.errors import S2EError


class OutputError(S2EError):
    """An output target s2e_lens will not write (exists, is an input, unwritable, ...)."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanup code runs as for Ctrl-C."""


def terminate_gracefully() -> None:
    """Turn SIGTERM into :class:`Terminated` (cleanup runs; exit code 143 at the top)."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def _is_within(path: Path, ancestor: Path) -> bool:
    return path == ancestor or ancestor in path.parents


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(
    target: str | Path,
    *,
    kind: Literal["file", "dir"],
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    what: str = "output",
) -> Path:
    """Refuse a target that breaks the rules above; return it (user-relative) if it is fine.

    Checks, in order: it is not one of ``inputs`` (or, for a directory, does not contain one);
    a directory target is not the current directory, one of its ancestors or the root; an
    existing target is of the right kind and is replaced only with ``overwrite``; the nearest
    existing ancestor is a directory we can write to.
    """
    path = Path(target).expanduser()
    real = _real(path)
    if kind == "dir":
        cwd = _real(Path.cwd())
        if _is_within(cwd, real) or real == real.parent:
            raise OutputError(
                f"refusing to write the {what} into {path}: it is the current directory, one of its "
                "parents or the root, which would be replaced as a whole. Give a new directory name, "
                "e.g. --out exported-model"
            )
    for item in inputs:
        src = _real(Path(item))
        if real == src or (kind == "dir" and _is_within(src, real)):
            raise OutputError(f"the {what} {path} would overwrite the input {item}; choose another --out")
    if path.exists() or path.is_symlink():
        if kind == "file" and path.is_dir():
            raise OutputError(f"the {what} {path} is a directory; give a file name")
        if kind == "dir" and not path.is_dir():
            raise OutputError(f"the {what} {path} is a file; give a directory name")
        busy = kind == "file" or any(path.iterdir())
        if busy and not overwrite:
            raise OutputError(f"the {what} {path} exists; pass --overwrite (overwrite=True) to replace it")
    parent = _nearest_existing(real.parent if kind == "file" else real.parent if path.exists() else real)
    if not parent.is_dir():
        raise OutputError(f"cannot write the {what} {path}: {parent} is a file, not a directory")
    _probe_writable(parent, f"the {what} {path}")
    return path


def _probe_writable(directory: Path, what: str) -> None:
    """Create and remove a temporary file in ``directory``: the only test of writability that
    also holds for root (who passes every permission check but not a read-only mount)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".s2e-probe.", dir=directory)
    except OSError as err:
        raise OutputError(f"cannot write {what}: {directory} is not writable ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(name)


@contextlib.contextmanager
def _made_parents(directory: Path) -> Iterator[None]:
    """Create ``directory`` (and missing parents); remove the ones created if the block fails."""
    missing = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {directory}: {err.strerror or err}") from None
    try:
        yield
    except BaseException:
        for d in missing:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: Literal["w", "wb"] = "wb", *, overwrite: bool = True) -> Iterator[IO]:
    """Yield a temporary file beside ``target`` that replaces it only if the block finishes.

    ``overwrite=False`` refuses an existing target (checked again at the end, so a file that
    appeared meanwhile is not clobbered)."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists; pass --overwrite (overwrite=True) to replace it")
    with _made_parents(target.parent):
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        except OSError as err:
            raise OutputError(f"cannot write {target}: {err.strerror or err}") from None
        try:
            with os.fdopen(fd, mode) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            if not overwrite and target.exists():
                raise OutputError(f"{target} appeared while it was being written; nothing was replaced")
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def write_all(contents: dict[Path, str | bytes], *, overwrite: bool = False) -> list[Path]:
    """Write several files as one output (a tensor file and its JSON sidecar, a table as CSV
    and JSON): every target is checked first, every temporary file written and synced, and
    only then are they renamed into place, so a failure while writing leaves none of them."""
    targets = list(contents)
    for t in targets:
        check_output(t, kind="file", overwrite=overwrite)
    with contextlib.ExitStack() as stack:
        handles = []
        for t in targets:
            mode: Literal["w", "wb"] = "wb" if isinstance(contents[t], bytes) else "w"
            handles.append(stack.enter_context(atomic_file(t, mode, overwrite=overwrite)))
        for t, fh in zip(targets, handles, strict=True):
            fh.write(contents[t])
    return targets


def write_text(target: str | Path, text: str, *, overwrite: bool = True) -> Path:
    with atomic_file(target, "w", overwrite=overwrite) as fh:
        fh.write(text)
    return Path(target)


def write_bytes(target: str | Path, data: bytes, *, overwrite: bool = True) -> Path:
    with atomic_file(target, "wb", overwrite=overwrite) as fh:
        fh.write(data)
    return Path(target)


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch directory beside ``target`` that becomes ``target`` only if the block
    finishes. An existing non-empty ``target`` needs ``overwrite``; it is renamed aside
    first and deleted only once the new directory is in place (restored if that fails)."""
    target = Path(target)
    check_output(target, kind="dir", overwrite=overwrite)
    real = _real(target)
    with _made_parents(real.parent):
        try:
            scratch = Path(tempfile.mkdtemp(prefix=f".{real.name}.", suffix=".partial", dir=real.parent))
        except OSError as err:
            raise OutputError(f"cannot write {target}: {err.strerror or err}") from None
        try:
            yield scratch
            _usual_permissions(scratch)
            _replace_directory(scratch, real)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise


def _usual_permissions(root: Path) -> None:
    """What a plain ``open`` / ``mkdir`` would have given under the umask: temporary
    directories are 0700 and some writers (safetensors) create 0600 files."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _replace_directory(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)  # the old directory, whole, under a hidden name
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
