"""Steering vectors: per-layer differences of mean block outputs (and, optionally, of each
component's own output)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from s2e_lens.core import edit_rule
from s2e_lens.core.statistics import POSITIONS_RULE, ContrastiveStatistics
from s2e_lens.io import serialization


@dataclass
class SteeringVectors:
    """``v_attn[l] = pos_mean(attn out) - neg_mean(attn out)``; ``v_mlp`` likewise.

    Component-level vectors (``v_head[l, h]``: the difference of the head's own mean output
    ``z_h W_O[h]``; ``v_neuron[l, n]`` likewise for ``a_n W_out[n]``) are optional. Because a
    component's output is linear in its input, they equal ``(pos_mean_z - neg_mean_z) W_O[h]``
    and ``(pos_mean_a - neg_mean_a) W_out[n]`` exactly, so no extra pass is needed.
    """

    v_attn: Float[torch.Tensor, "layer d_model"]
    v_mlp: Float[torch.Tensor, "layer d_model"]
    model: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    positions: str = POSITIONS_RULE
    v_head: Float[torch.Tensor, "layer head d_model"] | None = None
    v_neuron: Float[torch.Tensor, "layer d_mlp d_model"] | None = None

    @classmethod
    def from_statistics(
        cls,
        stats: ContrastiveStatistics,
        *,
        W_O: Float[torch.Tensor, "layer head d_head d_model"] | None = None,
        W_out: Float[torch.Tensor, "layer d_mlp d_model"] | None = None,
    ) -> SteeringVectors:
        """Paper-default vectors; pass ``W_O`` / ``W_out`` to add component-level vectors."""
        pos, neg = stats.positive, stats.negative
        v_head = v_neuron = None
        if W_O is not None:
            v_head = torch.einsum("lhd,lhdm->lhm", (pos.z - neg.z).to(W_O.dtype), W_O)
        if W_out is not None:
            v_neuron = (pos.post - neg.post).to(W_out.dtype)[..., None] * W_out
        return cls(
            v_attn=pos.attn_out - neg.attn_out,
            v_mlp=pos.mlp_out - neg.mlp_out,
            model=dict(stats.model),
            provenance=dict(stats.provenance),
            positions=stats.positions,
            v_head=v_head,
            v_neuron=v_neuron,
        )

    @property
    def n_layers(self) -> int:
        return int(self.v_attn.shape[0])

    def norms(self) -> dict[str, torch.Tensor]:
        return {"attn": self.v_attn.norm(dim=-1), "mlp": self.v_mlp.norm(dim=-1)}

    def unit(self, kind: str) -> Float[torch.Tensor, "layer d_model"]:
        """``v_hat`` per layer for ``kind`` in {"attn", "mlp"}; zero vectors stay zero."""
        return edit_rule.unit(self.v_attn if kind == "attn" else self.v_mlp)

    def cosine_across_layers(self, kind: str = "attn") -> Float[torch.Tensor, "layer layer"]:
        """Cosine similarity between the layers' vectors of one kind."""
        u = self.unit(kind)
        return u @ u.T

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Safetensors + JSON; an existing file is replaced only with ``overwrite``."""
        tensors = {"v_attn": self.v_attn, "v_mlp": self.v_mlp}
        if self.v_head is not None:
            tensors["v_head"] = self.v_head
        if self.v_neuron is not None:
            tensors["v_neuron"] = self.v_neuron
        meta = {"model": self.model, "provenance": self.provenance, "positions": self.positions}
        return serialization.save(path, tensors, kind="steering_vectors", metadata=meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> SteeringVectors:
        tensors, meta = serialization.load(path, kind="steering_vectors")
        serialization.require(meta, ("model", "provenance", "positions"), serialization.paths(path)[0])
        missing = [n for n in ("v_attn", "v_mlp") if n not in tensors]
        if missing:
            raise serialization.FileFormatError(f"{path}: steering vectors lack tensors {missing}")
        return cls(
            v_attn=tensors["v_attn"],
            v_mlp=tensors["v_mlp"],
            model=meta["model"],
            provenance=meta["provenance"],
            positions=meta["positions"],
            v_head=tensors.get("v_head"),
            v_neuron=tensors.get("v_neuron"),
        )
