"""Interventions to compare, each usable as ``with intervention.active(model): ...``.

- ``none``: the unedited model;
- ``steer``: activation steering, ``gamma * v[l]`` on every block output (hooks);
- ``edit``: a Steer2Edit plan folded into the weights;
- ``orthogonalise``: weight orthogonalisation against one direction (dense rank-1 edits);
- ``iti``: an inference-time-intervention-style shift of the top-K heads only: each selected
  head's output is shifted by ``gamma`` times its own component-level vector (hooks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from s2e_lens.activation_steering import Hook, check_gamma, hooked, shift_hook, steering_hooks
from s2e_lens.edits import EditSettings
from s2e_lens.loading import LoadedModel
from s2e_lens.mapper import apply_plan, revert
from s2e_lens.plan import EditPlan, compute_plan, model_weights, orthogonalisation_plan
from s2e_lens.statistics import ContrastiveStatistics
from s2e_lens.steering import SteeringVectors


@dataclass
class Intervention:
    kind: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    plan: EditPlan | None = None
    hooks: list[Hook] = field(default_factory=list)
    force: bool = False  # apply the plan even if its updates dwarf the weights (mapper.check_plan_is_safe)

    @contextlib.contextmanager
    def active(self, model: LoadedModel) -> Iterator[LoadedModel]:
        if self.plan is not None:
            applied = apply_plan(model, self.plan, on_conflict="ignore", force=self.force)
            try:
                yield model
            finally:
                revert(model, applied)
        else:
            with hooked(model, self.hooks, self.label):
                yield model

    def describe(self) -> dict[str, Any]:
        row: dict[str, Any] = {"kind": self.kind, "label": self.label, **self.params}
        if self.plan is not None:
            rel = self.plan.relative_norms()
            row.update(
                heads_edited=self.plan.n_edited["heads"], neurons_edited=self.plan.n_edited["neurons"],
                attn_rel_norm=float(rel["attn"].norm()), mlp_rel_norm=float(rel["mlp"].norm()),
                predicted_shift=float(sum(v.sum() for v in self.plan.predicted_shift().values())),
            )
        return row


def unedited() -> Intervention:
    return Intervention("none", "unedited")


def steering(vectors: SteeringVectors, gammas: Sequence[float]) -> list[Intervention]:
    return [Intervention("steer", f"steer gamma={g:g}", {"gamma": float(g)}, hooks=steering_hooks(vectors, g))
            for g in map(check_gamma, gammas) if g != 0]


def edits(
    model: LoadedModel, stats: ContrastiveStatistics, grid: Sequence[EditSettings]
) -> list[Intervention]:
    """One Steer2Edit intervention per setting; empty plans and duplicates are dropped."""
    weights = model_weights(model)
    out, seen = [], set()
    for s in grid:
        plan = compute_plan(model, stats, s, weights=weights)
        if not plan.n_edited["heads"] and not plan.n_edited["neurons"]:
            continue
        key = (plan.head_lambda.numpy().tobytes(), plan.neuron_lambda.numpy().tobytes())
        if key in seen:
            continue
        seen.add(key)
        label = f"s2e rho_attn={s.rho_attn:g} rho_mlp={s.rho_mlp:g} alpha={s.alpha:g}"
        if (s.direction, s.importance, s.selection) != ("gradient", "cosine", "elastic_net"):
            label += f" {s.direction}/{s.importance}/{s.selection}"
        out.append(Intervention("edit", label, {"rho_attn": s.rho_attn, "rho_mlp": s.rho_mlp, "alpha": s.alpha,
                                                "direction": s.direction, "importance": s.importance,
                                                "selection": s.selection}, plan=plan,
                                force=True))  # sweeps screen every candidate by its KL instead
    return out


def grid(rho_attn: Sequence[float], rho_mlp: Sequence[float], alpha: Sequence[float], **variant: Any) -> list[EditSettings]:
    return [EditSettings(rho_attn=a, rho_mlp=m, alpha=al, **variant) for a in rho_attn for m in rho_mlp for al in alpha]


def orthogonalisation(model: LoadedModel, vectors: SteeringVectors, layer: int | None = None,
                      sign: float = -1.0) -> Intervention:
    """Orthogonalise every head and neuron against the steering direction of one layer (the
    layer with the largest ``||v_attn + v_mlp||`` unless given). Removing the direction of the
    *negative* behaviour adds refusal-like behaviour: ``sign=-1`` removes ``-v`` (the same
    subspace as ``v``; the sign only labels it)."""
    v = vectors.v_attn + vectors.v_mlp
    layer = int(v.norm(dim=-1).argmax()) if layer is None else layer
    plan = orthogonalisation_plan(model, sign * v[layer])
    return Intervention("orthogonalise", f"orthogonalise layer {layer}", {"layer": layer}, plan=plan, force=True)


def iti(model: LoadedModel, stats: ContrastiveStatistics, k: int, gamma: float) -> Intervention:
    """Shift the ``k`` heads with the largest component-level steering vector norm by
    ``gamma * v_head[l, h]`` at every position."""
    W_O, _ = model_weights(model)
    vectors = SteeringVectors.from_statistics(stats, W_O=W_O)
    assert vectors.v_head is not None
    norms = vectors.v_head.norm(dim=-1)
    top = norms.reshape(-1).topk(k).indices
    H = norms.shape[1]
    chosen = [(int(i) // H, int(i) % H) for i in top]
    per_layer: dict[int, torch.Tensor] = {}
    for layer, head in chosen:
        per_layer[layer] = per_layer.get(layer, 0) + gamma * vectors.v_head[layer, head]
    hooks: list[Hook] = [(f"blocks.{layer}.attn.hook_out", shift_hook(shift)) for layer, shift in per_layer.items()]
    return Intervention("iti", f"iti k={k} gamma={gamma:g}", {"k": k, "gamma": gamma, "heads": chosen}, hooks=hooks)
