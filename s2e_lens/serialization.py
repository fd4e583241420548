"""Safetensors + JSON files, written atomically, never pickled.

Each file is ``NAME.safetensors`` whose header metadata holds the JSON description (the
authoritative copy), plus a readable ``NAME.json`` sidecar with the same JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as _st_save

from s2e_lens.cache import atomic_file
from s2e_lens.errors import S2EError

FORMAT_VERSION = 1


class FileFormatError(S2EError):
    """A file that is not what it should be (wrong kind, corrupt, from a newer version)."""


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == ".json":
        p = p.with_suffix("")
    if p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    return p, p.with_suffix(".json")


def save(path: str | Path, tensors: dict[str, torch.Tensor], *, kind: str, metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``metadata`` atomically; returns the .safetensors path."""
    from s2e_lens import __version__

    st_path, json_path = _paths(path)
    doc = {"kind": kind, "format_version": FORMAT_VERSION, "s2e_lens_version": __version__, **metadata}
    text = json.dumps(doc, indent=2, sort_keys=True, default=_json_default)
    blob = _save_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, {"s2e": text})
    with atomic_file(st_path) as fh:
        fh.write(blob)  # type: ignore[attr-defined]
    with atomic_file(json_path, "w") as fh:
        fh.write(text + "\n")  # type: ignore[attr-defined]
    return st_path


def _save_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    return _st_save(tensors, metadata=metadata)


def _read(path: str | Path, *, tensors: bool) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The file's tensors (if asked) and its s2e_lens metadata, or a FileFormatError."""
    st_path, _ = _paths(path)
    if not st_path.is_file():
        raise FileFormatError(f"no such file: {st_path}")
    try:
        with safe_open(str(st_path), framework="pt") as fh:
            header = fh.metadata() or {}
            loaded = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}
    except Exception as err:  # safetensors raises its own error types
        raise FileFormatError(f"{st_path} is not a readable safetensors file: {err}") from None
    if "s2e" not in header:
        raise FileFormatError(f"{st_path} has no s2e_lens metadata; it was not written by s2e_lens")
    return st_path, loaded, json.loads(header["s2e"])


def load(path: str | Path, *, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    st_path, tensors, meta = _read(path, tensors=True)
    if meta.get("kind") != kind:
        raise FileFormatError(f"{st_path} holds {meta.get('kind')!r}, not {kind!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise FileFormatError(
            f"{st_path} was written by a newer s2e_lens (format {meta['format_version']}); upgrade s2e_lens"
        )
    return tensors, meta


def kind_of(path: str | Path) -> str:
    """The kind of an s2e_lens file (``edit_plan``, ``steering_vectors``, ...), from its header."""
    return str(_read(path, tensors=False)[2].get("kind"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in JSON metadata")
