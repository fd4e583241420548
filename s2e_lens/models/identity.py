"""Model identity: what a saved file (statistics, vectors, edit plan) was computed on.

The fingerprint hashes a strided sample of every tensor Steer2Edit never edits, so an edited
model keeps the identity of its base model, and the same weights keep it in another dtype: a
plan made on the float32 model applies to its bfloat16 or float16 copy, while a plan for other
weights is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from s2e_lens.errors import S2EError

if TYPE_CHECKING:
    from s2e_lens.models.loaded import LoadedModel

SHAPE_KEYS = ("n_layers", "n_heads", "d_head", "d_model", "d_mlp")


class IdentityMismatchError(S2EError):
    """A file computed on one model applied to another."""


# The fingerprint hashes the sample rounded to bfloat16: a float32 model, its bfloat16 copy and
# a float64 copy of the float32 weights give the same hash. A float16 copy rounds differently
# (and loses range), so the signature (the sampled values themselves, a few per tensor) is
# compared within the rounding error of the less precise dtype instead.
SIGNATURE_PER_TENSOR = 8
# relative rounding error bound per dtype (half an ulp), for comparing signatures across dtypes
ROUNDING = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}


Weights = torch.nn.Module | Mapping[str, torch.Tensor]  # a model, or its state dict


def _samples(
    model: Weights, never_edited: Callable[[str], bool], per_tensor: int
) -> Iterator[tuple[str, tuple[int, ...], torch.Tensor]]:
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    for name, tensor in state.items():
        if not never_edited(name) or not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // per_tensor)
        yield name, tuple(tensor.shape), flat[::stride][:per_tensor].to(device="cpu", dtype=torch.float32)


def weights_fingerprint(model: Weights, never_edited: Callable[[str], bool], per_tensor: int = 4096) -> str:
    """Hash of a strided sample of every tensor that Steer2Edit never edits, rounded to bfloat16.

    Everything but the attention and MLP output projections enters the hash (embeddings,
    norms, Q/K/V, MLP input weights, ...), so a model keeps its identity when edited while a
    fine-tune that changed any of those weights does not share it. The same weights give the
    same hash in float32, bfloat16 and float64.
    """
    digest = hashlib.sha256()
    for name, shape, sample in _samples(model, never_edited, per_tensor):
        digest.update(f"{name}{shape}".encode())
        digest.update(sample.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_signature(model: Weights, never_edited: Callable[[str], bool]) -> list[float]:
    """A few sampled values of every never-edited tensor (float32), for the cross-dtype check."""
    values: list[float] = []
    for _, _, sample in _samples(model, never_edited, SIGNATURE_PER_TENSOR):
        values += sample.tolist()
    return values


def same_weights_in_other_dtype(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether two identities with different fingerprints are the same weights held in two
    dtypes: every signature value agrees within the rounding error of the less precise one."""
    a, b = saved.get("signature"), current.get("signature")
    da, db = saved.get("dtype"), current.get("dtype")
    if not a or not b or len(a) != len(b) or da == db or da not in ROUNDING or db not in ROUNDING:
        return False
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    rel = 2 * max(ROUNDING[da], ROUNDING[db])
    tiny = 2.0**-14 * 2.0**-10  # below float16's smallest normal, values may flush toward zero
    return bool(((x - y).abs() <= rel * torch.maximum(x.abs(), y.abs()) + tiny).all())


def model_identity(model: LoadedModel) -> dict[str, Any]:
    card = model.card
    return {
        "name": card.name,
        "architecture": card.architecture,
        "model_type": card.model_type,
        "n_layers": card.n_layers,
        "n_heads": card.n_heads,
        "d_head": card.d_head,
        "d_model": card.d_model,
        "d_mlp": card.d_mlp,
        "fingerprint": card.fingerprint,
        "dtype": card.dtype,
        "signature": list(card.signature),
        "source_sha256": card.source_sha256,
    }


def check_identity(saved: dict[str, Any], model: LoadedModel, what: str) -> None:
    """Refuse a file made for another model: shapes first, then the weight fingerprint."""
    current = model_identity(model)
    shapes = [k for k in SHAPE_KEYS if saved.get(k) != current[k]]
    if shapes:
        diff = ", ".join(f"{k} {saved.get(k)} vs {current[k]}" for k in shapes)
        raise IdentityMismatchError(
            f"{what} was made for {saved.get('name')!r} and does not fit {current['name']!r} "
            f"({diff}). Recompute it on this model (s2e extract / s2e edit)."
        )
    if saved.get("fingerprint") != current["fingerprint"] and not same_weights_in_other_dtype(saved, current):
        raise IdentityMismatchError(
            f"{what} was made for {saved.get('name')!r} (weights fingerprint "
            f"{saved.get('fingerprint')}), but the loaded model {current['name']!r} has "
            f"different weights (fingerprint {current['fingerprint']}), although the shapes "
            "match. Load the model it was made for, or recompute it on this one."
        )
