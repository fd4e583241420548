"""Steering vectors: per-layer differences of mean block outputs (and, optionally, of each
component's own output)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from s2e_lens.core import edit_rule
from s2e_lens.core.statistics import POSITIONS_RULE, ContrastiveStatistics
from s2e_lens.core.storage import compute_dtype, stored
from s2e_lens.errors import S2EError
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

    def __post_init__(self) -> None:
        # CPU float32 whatever the model's dtype and device (core.storage)
        self.v_attn, self.v_mlp = stored(self.v_attn), stored(self.v_mlp)
        self.v_head = None if self.v_head is None else stored(self.v_head)
        self.v_neuron = None if self.v_neuron is None else stored(self.v_neuron)

    @classmethod
    def from_statistics(
        cls,
        stats: ContrastiveStatistics,
        *,
        W_O: Float[torch.Tensor, "layer head d_head d_model"] | None = None,
        W_out: Float[torch.Tensor, "layer d_mlp d_model"] | None = None,
    ) -> SteeringVectors:
        """Paper-default vectors; pass ``W_O`` / ``W_out`` to add component-level vectors."""
        d = stats.difference
        v_head = v_neuron = None
        if W_O is not None:  # float32 maths on the weights' device
            W = W_O.to(compute_dtype(W_O.dtype))
            v_head = torch.einsum("lhd,lhdm->lhm", d.z.to(device=W.device, dtype=W.dtype), W)
        if W_out is not None:
            W = W_out.to(compute_dtype(W_out.dtype))
            v_neuron = d.post.to(device=W.device, dtype=W.dtype)[..., None] * W
        return cls(
            v_attn=d.attn_out,
            v_mlp=d.mlp_out,
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

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Safetensors + JSON; an existing file is replaced only with ``overwrite``."""
        from s2e_lens.io import files

        st_path, _ = serialization.check_save_target(path, overwrite=overwrite)
        files.write_all(self.encode(path), overwrite=overwrite)
        return st_path

    def encode(self, path: str | Path) -> dict[Path, str | bytes]:
        """The files :meth:`save` writes, as bytes (to write with others as one output)."""
        tensors = {"v_attn": self.v_attn, "v_mlp": self.v_mlp}
        if self.v_head is not None:
            tensors["v_head"] = self.v_head
        if self.v_neuron is not None:
            tensors["v_neuron"] = self.v_neuron
        meta = {"model": self.model, "provenance": self.provenance, "positions": self.positions}
        return serialization.encode(path, tensors, kind="steering_vectors", metadata=meta)

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

    # ---------------------------------------------------------------- arithmetic

    def _combine(self, other: SteeringVectors, sign: float, op: str) -> SteeringVectors:
        if not isinstance(other, SteeringVectors):
            return NotImplemented
        if self.v_attn.shape != other.v_attn.shape or self.v_mlp.shape != other.v_mlp.shape:
            raise VectorMismatchError(
                f"cannot {op} steering vectors of shapes {tuple(self.v_attn.shape)} and "
                f"{tuple(other.v_attn.shape)}: they were made on models of different sizes"
            )
        mine, theirs = self.model.get("fingerprint"), other.model.get("fingerprint")
        if mine != theirs:
            raise VectorMismatchError(
                f"cannot {op} steering vectors made on different models ({self.model.get('name')!r}, "
                f"fingerprint {mine}, and {other.model.get('name')!r}, fingerprint {theirs}); their "
                "directions live in different residual spaces"
            )

        def both(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None or b is None else a + sign * b

        return SteeringVectors(
            v_attn=self.v_attn + sign * other.v_attn,
            v_mlp=self.v_mlp + sign * other.v_mlp,
            model=dict(self.model),
            provenance={"operation": op, "operands": [self.provenance, other.provenance]},
            positions=self.positions,
            v_head=both(self.v_head, other.v_head),
            v_neuron=both(self.v_neuron, other.v_neuron),
        )

    def scaled(self, factor: float) -> SteeringVectors:
        """Every vector times ``factor`` (also ``factor * vectors``)."""
        factor = float(factor)
        if not math.isfinite(factor):
            raise VectorMismatchError(f"cannot scale steering vectors by {factor}; use a finite number")
        return SteeringVectors(
            v_attn=factor * self.v_attn,
            v_mlp=factor * self.v_mlp,
            model=dict(self.model),
            provenance={"operation": f"scale {factor:g}", "operands": [self.provenance]},
            positions=self.positions,
            v_head=None if self.v_head is None else factor * self.v_head,
            v_neuron=None if self.v_neuron is None else factor * self.v_neuron,
        )

    def __add__(self, other: SteeringVectors) -> SteeringVectors:
        """Sum of two behaviours' vectors on the same model (e.g. refusal + truthfulness)."""
        return self._combine(other, 1.0, "add")

    def __sub__(self, other: SteeringVectors) -> SteeringVectors:
        return self._combine(other, -1.0, "subtract")

    def __mul__(self, factor: float) -> SteeringVectors:
        if isinstance(factor, SteeringVectors) or not isinstance(factor, (int, float)):
            return NotImplemented
        return self.scaled(factor)

    __rmul__ = __mul__

    def __truediv__(self, factor: float) -> SteeringVectors:
        if not isinstance(factor, (int, float)) or factor == 0:
            raise VectorMismatchError(f"cannot divide steering vectors by {factor!r}; use a non-zero number")
        return self.scaled(1.0 / factor)

    def __neg__(self) -> SteeringVectors:
        return self.scaled(-1.0)

    # ---------------------------------------------------------------- residual-stream views

    def to_residual(self) -> Float[torch.Tensor, "layer d_model"]:
        """Per layer, ``v_attn[l] + v_mlp[l]``: what the two shifts add to the residual stream by
        the end of block ``l`` (the layout of repeng's control vectors and of steering-vectors'
        ``SteeringVector.layer_activations``). Added at the block's output instead, it is not
        quite the same intervention: the MLP of block ``l`` no longer sees the attention shift."""
        return self.v_attn + self.v_mlp

    def layer_activations(self) -> dict[int, torch.Tensor]:
        """steering-vectors' ``SteeringVector(layer_activations=..., layer_type="decoder_block")``
        layout, as plain tensors: ``{layer: residual vector}``."""
        residual = self.to_residual()
        return {layer: residual[layer].clone() for layer in range(self.n_layers)}

    @classmethod
    def from_residual(
        cls,
        directions: dict[int, torch.Tensor] | torch.Tensor,
        model: dict[str, Any],
        *,
        provenance: dict[str, Any] | None = None,
    ) -> SteeringVectors:
        """Vectors from residual-stream directions (``{layer: [d_model]}``, or ``[layer, d_model]``):
        each is added at its block's MLP output, which for pre-norm blocks (Llama, Qwen, GPT-2, ...)
        is exactly the residual stream at the block's end. Blocks with a norm after the MLP
        (Gemma's post-feedforward norm) normalise it first, so there it is an approximation.
        ``model`` is the identity of the model they are for (``s2e_lens.models.identity.model_identity``).
        """
        n_layers, d_model = int(model["n_layers"]), int(model["d_model"])
        v_mlp = torch.zeros(n_layers, d_model)
        items = dict(enumerate(directions)) if isinstance(directions, torch.Tensor) else dict(directions)
        for layer, vector in items.items():
            if not 0 <= int(layer) < n_layers or tuple(vector.shape) != (d_model,):
                raise VectorMismatchError(
                    f"direction for layer {layer} has shape {tuple(vector.shape)}; the model has layers "
                    f"0..{n_layers - 1} and d_model {d_model}"
                )
            v_mlp[int(layer)] = stored(vector)
        return cls(
            v_attn=torch.zeros(n_layers, d_model),
            v_mlp=v_mlp,
            model=dict(model),
            provenance=dict(provenance or {"source": "residual-stream directions"}),
            positions="as given (residual-stream directions)",
        )


class VectorMismatchError(S2EError, ValueError):
    """Steering vectors that cannot be combined: other models, shapes or factors."""
