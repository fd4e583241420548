"""Plans from a loaded model: read its ``W_O`` / ``W_out`` and hand them, with the statistics,
to the pure edit rule (:func:`s2e_lens.core.plan.compute_plan_from_tensors`)."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float

from s2e_lens.core import edit_rule
from s2e_lens.core.plan import EditPlan, PlanError, _check_vectors, compute_plan_from_tensors
from s2e_lens.core.settings import EditSettings
from s2e_lens.core.statistics import ContrastiveStatistics
from s2e_lens.core.storage import compute_dtype
from s2e_lens.models.identity import check_identity, model_identity
from s2e_lens.models.loaded import LoadedModel


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
    settings = settings or EditSettings()
    check_identity(stats.model, model, "these statistics")
    if model.applied_plans:
        raise PlanError(
            "the model has edits applied; plans are computed on the unedited weights. "
            "Revert them first (s2e_lens.engine.mapper.revert_all(model))."
        )
    collected = stats.provenance.get("model_state", {"edits": [], "steering": []})
    if (collected.get("edits") or collected.get("steering")) and not allow_other_state:
        raise PlanError(
            f"these statistics were collected on a modified model ({_describe_state(collected)}), but plans "
            "are computed on the unedited model: collect them again on the unedited model, or pass "
            "allow_other_state=True if that is what you mean"
        )
    W_O, W_out = weights if weights is not None else model_weights(model)
    d = stats.difference
    return compute_plan_from_tensors(
        W_O,
        W_out,
        d.attn_out,
        d.mlp_out,
        stats.mu_z,
        stats.mu_post,
        settings,
        model=model_identity(model),
        provenance=stats.provenance,
        dz=d.z,
        dpost=d.post,
    )


def _describe_state(state: dict[str, Any]) -> str:
    parts = [f"{len(state.get('edits', []))} plan(s) applied"] if state.get("edits") else []
    parts += list(state.get("steering", []))
    return "; ".join(parts)


def orthogonalisation_plan(
    model: LoadedModel,
    direction: Float[torch.Tensor, " d_model"] | Float[torch.Tensor, "layer d_model"],
    *,
    attn: bool = True,
    mlp: bool = True,
) -> EditPlan:
    """Weight orthogonalisation against ``direction`` (Arditi et al. 2024) as an EditPlan.

    Every head and neuron gets ``lam = -||B^T r_hat||`` along ``k_hat = B^T r_hat / ||.||``:
    the dense, uniform special case of the rank-1 form. A single ``[d_model]`` direction is
    used at every layer.
    """
    W_O, W_out = (w.to(compute_dtype(w.dtype)) for w in model_weights(model))
    L = W_O.shape[0]
    r = direction.to(device=W_O.device, dtype=W_O.dtype)
    r = r.expand(L, -1) if r.ndim == 1 else r
    _check_vectors(r, "direction", True)
    r_hat = edit_rule.unit(r)
    head_lambda, head_k = edit_rule.orthogonalisation_heads(W_O, r_hat)
    neuron_lambda, neuron_k = edit_rule.orthogonalisation_neurons(W_out, r_hat)
    if not attn:
        head_lambda = torch.zeros_like(head_lambda)
    if not mlp:
        neuron_lambda = torch.zeros_like(neuron_lambda)
    zeros_h = torch.zeros_like(head_lambda)
    zeros_n = torch.zeros_like(neuron_lambda)
    return EditPlan(
        settings=EditSettings(rho_attn=float(attn), rho_mlp=float(mlp), alpha=0.0),
        v_hat_attn=r_hat,
        v_hat_mlp=r_hat,
        head_g=zeros_h,
        head_lambda=head_lambda,
        head_k=head_k,
        head_k_norm=-head_lambda,
        mu_z=torch.zeros(W_O.shape[:3], dtype=W_O.dtype),
        neuron_g=zeros_n,
        neuron_lambda=neuron_lambda,
        neuron_k=neuron_k,
        mu_post=torch.zeros(W_out.shape[:2], dtype=W_out.dtype),
        W_O_norm=W_O.flatten(1).norm(dim=-1),
        W_out_norm=W_out.flatten(1).norm(dim=-1),
        model=model_identity(model),
        variant="orthogonalisation",
    )
