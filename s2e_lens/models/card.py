"""A model card: what was loaded, its shapes, and where its weights came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ModelCard:
    """Facts about a loaded model that a user (or an edit file) needs to identify it."""

    name: str
    architecture: str  # transformers class, e.g. LlamaForCausalLM
    family: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_params: int
    dtype: str
    chat_template: bool
    source: str  # human-readable provenance
    source_kind: str  # "packaged" | "local" | "hub" | "in-memory"
    source_sha256: str | None  # of the original weight file, where known
    checkpoint: str | None  # directory the weights were loaded from
    fingerprint: str  # hash of a strided sample of every never-edited tensor (same in float32 and bfloat16)
    license: str | None = None
    note: str = ""
    context_length: int | None = None  # the longest sequence the model takes (position embeddings)
    # the device_map the weights were placed with (names and directories), as given
    device_map: str | dict[str, str] | None = None
    # a few sampled values per never-edited tensor: identifies the same weights in another dtype
    signature: tuple[float, ...] = field(default=(), repr=False)

    @property
    def n_heads_total(self) -> int:
        return self.n_layers * self.n_heads

    @property
    def n_neurons_total(self) -> int:
        return self.n_layers * self.d_mlp

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        rows = [
            ("model", self.name),
            ("architecture", f"{self.architecture} ({self.family} family, {self.model_type})"),
            ("layers", str(self.n_layers)),
            ("heads", f"{self.n_heads} per layer ({self.n_kv_heads} key/value), {self.n_heads_total} in all"),
            ("d_model / d_head", f"{self.d_model} / {self.d_head}"),
            ("d_mlp", f"{self.d_mlp} ({self.n_neurons_total:,} neurons in all)"),
            ("vocabulary", f"{self.d_vocab:,}"),
            ("context", f"{self.context_length:,} tokens" if self.context_length else "unknown"),
            ("parameters", f"{self.n_params:,} ({self.n_params / 1e6:.1f} M), {self.dtype}"),
            ("chat template", "yes" if self.chat_template else "no (plain concatenation)"),
            ("weights from", self.source),
        ]
        if self.source_sha256:
            rows.append(("sha256", self.source_sha256))
        rows.append(("fingerprint", self.fingerprint))
        if self.checkpoint:
            rows.append(("checkpoint", self.checkpoint))
        if self.license:
            rows.append(("licence", self.license))
        if self.note:
            rows.append(("note", self.note))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
