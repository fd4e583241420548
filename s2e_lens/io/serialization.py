"""Safetensors + JSON files, written atomically, never pickled.

Each file is ``NAME.safetensors`` whose header metadata holds the JSON description (the
authoritative copy), plus a readable ``NAME.json`` sidecar with the same JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as _st_save

from s2e_lens.errors import S2EError

FORMAT_VERSION = 1


class FileFormatError(S2EError):
    """A file that is not what it should be (wrong kind, corrupt, from a newer version)."""


def paths(path: str | Path) -> tuple[Path, Path]:
    """The ``.safetensors`` file and its ``.json`` sidecar for a path given with either suffix
    or none (``plan``, ``plan.safetensors`` and ``plan.json`` name the same pair)."""
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def check_save_target(
    path: str | Path, *, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()
) -> tuple[Path, Path]:
    """Refuse, before any work, a save target that exists (without ``overwrite``), is a
    directory, or is one of ``inputs`` (an input is never overwritten by an output)."""
    from s2e_lens.io.files import check_output

    if Path(path).is_dir() or Path(path).name in ("", ".", ".."):
        raise FileFormatError(f"{path} is a directory; give a file name such as {Path(path) / 'plan'}")
    st_path, json_path = paths(path)
    inputs_all = [q for item in inputs for q in paths(item)]
    for target in (st_path, json_path):
        check_output(target, kind="file", overwrite=overwrite, inputs=inputs_all)
    return st_path, json_path


def encode(
    path: str | Path, tensors: dict[str, torch.Tensor], *, kind: str, metadata: dict[str, Any]
) -> dict[Path, str | bytes]:
    """The two files of one saved object (``.safetensors`` and its ``.json`` sidecar) as
    bytes, not yet written: give several to :func:`s2e_lens.io.files.write_all` to write them
    as one output."""
    from s2e_lens.version import __version__

    st_path, json_path = paths(path)
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise FileFormatError(f"refusing to save {kind} with NaN or infinite values in {bad}")
    doc = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "s2e_lens_version": __version__,
        # the dtype each tensor was written with: a file changed afterwards (lambdas stored as
        # bool, say) is refused on load instead of being cast back silently
        "dtypes": {name: dtype_name(t) for name, t in sorted(tensors.items())},
        **metadata,
    }
    text = finite_json(doc, indent=2, sort_keys=True, default=_json_default)
    blob = _save_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, {"s2e": text})
    return {st_path: blob, json_path: text + "\n"}


def save(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    *,
    kind: str,
    metadata: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write ``tensors`` and ``metadata`` as one output (both files or neither); returns the
    .safetensors path. An existing file is replaced only with ``overwrite``."""
    from s2e_lens.io.files import write_all

    st_path, _ = check_save_target(path, overwrite=overwrite)
    write_all(encode(path, tensors, kind=kind, metadata=metadata), overwrite=overwrite)
    return st_path


def finite_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (invalid JSON for strict parsers):
    non-finite floats become ``null``.

    >>> finite_json({"a": float("nan"), "b": [1.5, float("inf")]})
    '{"a": null, "b": [1.5, null]}'
    """
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def dtype_name(tensor: torch.Tensor) -> str:
    """``float32``, ``int64``, ``bool``, ...: a tensor's dtype as the header records it."""
    return str(tensor.dtype).removeprefix("torch.")


def check_dtypes(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | Path) -> None:
    """The tensors have the dtypes the header says they were written with (files written
    before headers recorded dtypes pass; their loaders check what they need)."""
    recorded = meta.get("dtypes")
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise FileFormatError(f"{path}: the header's dtypes are not a mapping; the file is damaged")
    changed = {
        name: f"{dtype_name(t)} (written as {recorded.get(name, 'nothing: no such tensor was written')})"
        for name, t in tensors.items()
        if recorded.get(name) != dtype_name(t)
    }
    if changed:
        raise FileFormatError(
            f"{path}: tensors are not stored as they were written: {changed}; the file was changed after "
            "s2e_lens wrote it. Recompute it"
        )


def _save_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    return _st_save(tensors, metadata=metadata)


def _read(path: str | Path, *, tensors: bool) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The file's tensors (if asked) and its s2e_lens metadata, or a FileFormatError."""
    given = Path(path)
    if given.is_dir() and not paths(path)[0].is_file():
        raise FileFormatError(f"{given} is a directory, not an s2e_lens file (.safetensors)")
    st_path, _ = paths(path)
    if given.is_file() and given.suffix not in (".safetensors", ".json", ""):
        raise FileFormatError(
            f"{given} is not an s2e_lens file: s2e_lens reads .safetensors files with a .json sidecar "
            "and never loads pickles (.pt, .bin, .pkl)"
        )
    if not st_path.is_file():
        hint = f" ({given} is a directory)" if given.is_dir() else ""
        raise FileFormatError(f"no such file: {st_path}{hint}")
    try:
        with safe_open(str(st_path), framework="pt") as fh:
            header = fh.metadata() or {}
            loaded = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}
    except Exception as err:  # safetensors raises its own error types
        raise FileFormatError(f"{st_path} is not a readable safetensors file (truncated or not one): {err}") from None
    if "s2e" not in header:
        raise FileFormatError(f"{st_path} has no s2e_lens metadata; it was not written by s2e_lens")
    try:
        meta = json.loads(header["s2e"])
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{st_path}: its s2e_lens header is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise FileFormatError(f"{st_path}: its s2e_lens header is not a JSON object")
    return st_path, loaded, meta


def require(meta: dict[str, Any], keys: tuple[str, ...], path: str | Path) -> None:
    """Refuse a header that lacks fields a loader needs, naming the file and the fields."""
    missing = [k for k in keys if k not in meta]
    if missing:
        raise FileFormatError(f"{path}: the header lacks {missing}; the file is damaged or was edited by hand")


def check_finite(tensors: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    bad = {
        k: int((~torch.isfinite(t)).sum())
        for k, t in tensors.items()
        if t.is_floating_point() and not torch.isfinite(t).all()
    }
    if bad:
        raise FileFormatError(f"{path}: {what} has NaN or infinite values ({bad}); it cannot be used. Recompute it.")


def load(path: str | Path, *, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    st_path, tensors, meta = _read(path, tensors=True)
    if meta.get("kind") != kind:
        raise FileFormatError(f"{st_path} holds {meta.get('kind')!r}, not {kind!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise FileFormatError(
            f"{st_path} was written by a newer s2e_lens (format {meta['format_version']}); upgrade s2e_lens"
        )
    check_dtypes(tensors, meta, st_path)
    check_finite(tensors, st_path, kind.replace("_", " "))
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
