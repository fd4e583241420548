"""Contrastive statistics: per-layer means of block outputs and component inputs.

For each set (positive, negative) and each layer: the mean output of the attention block
(before any post-attention norm) and of the MLP, the mean ``z`` of every head and the mean
post-activation of every neuron. Means are over each sample's response-predicting positions
first, then over samples (every sample weighs the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from s2e_lens.core.storage import stored

POSITIONS_RULE = (
    "response-predicting positions [start-1, end-1) of each sample, start = token length of the "
    "rendered prompt; mean over positions within a sample, then over samples"
)


def positions_rule(positions: str = "response", prompt_positions: int = 4) -> str:
    """The statistics' positions rule in words (``response`` is the paper's)."""
    if positions == "response":
        return POSITIONS_RULE
    window = {
        "prompt_end": f"the last {prompt_positions} positions of the rendered prompt [start-{prompt_positions}, start)",
        "both": f"the last {prompt_positions} prompt positions and the response-predicting ones "
        f"[start-{prompt_positions}, end-1)",
    }[positions]
    return (
        f"{window} of each sample, start = token length of the rendered prompt; mean over positions "
        "within a sample, then over samples"
    )


@dataclass
class SetMeans:
    """Means over one set (positive or negative)."""

    attn_out: Float[torch.Tensor, "layer d_model"]
    mlp_out: Float[torch.Tensor, "layer d_model"]
    z: Float[torch.Tensor, "layer head d_head"]
    post: Float[torch.Tensor, "layer d_mlp"]
    n_samples: int
    n_tokens: int  # response-predicting positions summed over samples

    def __post_init__(self) -> None:
        for name in ("attn_out", "mlp_out", "z", "post"):  # CPU float32 (core.storage)
            setattr(self, name, stored(getattr(self, name)))


def input_mean(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """A component's input mean ``mu``: the average of its positive and negative set means
    (each as stored), whatever the sets' sizes."""
    return 0.5 * (positive + negative)


@dataclass(frozen=True)
class MeanDifference:
    """Positive minus negative mean of each recorded quantity: ``attn_out`` and ``mlp_out`` are
    the layer steering vectors, ``z`` and ``post`` the heads' and neurons' input directions."""

    attn_out: Float[torch.Tensor, "layer d_model"]
    mlp_out: Float[torch.Tensor, "layer d_model"]
    z: Float[torch.Tensor, "layer head d_head"]
    post: Float[torch.Tensor, "layer d_mlp"]


@dataclass
class ContrastiveStatistics:
    positive: SetMeans
    negative: SetMeans
    model: dict[str, Any]  # identity of the model the statistics came from
    provenance: dict[str, Any] = field(default_factory=dict)
    positions: str = POSITIONS_RULE

    @property
    def difference(self) -> MeanDifference:
        """Positive minus negative means (the one place the steering direction is formed)."""
        pos, neg = self.positive, self.negative
        return MeanDifference(
            pos.attn_out - neg.attn_out, pos.mlp_out - neg.mlp_out, pos.z - neg.z, pos.post - neg.post
        )

    @property
    def mu_z(self) -> Float[torch.Tensor, "layer head d_head"]:
        """Input mean of each head: the average of the positive and negative means."""
        return input_mean(self.positive.z, self.negative.z)

    @property
    def mu_post(self) -> Float[torch.Tensor, "layer d_mlp"]:
        """Input mean of each neuron: the average of the positive and negative means."""
        return input_mean(self.positive.post, self.negative.post)

    # ----------------------------------------------------------------- files

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Safetensors + JSON (model identity, provenance, positions rule, set sizes); an
        existing file is replaced only with ``overwrite``."""
        from s2e_lens.io import files, serialization

        st_path, _ = serialization.check_save_target(path, overwrite=overwrite)
        files.write_all(self.encode(path), overwrite=overwrite)
        return st_path

    def encode(self, path: str | Path) -> dict[Path, str | bytes]:
        """The files :meth:`save` writes, as bytes (to write with others as one output)."""
        from s2e_lens.io import serialization

        tensors = {
            f"{side}.{name}": getattr(getattr(self, side), name)
            for side in ("positive", "negative")
            for name in _TENSORS
        }
        meta = {
            "model": self.model,
            "provenance": self.provenance,
            "positions": self.positions,
            "counts": {
                side: {"n_samples": getattr(self, side).n_samples, "n_tokens": getattr(self, side).n_tokens}
                for side in ("positive", "negative")
            },
        }
        return serialization.encode(path, tensors, kind="contrastive_statistics", metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> ContrastiveStatistics:
        from s2e_lens.io import serialization

        tensors, meta = serialization.load(path, kind="contrastive_statistics")
        serialization.require(meta, ("model", "provenance", "positions", "counts"), serialization.paths(path)[0])
        sides = {}
        for side in ("positive", "negative"):
            missing = [n for n in _TENSORS if f"{side}.{n}" not in tensors]
            if missing:
                raise serialization.FileFormatError(f"{path}: statistics lack {side} tensors {missing}")
            counts = meta["counts"][side]
            sides[side] = SetMeans(
                attn_out=tensors[f"{side}.attn_out"],
                mlp_out=tensors[f"{side}.mlp_out"],
                z=tensors[f"{side}.z"],
                post=tensors[f"{side}.post"],
                n_samples=int(counts["n_samples"]),
                n_tokens=int(counts["n_tokens"]),
            )
        return cls(sides["positive"], sides["negative"], meta["model"], meta["provenance"], meta["positions"])


_TENSORS = ("attn_out", "mlp_out", "z", "post")
