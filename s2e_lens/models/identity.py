"""Model identity: what a saved file (statistics, vectors, edit plan) was computed on.

The fingerprint hashes a strided sample of every tensor Steer2Edit never edits, so an edited
model keeps the identity of its base model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from s2e_lens.errors import S2EError

if TYPE_CHECKING:
    from s2e_lens.models.loaded import LoadedModel

SHAPE_KEYS = ("n_layers", "n_heads", "d_head", "d_model", "d_mlp")


class IdentityMismatchError(S2EError):
    """A file computed on one model applied to another."""


def weights_fingerprint(model: torch.nn.Module, never_edited: Callable[[str], bool], per_tensor: int = 4096) -> str:
    """Hash of a strided sample of every tensor that Steer2Edit never edits.

    Everything but the attention and MLP output projections enters the hash (embeddings,
    norms, Q/K/V, MLP input weights, ...), so a model keeps its identity when edited while a
    fine-tune that changed any of those weights does not share it.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not never_edited(name) or not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // per_tensor)
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(flat[::stride].to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


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
    if saved.get("fingerprint") != current["fingerprint"]:
        raise IdentityMismatchError(
            f"{what} was made for {saved.get('name')!r} (weights fingerprint "
            f"{saved.get('fingerprint')}), but the loaded model {current['name']!r} has "
            f"different weights (fingerprint {current['fingerprint']}), although the shapes "
            "match. Load the model it was made for, or recompute it on this one."
        )
