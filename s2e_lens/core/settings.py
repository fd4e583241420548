"""The settings of an edit: budgets and variant. Light to import (no torch): the CLI shows
these defaults in its help."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from s2e_lens.errors import S2EError

Direction = Literal["gradient", "mu", "svd"]
Importance = Literal["cosine", "dot"]
Selection = Literal["elastic_net", "top_k"]
Magnitude = Literal["paper", "relative"]
Vectors = Literal["layer", "component"]


class EditSettingsError(S2EError, ValueError):
    """Edit settings out of range."""


@dataclass(frozen=True)
class EditSettings:
    """Budgets and variant of an edit.

    ``rho_attn`` / ``rho_mlp``: elastic-net budgets (``<= 0`` switches the block type off).
    ``alpha`` in [0, 1): l1 share (sparsity); ``alpha = 0`` is pure l2 (dense).
    Variants of the paper's ablation: ``direction`` of k (``gradient`` = B^T v_hat, the method;
    ``mu`` = the mean input; ``svd`` = the top right singular vector of B), ``importance``
    (``cosine``, the method, or ``dot``), ``selection`` (``elastic_net``, the method, or
    ``top_k``: an l0 budget keeping the ``top_k_attn`` / ``top_k_mlp`` largest |g| with the l2
    shrink ``lam = g / (rho (1 - alpha))``).
    ``magnitude``: ``paper`` (lambda as the closed form gives it, in the residual stream's
    units) or ``relative`` (beyond the paper: the closed form's lambda is read in units of each
    component's own natural variation along v_hat, so that one rho means the same relative
    change in every model and layer; see :func:`s2e_lens.core.edit_rule.relative_scale_heads`).
    ``layers``: edit only these layers (the others keep lambda = 0).
    ``vectors``: ``layer`` (the paper: every component of a layer writes along the layer's
    v_hat, with ``g = cos(v_hat, B mu)``) or ``component`` (beyond the paper: each head and
    neuron writes along its own positive-minus-negative output ``c_i``, and its importance is
    its share of the layer's vector, ``g_i = c_i . v_hat / ||v||``; see
    :func:`s2e_lens.core.edit_rule.component_heads`). ``importance`` must stay ``cosine``
    there (the share replaces it).
    """

    # the defaults are the one source for the API and ``s2e edit``: a gentle attention-only edit,
    # calibrated on SmolLM2 safety (the paper's per-model configurations differ; see the README)
    rho_attn: float = 0.15
    rho_mlp: float = 0.0
    alpha: float = 0.5
    direction: Direction = "gradient"
    importance: Importance = "cosine"
    selection: Selection = "elastic_net"
    top_k_attn: int = 0
    top_k_mlp: int = 0
    magnitude: Magnitude = "paper"
    layers: tuple[int, ...] | None = None  # edit only these layers (None: every layer)
    vectors: Vectors = "layer"

    def __post_init__(self) -> None:
        for name in ("rho_attn", "rho_mlp", "alpha"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
                raise EditSettingsError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.alpha < 1.0:
            raise EditSettingsError(
                f"alpha must be in [0, 1), got {self.alpha}: alpha = 1 would divide by "
                "rho * (1 - alpha) = 0. Use alpha < 1 (e.g. 0.9) for sparser edits."
            )
        if self.direction not in ("gradient", "mu", "svd"):
            raise EditSettingsError(f"direction must be gradient, mu or svd, got {self.direction!r}")
        if self.importance not in ("cosine", "dot"):
            raise EditSettingsError(f"importance must be cosine or dot, got {self.importance!r}")
        if self.selection not in ("elastic_net", "top_k"):
            raise EditSettingsError(f"selection must be elastic_net or top_k, got {self.selection!r}")
        if self.magnitude not in ("paper", "relative"):
            raise EditSettingsError(f"magnitude must be paper or relative, got {self.magnitude!r}")
        if self.magnitude == "relative" and self.direction != "gradient" and self.rho_attn > 0:
            raise EditSettingsError(
                f"magnitude='relative' with direction={self.direction!r} would need each head's input "
                "covariance, which the statistics do not collect: use direction='gradient' (the method's), "
                "or magnitude='paper'"
            )
        if self.vectors not in ("layer", "component"):
            raise EditSettingsError(f"vectors must be layer or component, got {self.vectors!r}")
        if self.vectors == "component" and self.importance != "cosine":
            raise EditSettingsError(
                "vectors='component' scores each component by its share of the layer's vector; "
                "importance='dot' has no meaning there: leave importance='cosine'"
            )
        if self.layers is not None:
            layers = list(self.layers) if isinstance(self.layers, (list, tuple)) else None
            if not layers or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers):
                raise EditSettingsError(f"layers must be a non-empty list of layer indices >= 0, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(sorted(set(layers))))  # a JSON list reads back the same
        if self.top_k_attn < 0 or self.top_k_mlp < 0:
            raise EditSettingsError("top_k_attn and top_k_mlp must be >= 0")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
