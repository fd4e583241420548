"""EditPlan: every edited component with its importance, lambda and direction, per block type.

Plans are data: compute one from statistics (or steering vectors), inspect it as a
DataFrame, save it, and apply it with :mod:`s2e_lens.mapper`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float

from s2e_lens import edits, serialization
from s2e_lens.edits import EditSettings
from s2e_lens.errors import S2EError
from s2e_lens.statistics import ContrastiveStatistics

if TYPE_CHECKING:
    from s2e_lens.loading import LoadedModel

TENSOR_FIELDS = (
    "v_hat_attn", "v_hat_mlp", "head_g", "head_lambda", "head_k", "head_k_norm", "mu_z",
    "neuron_g", "neuron_lambda", "neuron_k", "mu_post", "W_O_norm", "W_out_norm",
)


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
    W_O_norm: Float[torch.Tensor, "layer"]  # ||W_O[l]||_F of the weights the plan was made on
    W_out_norm: Float[torch.Tensor, "layer"]
    model: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    variant: str = "steer2edit"  # or "orthogonalisation"

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
        return edits.head_deltas(self.head_lambda, self.head_k, self.v_hat_attn)

    def delta_W_out(self) -> Float[torch.Tensor, "layer d_mlp d_model"]:
        return edits.neuron_deltas(self.neuron_lambda, self.neuron_k, self.v_hat_mlp)

    def predicted_shift(self) -> dict[str, Float[torch.Tensor, "layer"]]:
        """Predicted change of the block output's projection on v_hat at the mean input.

        An edited head adds ``lam (z . k_hat) v_hat``, so at ``z = mu`` the projection moves by
        ``lam (mu . k_hat)``; a neuron adds ``lam k a v_hat``, moving it by ``lam k mu``.
        """
        heads = (self.head_lambda * torch.einsum("lhd,lhd->lh", self.mu_z, self.head_k)).sum(-1)
        neurons = (self.neuron_lambda * self.neuron_k * self.mu_post).sum(-1)
        return {"attn": heads, "mlp": neurons}

    def edit_norms(self) -> dict[str, Float[torch.Tensor, "layer"]]:
        """``||Delta W||`` per layer (Frobenius), per block type.

        Head blocks are disjoint slices of W_O[l] and k_hat, v_hat are unit vectors, so
        ``||Delta W_O[l]||^2 = sum_h lam_h^2``; likewise for neurons with |k| = 1.
        """
        return {"attn": self.head_lambda.pow(2).sum(-1).sqrt(),
                "mlp": self.neuron_lambda_applied.pow(2).sum(-1).sqrt()}

    def relative_norms(self) -> dict[str, Float[torch.Tensor, "layer"]]:
        """``||Delta W|| / ||W||`` per layer (Frobenius), per block type."""
        norms = self.edit_norms()
        return {"attn": norms["attn"] / self.W_O_norm, "mlp": norms["mlp"] / self.W_out_norm}

    def to_dataframe(self, edited_only: bool = True) -> pd.DataFrame:
        """One row per component: layer, kind, index, g, lambda, ||k|| (heads), k (neurons)."""
        L, H = self.head_g.shape
        N = self.neuron_g.shape[1]
        heads = pd.DataFrame({
            "layer": torch.arange(L).repeat_interleave(H).numpy(),
            "kind": "head",
            "index": torch.arange(H).repeat(L).numpy(),
            "g": self.head_g.reshape(-1).numpy(),
            "lambda": self.head_lambda.reshape(-1).numpy(),
            "k_norm": self.head_k_norm.reshape(-1).numpy(),
            "k_sign": 1.0,
        })
        neurons = pd.DataFrame({
            "layer": torch.arange(L).repeat_interleave(N).numpy(),
            "kind": "neuron",
            "index": torch.arange(N).repeat(L).numpy(),
            "g": self.neuron_g.reshape(-1).numpy(),
            "lambda": self.neuron_lambda.reshape(-1).numpy(),
            "k_norm": 1.0,
            "k_sign": self.neuron_k.reshape(-1).numpy(),
        })
        frame = pd.concat([heads, neurons], ignore_index=True)
        if edited_only:
            frame = frame[(frame["lambda"] != 0) & (frame["k_sign"] != 0)]
        return frame.reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        """Per layer: edited heads and neurons, ``||Delta W|| / ||W||``, predicted shift."""
        shift, rel = self.predicted_shift(), self.relative_norms()
        return pd.DataFrame({
            "layer": range(self.n_layers),
            "heads_edited": self.edited_heads.sum(-1).numpy(),
            "neurons_edited": self.edited_neurons.sum(-1).numpy(),
            "attn_rel_norm": rel["attn"].numpy(),
            "mlp_rel_norm": rel["mlp"].numpy(),
            "attn_shift": shift["attn"].numpy(),
            "mlp_shift": shift["mlp"].numpy(),
        })

    def describe(self) -> str:
        s = self.settings
        n = self.n_edited
        L, H = self.head_g.shape
        N = self.neuron_g.shape[1]
        return (
            f"{self.variant} plan for {self.model.get('name')}: {n['heads']}/{L * H} heads, "
            f"{n['neurons']}/{L * N} neurons edited (rho_attn={s.rho_attn}, rho_mlp={s.rho_mlp}, "
            f"alpha={s.alpha}, direction={s.direction}, importance={s.importance}, "
            f"selection={s.selection})"
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
        try:
            settings = EditSettings(**meta["settings"])
        except (TypeError, S2EError) as err:
            raise serialization.FileFormatError(f"{path}: the plan's settings are not valid ({err})") from None
        return cls(
            settings=settings,
            **{name: tensors[name] for name in TENSOR_FIELDS},
            model=meta["model"], provenance=meta["provenance"], variant=meta["variant"],
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
) -> EditPlan:
    """The pure core: weights, steering vectors and input means in, a plan out."""
    _check_vectors(v_attn, "v_attn", settings.rho_attn > 0)
    _check_vectors(v_mlp, "v_mlp", settings.rho_mlp > 0)
    dtype = W_O.dtype
    v_hat_attn = edits.unit(v_attn.to(dtype))
    v_hat_mlp = edits.unit(v_mlp.to(dtype))
    mu_z, mu_post = mu_z.to(dtype), mu_post.to(dtype)

    head_g = edits.head_importance(W_O, mu_z, v_hat_attn, settings.importance)
    head_k = edits.head_directions(W_O, v_hat_attn, mu_z, settings.direction)
    head_k_norm = edits.head_read_vectors(W_O, v_hat_attn).norm(dim=-1)
    head_lambda = edits.lambdas(head_g, settings.rho_attn, settings, settings.top_k_attn)

    neuron_g = edits.neuron_importance(W_out, mu_post, v_hat_mlp, settings.importance)
    neuron_k = edits.neuron_directions(W_out, v_hat_mlp, mu_post, settings.direction)
    neuron_lambda = edits.lambdas(neuron_g, settings.rho_mlp, settings, settings.top_k_mlp)

    return EditPlan(
        settings=settings, v_hat_attn=v_hat_attn, v_hat_mlp=v_hat_mlp,
        head_g=head_g, head_lambda=head_lambda, head_k=head_k, head_k_norm=head_k_norm, mu_z=mu_z,
        neuron_g=neuron_g, neuron_lambda=neuron_lambda, neuron_k=neuron_k, mu_post=mu_post,
        W_O_norm=W_O.flatten(1).norm(dim=-1), W_out_norm=W_out.flatten(1).norm(dim=-1),
        model=dict(model or {}), provenance=dict(provenance or {}),
    )


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


def model_weights(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_O`` and ``W_out`` of the live model, detached, as [layer, ...] tensors."""
    with torch.no_grad():
        return model.bridge.W_O.detach().clone(), model.bridge.W_out.detach().clone()


def compute_plan(
    model: LoadedModel,
    stats: ContrastiveStatistics,
    settings: EditSettings | None = None,
    *,
    weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    allow_other_state: bool = False,
) -> EditPlan:
    """Steer2Edit plan for ``model`` from contrastive statistics computed on it.

    ``weights`` (``W_O``, ``W_out``) may be passed to reuse them across a sweep. Statistics
    collected while the model was edited or steered are refused unless ``allow_other_state``.
    """
    from s2e_lens.identity import check_identity, model_identity

    settings = settings or EditSettings()
    check_identity(stats.model, model, "these statistics")
    if model.edits:
        raise PlanError(
            "the model has edits applied; plans are computed on the unedited weights. "
            "Revert them first (s2e_lens.mapper.revert_all(model))."
        )
    collected = stats.provenance.get("model_state", {"edits": [], "steering": []})
    if (collected.get("edits") or collected.get("steering")) and not allow_other_state:
        raise PlanError(
            f"these statistics were collected on a modified model ({_describe_state(collected)}), but plans "
            "are computed on the unedited model: collect them again on the unedited model, or pass "
            "allow_other_state=True if that is what you mean"
        )
    W_O, W_out = weights if weights is not None else model_weights(model)
    return compute_plan_from_tensors(
        W_O, W_out,
        stats.positive.attn_out - stats.negative.attn_out,
        stats.positive.mlp_out - stats.negative.mlp_out,
        stats.mu_z, stats.mu_post, settings,
        model=model_identity(model), provenance=stats.provenance,
    )


def _describe_state(state: dict[str, Any]) -> str:
    parts = [f"{len(state.get('edits', []))} plan(s) applied"] if state.get("edits") else []
    parts += list(state.get("steering", []))
    return "; ".join(parts)


def orthogonalisation_plan(
    model: LoadedModel,
    direction: Float[torch.Tensor, "d_model"] | Float[torch.Tensor, "layer d_model"],
    *,
    attn: bool = True,
    mlp: bool = True,
) -> EditPlan:
    """Weight orthogonalisation against ``direction`` (Arditi et al. 2024) as an EditPlan.

    Every head and neuron gets ``lam = -||B^T r_hat||`` along ``k_hat = B^T r_hat / ||.||``:
    the dense, uniform special case of the rank-1 form. A single ``[d_model]`` direction is
    used at every layer.
    """
    from s2e_lens.identity import model_identity

    W_O, W_out = model_weights(model)
    L = W_O.shape[0]
    r = direction.to(W_O.dtype)
    r = r.expand(L, -1) if r.ndim == 1 else r
    _check_vectors(r, "direction", True)
    r_hat = edits.unit(r)
    head_lambda, head_k = edits.orthogonalisation_heads(W_O, r_hat)
    neuron_lambda, neuron_k = edits.orthogonalisation_neurons(W_out, r_hat)
    if not attn:
        head_lambda = torch.zeros_like(head_lambda)
    if not mlp:
        neuron_lambda = torch.zeros_like(neuron_lambda)
    zeros_h = torch.zeros_like(head_lambda)
    zeros_n = torch.zeros_like(neuron_lambda)
    return EditPlan(
        settings=EditSettings(rho_attn=float(attn), rho_mlp=float(mlp), alpha=0.0),
        v_hat_attn=r_hat, v_hat_mlp=r_hat,
        head_g=zeros_h, head_lambda=head_lambda, head_k=head_k, head_k_norm=-head_lambda,
        mu_z=torch.zeros(W_O.shape[:3], dtype=W_O.dtype),
        neuron_g=zeros_n, neuron_lambda=neuron_lambda, neuron_k=neuron_k,
        mu_post=torch.zeros(W_out.shape[:2], dtype=W_out.dtype),
        W_O_norm=W_O.flatten(1).norm(dim=-1), W_out_norm=W_out.flatten(1).norm(dim=-1),
        model=model_identity(model), variant="orthogonalisation",
    )
