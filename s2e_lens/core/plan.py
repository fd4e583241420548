"""EditPlan: every edited component with its importance, lambda and direction, per block type.

Plans are data: compute one from weights, vectors and input means (pure, here) or from a
loaded model (:func:`s2e_lens.engine.planning.compute_plan`), inspect it as a DataFrame, save
it, and apply it with :mod:`s2e_lens.engine.mapper`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int

from s2e_lens.core import edit_rule
from s2e_lens.core.settings import EditSettings
from s2e_lens.core.storage import compute_dtype, stored
from s2e_lens.errors import S2EError
from s2e_lens.io import serialization

TENSOR_FIELDS = (
    "v_hat_attn",
    "v_hat_mlp",
    "head_g",
    "head_lambda",
    "head_k",
    "head_k_norm",
    "mu_z",
    "neuron_g",
    "neuron_lambda",
    "neuron_k",
    "mu_post",
    "W_O_norm",
    "W_out_norm",
)
OPTIONAL_TENSORS = ("head_u", "neuron_u_index", "neuron_u")  # component-level vectors only


class PlanError(S2EError, ValueError):
    """A plan that cannot be computed from the given inputs."""


@dataclass
class EditPlan:
    """A Steer2Edit edit of one model. Dense per-component arrays; ``lambda == 0`` = unedited."""

    settings: EditSettings
    v_hat_attn: Float[torch.Tensor, "layer d_model"]
    v_hat_mlp: Float[torch.Tensor, "layer d_model"]
    head_g: Float[torch.Tensor, "layer head"]
    head_lambda: Float[torch.Tensor, "layer head"]
    head_k: Float[torch.Tensor, "layer head d_head"]  # unit k_hat
    head_k_norm: Float[torch.Tensor, "layer head"]  # ||B^T v_hat|| before normalising
    mu_z: Float[torch.Tensor, "layer head d_head"]
    neuron_g: Float[torch.Tensor, "layer d_mlp"]
    neuron_lambda: Float[torch.Tensor, "layer d_mlp"]
    neuron_k: Float[torch.Tensor, "layer d_mlp"]  # sign, in {-1, 0, 1}
    mu_post: Float[torch.Tensor, "layer d_mlp"]
    W_O_norm: Float[torch.Tensor, " layer"]  # ||W_O[l]||_F of the weights the plan was made on
    W_out_norm: Float[torch.Tensor, " layer"]
    model: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    variant: str = "steer2edit"  # or "orthogonalisation"
    # component-level vectors (settings.vectors == "component"): each head's own unit write
    # direction, and each edited neuron's (its row index and unit direction; sparse, as a dense
    # [layer, d_mlp, d_model] tensor would be the size of W_out). None: the layer's v_hat.
    head_u: Float[torch.Tensor, "layer head d_model"] | None = None
    neuron_u_index: Int[torch.Tensor, "edited 2"] | None = None
    neuron_u: Float[torch.Tensor, "edited d_model"] | None = None

    def __post_init__(self) -> None:
        # stored on the CPU in float32 whatever the model's dtype and device (core.storage)
        for name in TENSOR_FIELDS:
            setattr(self, name, stored(getattr(self, name)))
        for name in ("head_u", "neuron_u"):
            if getattr(self, name) is not None:
                setattr(self, name, stored(getattr(self, name)))
        if self.neuron_u_index is not None:
            self.neuron_u_index = self.neuron_u_index.detach().to(device="cpu", dtype=torch.long)
        if (self.neuron_u is None) != (self.neuron_u_index is None):
            raise PlanError("neuron_u and neuron_u_index come together")
        if self.neuron_u_index is not None:  # a neuron without its direction would be silently unedited
            covered = torch.zeros_like(self.edited_neurons)
            covered[self.neuron_u_index[:, 0], self.neuron_u_index[:, 1]] = True
            if not torch.equal(covered, self.edited_neurons) or len(self.neuron_u_index) != int(covered.sum()):
                raise PlanError("the plan's neuron directions must cover exactly its edited neurons, once each")

    # ---------------------------------------------------------------- views

    @property
    def n_layers(self) -> int:
        return int(self.head_g.shape[0])

    @property
    def edited_heads(self) -> torch.Tensor:
        return self.head_lambda != 0

    @property
    def edited_neurons(self) -> torch.Tensor:
        return (self.neuron_lambda != 0) & (self.neuron_k != 0)

    @property
    def neuron_lambda_applied(self) -> Float[torch.Tensor, "layer d_mlp"]:
        """Each neuron's lambda as written into the weights: zero where ``k = 0`` (no edit)."""
        return self.neuron_lambda * self.neuron_k.abs()

    @property
    def n_edited(self) -> dict[str, int]:
        return {"heads": int(self.edited_heads.sum()), "neurons": int(self.edited_neurons.sum())}

    def delta_W_O(self) -> Float[torch.Tensor, "layer head d_head d_model"]:
        write = self.head_u if self.head_u is not None else self.v_hat_attn
        return edit_rule.head_deltas(self.head_lambda, self.head_k, write)

    def _neuron_directions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The component-level neuron writes as ``(layer, index, u)``; None with layer vectors."""
        if self.neuron_u is None or self.neuron_u_index is None:
            return None
        return self.neuron_u_index[:, 0], self.neuron_u_index[:, 1], self.neuron_u

    def delta_W_out(self) -> Float[torch.Tensor, "layer d_mlp d_model"]:
        rows = self._neuron_directions()
        if rows is None:
            return edit_rule.neuron_deltas(self.neuron_lambda, self.neuron_k, self.v_hat_mlp)
        layer, index, u = rows
        L, N = self.neuron_lambda.shape
        delta = torch.zeros(L, N, u.shape[-1], dtype=u.dtype)
        scale = self.neuron_lambda[layer, index] * self.neuron_k[layer, index]
        delta[layer, index] = scale[:, None] * u
        return delta

    def _along_layer_vector(self) -> tuple[torch.Tensor, torch.Tensor]:
        """How much a unit write of each component projects on its layer's v_hat (1 with the
        paper's layer vectors)."""
        heads = torch.ones_like(self.head_lambda)
        if self.head_u is not None:
            heads = torch.einsum("lhm,lm->lh", self.head_u, self.v_hat_attn)
        neurons = torch.ones_like(self.neuron_lambda)
        rows = self._neuron_directions()
        if rows is not None:
            layer, index, u = rows
            neurons = torch.zeros_like(self.neuron_lambda)
            neurons[layer, index] = (u * self.v_hat_mlp[layer]).sum(-1)
        return heads, neurons

    def predicted_shift(self) -> dict[str, Float[torch.Tensor, " layer"]]:
        """Predicted change of the block output's projection on v_hat at the mean input.

        An edited head adds ``lam (z . k_hat) v_hat``, so at ``z = mu`` the projection moves by
        ``lam (mu . k_hat)``; a neuron adds ``lam k a v_hat``, moving it by ``lam k mu``.
        """
        along_h, along_n = self._along_layer_vector()  # component-level writes project partly
        heads = (self.head_lambda * torch.einsum("lhd,lhd->lh", self.mu_z, self.head_k) * along_h).sum(-1)
        neurons = (self.neuron_lambda * self.neuron_k * self.mu_post * along_n).sum(-1)
        return {"attn": heads, "mlp": neurons}

    def edit_norms(self) -> dict[str, Float[torch.Tensor, " layer"]]:
        """``||Delta W||`` per layer (Frobenius), per block type.

        Head blocks are disjoint slices of W_O[l] and k_hat, v_hat are unit vectors, so
        ``||Delta W_O[l]||^2 = sum_h lam_h^2``; likewise for neurons with |k| = 1.
        """
        return {"attn": self.head_lambda.pow(2).sum(-1).sqrt(), "mlp": self.neuron_lambda_applied.pow(2).sum(-1).sqrt()}

    def relative_norms(self) -> dict[str, Float[torch.Tensor, " layer"]]:
        """``||Delta W|| / ||W||`` per layer (Frobenius), per block type."""
        norms = self.edit_norms()
        return {"attn": norms["attn"] / self.W_O_norm, "mlp": norms["mlp"] / self.W_out_norm}

    def to_dataframe(self, edited_only: bool = True) -> pd.DataFrame:
        """One row per component: layer, kind, index, g, lambda, ||k|| (heads), k (neurons)."""
        L, H = self.head_g.shape
        N = self.neuron_g.shape[1]
        heads = pd.DataFrame(
            {
                "layer": torch.arange(L).repeat_interleave(H).numpy(),
                "kind": "head",
                "index": torch.arange(H).repeat(L).numpy(),
                "g": self.head_g.reshape(-1).numpy(),
                "lambda": self.head_lambda.reshape(-1).numpy(),
                "k_norm": self.head_k_norm.reshape(-1).numpy(),
                "k_sign": 1.0,
            }
        )
        neurons = pd.DataFrame(
            {
                "layer": torch.arange(L).repeat_interleave(N).numpy(),
                "kind": "neuron",
                "index": torch.arange(N).repeat(L).numpy(),
                "g": self.neuron_g.reshape(-1).numpy(),
                "lambda": self.neuron_lambda.reshape(-1).numpy(),
                "k_norm": 1.0,
                "k_sign": self.neuron_k.reshape(-1).numpy(),
            }
        )
        frame = pd.concat([heads, neurons], ignore_index=True)
        if edited_only:
            frame = frame[(frame["lambda"] != 0) & (frame["k_sign"] != 0)]
        return frame.reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        """Per layer: edited heads and neurons, ``||Delta W|| / ||W||``, predicted shift."""
        shift, rel = self.predicted_shift(), self.relative_norms()
        return pd.DataFrame(
            {
                "layer": range(self.n_layers),
                "heads_edited": self.edited_heads.sum(-1).numpy(),
                "neurons_edited": self.edited_neurons.sum(-1).numpy(),
                "attn_rel_norm": rel["attn"].numpy(),
                "mlp_rel_norm": rel["mlp"].numpy(),
                "attn_shift": shift["attn"].numpy(),
                "mlp_shift": shift["mlp"].numpy(),
            }
        )

    def describe(self) -> str:
        s = self.settings
        n = self.n_edited
        L, H = self.head_g.shape
        N = self.neuron_g.shape[1]
        return (
            f"{self.variant} plan for {self.model.get('name')}: {n['heads']}/{L * H} heads, "
            f"{n['neurons']}/{L * N} neurons edited (rho_attn={s.rho_attn}, rho_mlp={s.rho_mlp}, "
            f"alpha={s.alpha}, direction={s.direction}, importance={s.importance}, "
            f"selection={s.selection}, magnitude={s.magnitude}, vectors={s.vectors})"
        )

    # ----------------------------------------------------------------- files

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Safetensors + JSON sidecar; an existing file is replaced only with ``overwrite``."""
        meta = {
            "settings": self.settings.to_dict(),
            "model": self.model,
            "provenance": self.provenance,
            "variant": self.variant,
            "n_edited": self.n_edited,
        }
        tensors = {name: getattr(self, name) for name in TENSOR_FIELDS}
        tensors.update({n: getattr(self, n) for n in OPTIONAL_TENSORS if getattr(self, n) is not None})
        return serialization.save(path, tensors, kind="edit_plan", metadata=meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> EditPlan:
        """Read a saved plan. A damaged file (missing tensors or header fields, NaN or
        infinite values, settings out of range) is refused with the file named."""
        tensors, meta = serialization.load(path, kind="edit_plan")
        missing = [n for n in TENSOR_FIELDS if n not in tensors]
        if missing:
            raise serialization.FileFormatError(f"{path}: edit plan lacks tensors {missing}")
        serialization.require(meta, ("settings", "model", "provenance", "variant"), serialization.paths(path)[0])
        not_float = [
            n for n in (*TENSOR_FIELDS, "head_u", "neuron_u") if n in tensors and not tensors[n].is_floating_point()
        ]
        if not_float or ("neuron_u_index" in tensors and tensors["neuron_u_index"].is_floating_point()):
            raise serialization.FileFormatError(
                f"{path}: the plan's tensors {not_float or ['neuron_u_index']} have the wrong dtype "
                f"({', '.join(serialization.dtype_name(tensors[n]) for n in not_float or ['neuron_u_index'])}); "
                "the file was changed after s2e_lens wrote it. Recompute the plan"
            )
        try:
            settings = EditSettings(**meta["settings"])
        except (TypeError, S2EError) as err:
            raise serialization.FileFormatError(f"{path}: the plan's settings are not valid ({err})") from None
        return cls(
            settings=settings,
            **{name: tensors[name] for name in TENSOR_FIELDS},
            model=meta["model"],
            provenance=meta["provenance"],
            variant=meta["variant"],
            **{n: tensors[n] for n in OPTIONAL_TENSORS if n in tensors},
        )


# ------------------------------------------------------------------------------- builders


def compute_plan_from_tensors(
    W_O: Float[torch.Tensor, "layer head d_head d_model"],
    W_out: Float[torch.Tensor, "layer d_mlp d_model"],
    v_attn: Float[torch.Tensor, "layer d_model"],
    v_mlp: Float[torch.Tensor, "layer d_model"],
    mu_z: Float[torch.Tensor, "layer head d_head"],
    mu_post: Float[torch.Tensor, "layer d_mlp"],
    settings: EditSettings,
    *,
    model: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    dz: Float[torch.Tensor, "layer head d_head"] | None = None,
    dpost: Float[torch.Tensor, "layer d_mlp"] | None = None,
) -> EditPlan:
    """The pure core: weights, steering vectors and input means in, a plan out. ``dz`` and
    ``dpost`` (positive minus negative mean inputs) are needed for component-level vectors."""
    _check_vectors(v_attn, "v_attn", settings.rho_attn > 0)
    _check_vectors(v_mlp, "v_mlp", settings.rho_mlp > 0)
    # float32 (or wider) maths on the weights' device, whatever their dtype; the plan stores
    # its tensors on the CPU in float32
    dtype, device = compute_dtype(W_O.dtype), W_O.device
    W_O, W_out = W_O.to(dtype), W_out.to(dtype)
    v_hat_attn = edit_rule.unit(v_attn.to(device=device, dtype=dtype))
    v_hat_mlp = edit_rule.unit(v_mlp.to(device=device, dtype=dtype))
    mu_z, mu_post = mu_z.to(device=device, dtype=dtype), mu_post.to(device=device, dtype=dtype)

    head_u: torch.Tensor | None = None
    neuron_sign: torch.Tensor | None = None
    if settings.vectors == "component":
        if dz is None or dpost is None:
            raise PlanError("component-level vectors need dz and dpost (positive minus negative mean inputs)")
        dz, dpost = dz.to(device=device, dtype=dtype), dpost.to(device=device, dtype=dtype)
        head_u, head_g = edit_rule.component_heads(W_O, dz, v_attn.to(device=device, dtype=dtype))
        neuron_sign, neuron_g = edit_rule.component_neurons(W_out, dpost, v_mlp.to(device=device, dtype=dtype))
        write_h: torch.Tensor = head_u
        # a neuron's own direction is sign(dpost) w_hat, so w . u = sign(dpost) ||w||
        neuron_k = neuron_sign if settings.direction != "mu" else torch.sign(mu_post)
    else:
        head_g = edit_rule.head_importance(W_O, mu_z, v_hat_attn, settings.importance)
        neuron_g = edit_rule.neuron_importance(W_out, mu_post, v_hat_mlp, settings.importance)
        neuron_k = edit_rule.neuron_directions(W_out, v_hat_mlp, mu_post, settings.direction)
        write_h = v_hat_attn
    head_k = edit_rule.head_directions(W_O, write_h, mu_z, settings.direction)
    head_k_norm = edit_rule.head_read_vectors(W_O, write_h).norm(dim=-1)
    # layers left out compete for nothing (a top-k budget is spent on the chosen layers only)
    keep = _layer_mask(settings, W_O.shape[0], W_O.device)
    head_lambda = edit_rule.lambdas(head_g * keep[:, None], settings.rho_attn, settings, settings.top_k_attn)
    neuron_lambda = edit_rule.lambdas(neuron_g * keep[:, None], settings.rho_mlp, settings, settings.top_k_mlp)
    if settings.magnitude == "relative":
        head_lambda = head_lambda * edit_rule.relative_scale_heads(W_O, write_h)
        neuron_scale = (
            W_out.norm(dim=-1) if neuron_sign is not None else edit_rule.relative_scale_neurons(W_out, v_hat_mlp)
        )
        neuron_lambda = neuron_lambda * neuron_scale
    neuron_u_index = neuron_u = None
    if neuron_sign is not None:
        index = ((neuron_lambda != 0) & (neuron_k != 0)).nonzero()
        layer, n = index[:, 0], index[:, 1]
        neuron_u_index, neuron_u = index, neuron_sign[layer, n, None] * edit_rule.unit(W_out[layer, n])

    return EditPlan(
        settings=settings,
        v_hat_attn=v_hat_attn,
        v_hat_mlp=v_hat_mlp,
        head_g=head_g,
        head_lambda=head_lambda,
        head_k=head_k,
        head_k_norm=head_k_norm,
        mu_z=mu_z,
        neuron_g=neuron_g,
        neuron_lambda=neuron_lambda,
        neuron_k=neuron_k,
        mu_post=mu_post,
        W_O_norm=W_O.flatten(1).norm(dim=-1),
        W_out_norm=W_out.flatten(1).norm(dim=-1),
        model=dict(model or {}),
        provenance=dict(provenance or {}),
        head_u=head_u,
        neuron_u_index=neuron_u_index,
        neuron_u=neuron_u,
    )


def _layer_mask(settings: EditSettings, n_layers: int, device: torch.device) -> torch.Tensor:
    """1.0 for the layers ``settings.layers`` edits (every layer when None), else 0.0."""
    if settings.layers is None:
        return torch.ones(n_layers, device=device)
    outside = [x for x in settings.layers if x >= n_layers]
    if outside:
        raise PlanError(
            f"settings.layers {outside} are out of range: the model has {n_layers} layers (0-{n_layers - 1})"
        )
    keep = torch.zeros(n_layers, device=device)
    keep[list(settings.layers)] = 1.0
    return keep


def _check_vectors(v: torch.Tensor, name: str, used: bool) -> None:
    if not torch.isfinite(v).all():
        raise PlanError(f"steering vector {name} has NaN or infinite entries; recompute the statistics")
    if used:
        zero = (v.norm(dim=-1) == 0).nonzero().flatten().tolist()
        if zero:
            raise PlanError(
                f"steering vector {name} has zero norm at layer(s) {zero}: the positive and negative "
                "sets give identical means there, so there is no direction to edit along. Use "
                "contrastive data that differ, or switch this block type off (rho <= 0)."
            )
