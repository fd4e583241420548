"""Every file and directory s2e_lens writes goes through here.

The rules, checked before any work is done (:func:`check_output`) and kept while writing:

- the scratch space is never inside the target: a file is written to a temporary file beside
  it, a directory to a scratch directory beside it, and each replaces its target with one
  ``rename`` only when it is complete;
- a target is never removed before its replacement is complete (an existing directory is
  renamed aside, the new one renamed in, and only then the old one deleted);
- nothing is replaced unless the caller says so (``overwrite=True``, the CLI's
  ``--overwrite``), and an input is never overwritten by an output, with or without it;
- a directory is replaced only if it holds the record file its writer puts in every output
  (``s2e_edits.json`` in an export, ``summary.json`` in a run): a home directory or any other
  folder s2e did not make is never replaced, ``--overwrite`` or not;
- without ``overwrite`` the finished directory is renamed into place with one ``rename`` that
  fails if a non-empty directory appeared there meanwhile (another writer won the race): the
  other output is kept and this one is reported, never silently swapped in;
- the current directory, its ancestors and the file-system root are never targets of a
  directory write;
- an interruption (an exception, Ctrl-C, or SIGTERM once :func:`terminate_gracefully` is
  installed, as the CLI does) leaves no partial file or directory behind;
- files get the usual permissions under the user's umask (``0666 & ~umask``, directories
  ``0777 & ~umask``), not the private modes of temporary files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Literal

from s2e_lens.errors import InvalidInputError, S2EError

# The record file each kind of output directory holds: it marks the directory as that writer's,
# and only a directory holding it is ever replaced (see atomic_directory).
EXPORT_RECORD = "s2e_edits.json"  # s2e export, s2e edit --export
RUN_RECORD = "summary.json"  # s2e run, s2e sweep
ABLATION_RECORD = "ablation.json"  # s2e ablate (the table as JSON)


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


def real_path(path: Path) -> Path:
    """``path`` with ``~`` expanded and every symlink and ``..`` resolved."""
    return Path(os.path.realpath(expand_user(path)))


def _is_within(path: Path, ancestor: Path) -> bool:
    return path == ancestor or ancestor in path.parents


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def expand_user(target: str | Path) -> Path:
    """``~`` and ``~user`` expanded, or an :class:`InvalidInputError` that says why not (an unknown
    user, no ``HOME``), instead of the RuntimeError that :meth:`Path.expanduser` raises."""
    path = Path(target)
    try:
        return path.expanduser()
    except RuntimeError:
        head = str(path).split(os.sep, 1)[0]
        why = "HOME is not set" if head == "~" else f"there is no user {head[1:]!r}"
        raise InvalidInputError(
            f"cannot expand {head!r} in {str(target)!r}: {why}; give the path without '~'"
        ) from None


def check_output(
    target: str | Path,
    *,
    kind: Literal["file", "dir"],
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    what: str = "output",
    record: str | None = None,
) -> Path:
    """Refuse a target that breaks the rules above; return it (user-relative) if it is fine.

    Checks, in order: it is not one of ``inputs`` (or, for a directory, does not contain one);
    a directory target is not the current directory, one of its ancestors or the root; an
    existing target is of the right kind and is replaced only with ``overwrite`` and, for a
    directory written with a ``record``, only if it holds that record; the nearest existing
    ancestor is a directory we can write to.
    """
    path = expand_user(target)
    real = real_path(path)
    if kind == "dir":
        cwd = real_path(Path.cwd())
        if _is_within(cwd, real) or real == real.parent:
            raise OutputError(
                f"refusing to write the {what} into {path}: it is the current directory, one of its "
                "parents or the root, which would be replaced as a whole. Give a new directory name, "
                "e.g. --out exported-model"
            )
    for item in inputs:
        src = real_path(Path(item))
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
        if busy and kind == "dir" and record is not None and not (path / record).is_file():
            raise OutputError(
                f"refusing to replace {path}: it was not made by s2e (no {record} inside), and s2e replaces only "
                "its own outputs, --overwrite or not. Give a new directory name, or move that one away yourself"
            )
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
    and JSON, statistics with their steering vectors): every target is checked first, every
    temporary file written and synced, and only then are they renamed into place, with SIGINT
    and SIGTERM held meanwhile, so a failure or a signal leaves all of them or none."""
    targets = [expand_user(t) for t in contents]
    for t in targets:
        check_output(t, kind="file", overwrite=overwrite)
    written: list[tuple[str, Path]] = []
    with contextlib.ExitStack() as stack:
        for parent in dict.fromkeys(t.parent for t in targets):
            stack.enter_context(_made_parents(parent))
        try:
            for t, data in zip(targets, contents.values(), strict=True):
                try:
                    fd, tmp = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".partial", dir=t.parent)
                except OSError as err:
                    raise OutputError(f"cannot write {t}: {err.strerror or err}") from None
                written.append((tmp, t))
                try:
                    with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as handle:
                        handle.write(data)
                        handle.flush()
                        os.fsync(handle.fileno())
                except OSError as err:
                    needed = sum(len(d.encode() if isinstance(d, str) else d) for d in contents.values())
                    raise _disk_full(err, t, t.parent, needed) from err
                os.chmod(tmp, 0o666 & ~_umask())
            with signals_held():
                if not overwrite and (appeared := [t for t in targets if t.exists()]):
                    raise OutputError(f"{appeared[0]} appeared while it was being written; nothing was replaced")
                for tmp, t in written:
                    os.replace(tmp, t)
                written = []
        finally:
            for tmp, _ in written:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    return targets


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM are held (noted, then re-raised when the block ends) while a set of
    renames that must happen together runs. Python runs signal handlers in the main thread
    only, so the handlers are swapped rather than the signal mask (which another thread would
    bypass). Outside the main thread, where handlers cannot be set, it does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def note(signum: int, frame: object) -> None:
        if signum not in pending:
            pending.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for held, handler in previous.items():
            signal.signal(held, handler)
        for signum in pending:
            signal.raise_signal(signum)  # now, to the handler that was there before


def write_text(target: str | Path, text: str, *, overwrite: bool = True) -> Path:
    with atomic_file(target, "w", overwrite=overwrite) as fh:
        fh.write(text)
    return Path(target)


def write_bytes(target: str | Path, data: bytes, *, overwrite: bool = True) -> Path:
    with atomic_file(target, "wb", overwrite=overwrite) as fh:
        fh.write(data)
    return Path(target)


@contextlib.contextmanager
def atomic_directory(
    target: str | Path,
    *,
    record: str | None,
    overwrite: bool = False,
    companion: Callable[[], list[Path]] | None = None,
    size_hint: int | None = None,
) -> Iterator[Path]:
    """Yield a scratch directory beside ``target`` that becomes ``target`` only if the block
    finishes. ``companion`` writes a second output that must land with this one (``s2e edit
    --out PLAN --export DIR``): it runs, with SIGINT and SIGTERM held, just before the rename,
    so a failure in it leaves neither, and what it wrote is removed if the rename fails.
    ``size_hint`` (bytes) goes into the message when the disk fills up. An existing non-empty
    ``target`` needs ``overwrite`` and, when ``record`` is given, must hold that file (the
    block must write it too: it marks the directory as this writer's); it is renamed aside
    first and deleted only once the new directory is in place (restored if that fails).
    ``record=None`` only for directories s2e owns (its cache)."""
    target = expand_user(target)
    check_output(target, kind="dir", overwrite=overwrite, record=record)
    real = real_path(target)
    with _made_parents(real.parent):
        scratch: Path | None = None
        try:
            # held while the scratch directory is made and named: a signal between mkdtemp's
            # mkdir and the assignment would leave it behind, unnamed (seen once in the fault test)
            with signals_held():
                try:
                    scratch = Path(tempfile.mkdtemp(prefix=f".{real.name}.", suffix=".partial", dir=real.parent))
                except OSError as err:
                    raise OutputError(f"cannot write {target}: {err.strerror or err}") from None
            try:
                yield scratch
            except Exception as err:  # a writer's own error type (safetensors', say) for a full disk
                raise _disk_full(err, target, real.parent, size_hint) from err
            if record is not None and not (scratch / record).is_file():
                raise OutputError(f"internal: the writer of {target} did not write its record {record}")
            _usual_permissions(scratch)
            with signals_held():
                made = companion() if companion is not None else []
                try:
                    _replace_directory(scratch, real, overwrite=overwrite, record=record)
                except BaseException:
                    for path in made:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                    raise
        except BaseException:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            raise


def _disk_full(err: Exception, target: Path, where: Path, needed: int | None = None) -> Exception:
    """A full disk as one :class:`OutputError` naming the target, the space it needs (when the
    writer knows it) and the free space; any other error unchanged."""
    full = (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err)
    if not full or isinstance(err, S2EError):
        return err
    free = shutil.disk_usage(where).free if where.exists() else 0
    need = f"it needs about {_mib(needed)}, " if needed else ""
    return OutputError(
        f"cannot write {target}: no space left on device ({need}{_mib(free)} free in {where}); "
        "nothing was written. Free some space or choose another --out"
    )


def _mib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _usual_permissions(root: Path) -> None:
    """What a plain ``open`` / ``mkdir`` would have given under the umask: temporary
    directories are 0700 and some writers (safetensors) create 0600 files."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _replace_directory(new: Path, target: Path, *, overwrite: bool, record: str | None) -> None:
    if not overwrite or not target.exists():
        try:
            os.rename(new, target)  # replaces at most an empty directory; fails on a non-empty one
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise OutputError(
                f"{target} appeared while this output was being written (another s2e process?); it was kept "
                "and this output discarded. Pass --overwrite to replace it, or choose another --out"
            ) from None
        return
    if record is not None and not (target / record).is_file():  # checked again: it may have changed
        raise OutputError(f"refusing to replace {target}: it was not made by s2e (no {record} inside)")
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)  # the old directory, whole, under a hidden name
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
