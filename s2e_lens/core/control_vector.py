"""Steering vectors as a GGUF control vector: the file llama.cpp's ``--control-vector`` reads
(the format repeng exports).

A control vector holds one residual-stream direction per layer, as float32 tensors named
``direction.{layer}`` in a GGUF file of architecture ``controlvector``; llama.cpp adds
``direction.{l}`` to the output of block ``l`` (0-based) and scales it by
``--control-vector-scaled FILE SCALE``. Block 0 has no slot in that format (llama.cpp numbers
directions from 1), so block 0's direction is left out and said so. The direction written for
block ``l`` is :meth:`SteeringVectors.to_residual` (``v_attn[l] + v_mlp[l]``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from s2e_lens.core.vectors import SteeringVectors, VectorMismatchError
from s2e_lens.io import files

ARCHITECTURE = "controlvector"


def save_control_vector(
    vectors: SteeringVectors, path: str | Path, *, scale: float = 1.0, overwrite: bool = False
) -> Path:
    """Write ``scale * vectors.to_residual()`` as a GGUF control vector (blocks 1..L-1).

    The model hint is the model's transformers ``model_type`` (llama.cpp warns when it does
    not match the model it is loaded with).
    """
    import gguf

    target = Path(path)
    if target.suffix != ".gguf":
        raise VectorMismatchError(f"a control vector file ends in .gguf; got {target.name!r}")
    residual = scale * vectors.to_residual()
    if not torch.isfinite(residual).all():
        raise VectorMismatchError("the steering vectors have NaN or infinite entries; recompute them")
    files.check_output(target, kind="file", overwrite=overwrite, what="control vector")
    with tempfile.TemporaryDirectory() as scratch:  # gguf writes to a path; the bytes go through io.files
        tmp = Path(scratch) / "control.gguf"
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_string(f"{ARCHITECTURE}.model_hint", str(vectors.model.get("model_type", "")))
        writer.add_uint32(f"{ARCHITECTURE}.layer_count", vectors.n_layers - 1)
        for layer in range(1, vectors.n_layers):
            writer.add_tensor(f"direction.{layer}", residual[layer].numpy().astype("float32"))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        data = tmp.read_bytes()
    return files.write_bytes(target, data, overwrite=overwrite)


def load_control_vector(path: str | Path) -> tuple[dict[int, torch.Tensor], str]:
    """The directions of a GGUF control vector, ``{block: [d_model]}``, and its model hint.
    Turn them into steering vectors with :meth:`SteeringVectors.from_residual`."""
    import gguf

    reader = gguf.GGUFReader(Path(path))
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != ARCHITECTURE:
        raise VectorMismatchError(f"{path} is not a GGUF control vector (architecture {arch and arch.contents()!r})")
    hint = reader.get_field(f"{ARCHITECTURE}.model_hint")
    directions = {
        int(t.name.removeprefix("direction.")): torch.tensor(t.data.copy(), dtype=torch.float32).reshape(-1)
        for t in reader.tensors
        if t.name.startswith("direction.")
    }
    return directions, str(hint.contents()) if hint is not None else ""
