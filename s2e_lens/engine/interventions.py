"""Interventions, and the one way to apply them.

An :class:`Intervention` is one thing done to a model: nothing (``none``), activation
steering (``steer``: ``gamma * v[l]`` on every block output, hooks), a Steer2Edit plan
(``edit``: folded into the weights), weight orthogonalisation (``orthogonalise``: dense rank-1
edits) or an ITI-style shift of the top-K heads (``iti``: each selected head's output moved by
``gamma`` times its own component-level vector, hooks).

Apply one with ``intervention.apply(model)``, which checks that its vectors or plan were made
for this model and returns a :class:`Handle` whose ``remove()`` undoes exactly that
intervention, or with ``with intervention.active(model):``, which removes it on exit,
exceptions included. :func:`steered` and :func:`edited` are the everyday forms.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from s2e_lens.core.plan import EditPlan
from s2e_lens.core.settings import EditSettings
from s2e_lens.core.statistics import ContrastiveStatistics
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine.hooks import Hook, hooked, shift_hooks, steering_shifts
from s2e_lens.engine.mapper import apply_plan
from s2e_lens.engine.mixed import RowEffect
from s2e_lens.engine.planning import compute_plan, model_weights, orthogonalisation_plan
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.identity import check_identity
from s2e_lens.models.loaded import LoadedModel


def check_gamma(gamma: float) -> float:
    """A steering strength must be a finite number.

    >>> check_gamma(0.5)
    0.5
    """
    if not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
        raise InvalidInputError(f"gamma must be a finite number, got {gamma!r}")
    return float(gamma)


@dataclass
class Handle:
    """An applied intervention; :meth:`remove` undoes it (once; later calls do nothing)."""

    label: str
    _undo: Callable[[], None] = field(repr=False)
    removed: bool = False

    def remove(self) -> None:
        if not self.removed:
            self._undo()
            self.removed = True


@dataclass
class Intervention:
    kind: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    plan: EditPlan | None = None
    hooks: list[Hook] = field(default_factory=list)
    force: bool = False  # apply the plan even if its updates dwarf the weights (mapper.check_plan_is_safe)
    made_for: dict[str, Any] | None = None  # identity of the model its vectors or plan came from
    # what ``hooks`` add, by (block output, layer), where they are fixed shifts: lets the
    # intervention act on some rows of a batch only (engine.mixed)
    shifts: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def _check_made_for(self, model: LoadedModel) -> None:
        identity = self.made_for or (self.plan.model if self.plan is not None else None)
        if identity is not None:
            check_identity(identity, model, f"the intervention {self.label!r}")

    def apply(self, model: LoadedModel) -> Handle:
        """Apply to ``model`` (after checking it is the model this was made for)."""
        self._check_made_for(model)
        if self.plan is not None:
            applied = apply_plan(model, self.plan, on_conflict="ignore", force=self.force)
            return Handle(self.label, applied.remove)
        stack = contextlib.ExitStack()
        stack.enter_context(hooked(model, self.hooks, self.label))
        return Handle(self.label, stack.close)

    @contextlib.contextmanager
    def active(self, model: LoadedModel) -> Iterator[Handle]:
        """Applied within the block, removed on exit (exceptions included)."""
        handle = self.apply(model)
        try:
            yield handle
        finally:
            handle.remove()

    def check(self, model: LoadedModel) -> None:
        """What :meth:`apply` checks, without applying: made for this model, and a plan safe
        to apply (unless forced)."""
        from s2e_lens.engine.mapper import check_plan_is_safe

        self._check_made_for(model)
        if self.plan is not None:
            check_plan_is_safe(model, self.plan, force=self.force)

    @property
    def can_share(self) -> bool:
        """Whether it can act on some rows of a batch only: a plan, fixed shifts or nothing
        (not hooks of the user's that are not fixed shifts)."""
        return self.plan is not None or not self.hooks or bool(self.shifts)

    def row_effect(self) -> RowEffect | None:
        """This intervention as an effect on some rows of a batch (:mod:`s2e_lens.engine.mixed`),
        or None where it cannot be one (:attr:`can_share`)."""
        if not self.can_share:
            return None
        if self.plan is not None:
            return RowEffect.of_plans([self.plan])
        return RowEffect(shifts=dict(self.shifts))

    def describe(self) -> dict[str, Any]:
        row: dict[str, Any] = {"kind": self.kind, "label": self.label, **self.params}
        if self.plan is not None:
            rel = self.plan.relative_norms()
            row.update(
                heads_edited=self.plan.n_edited["heads"],
                neurons_edited=self.plan.n_edited["neurons"],
                attn_rel_norm=float(rel["attn"].norm()),
                mlp_rel_norm=float(rel["mlp"].norm()),
                predicted_shift=float(sum(v.sum() for v in self.plan.predicted_shift().values())),
            )
        return row


# ------------------------------------------------------------------------------ builders


def unedited() -> Intervention:
    return Intervention("none", "unedited")


def steering(vectors: SteeringVectors, gamma: float) -> Intervention:
    """Activation steering with ``vectors`` at strength ``gamma`` (0 = unedited)."""
    gamma = check_gamma(gamma)
    if not (torch.isfinite(vectors.v_attn).all() and torch.isfinite(vectors.v_mlp).all()):
        raise InvalidInputError("the steering vectors have NaN or infinite values; recompute them")
    shifts = steering_shifts(vectors, gamma) if gamma != 0 else {}
    return Intervention(
        "steer",
        f"steer gamma={gamma:g}",
        {"gamma": gamma},
        hooks=shift_hooks(shifts),
        made_for=vectors.model,
        shifts=shifts,
    )


def steering_sweep(vectors: SteeringVectors, gammas: Sequence[float]) -> list[Intervention]:
    """One steering intervention per non-zero gamma."""
    return [steering(vectors, g) for g in map(check_gamma, gammas) if g != 0]


def editing(plan: EditPlan, *, label: str | None = None, force: bool = False) -> Intervention:
    """A Steer2Edit (or any) plan, folded into the weights while applied."""
    return Intervention("edit", label or plan.describe(), plan=plan, force=force)


@contextlib.contextmanager
def steered(model: LoadedModel, vectors: SteeringVectors, gamma: float) -> Iterator[LoadedModel]:
    """Within the block, every forward pass and generation of ``model`` is steered by
    ``gamma * v`` (the vectors must come from this model).

    Usage: ``with s2e.steered(model, vectors, 0.5): s2e.generate(model, prompts)``.
    """
    with steering(vectors, gamma).active(model):
        yield model


@contextlib.contextmanager
def edited(model: LoadedModel, plan: EditPlan, *, force: bool = False) -> Iterator[LoadedModel]:
    """Within the block, ``plan`` is folded into ``model``'s weights; on exit (exceptions
    included) the weights are restored bit for bit.

    Usage: ``with s2e.edited(model, plan): s2e.generate(model, prompts)``.
    """
    with editing(plan, force=force).active(model):
        yield model


def grid(
    rho_attn: Sequence[float], rho_mlp: Sequence[float], alpha: Sequence[float], **variant: Any
) -> list[EditSettings]:
    """Every combination of the budgets, as edit settings (each one checked)."""
    return [EditSettings(rho_attn=a, rho_mlp=m, alpha=al, **variant) for a in rho_attn for m in rho_mlp for al in alpha]


VARIANT_FIELDS = ("direction", "importance", "selection", "magnitude", "vectors")


def variant_label(s: EditSettings) -> str:
    """The settings' rule where it differs from the paper's, for labels (empty: the paper's)."""
    default = EditSettings()
    parts = [f"{name}={getattr(s, name)}" for name in VARIANT_FIELDS if getattr(s, name) != getattr(default, name)]
    if s.selection == "top_k":
        parts.append(f"top_k={s.top_k_attn}/{s.top_k_mlp}")
    if s.layers is not None:
        parts.append(f"layers={','.join(map(str, s.layers))}")
    return " ".join(parts)


def edit_intervention(plan: EditPlan, label: str | None = None, **params: Any) -> Intervention:
    """A sweep's Steer2Edit candidate: applied with ``force`` (sweeps screen by KL instead)."""
    s = plan.settings
    label = label or f"s2e rho_attn={s.rho_attn:g} rho_mlp={s.rho_mlp:g} alpha={s.alpha:g}"
    if variant_label(s) and variant_label(s) not in label:
        label += " " + variant_label(s)
    described = {"rho_attn": s.rho_attn, "rho_mlp": s.rho_mlp, "alpha": s.alpha}
    described.update({name: getattr(s, name) for name in VARIANT_FIELDS})
    return Intervention("edit", label, {**described, **params}, plan=plan, force=True)


def edit_candidates(
    model: LoadedModel,
    stats: ContrastiveStatistics,
    settings: Sequence[EditSettings],
    *,
    planner: Callable[[EditSettings], EditPlan] | None = None,
) -> list[Intervention]:
    """One Steer2Edit intervention per setting; empty plans and duplicates are dropped. They
    are applied with ``force``: sweeps screen every candidate by its KL instead. ``planner``
    makes each plan (default: :func:`compute_plan` on ``stats``; e.g. a layer-sequential one)."""
    weights = model_weights(model)
    out, seen = [], set()
    for s in settings:
        plan = planner(s) if planner is not None else compute_plan(model, stats, s, weights=weights)
        if not plan.n_edited["heads"] and not plan.n_edited["neurons"]:
            continue
        key = (plan.head_lambda.numpy().tobytes(), plan.neuron_lambda.numpy().tobytes())
        if key in seen:
            continue
        seen.add(key)
        out.append(edit_intervention(plan))
    return out


def orthogonalisation(
    model: LoadedModel, vectors: SteeringVectors, layer: int | None = None, sign: float = -1.0
) -> Intervention:
    """Orthogonalise every head and neuron against the steering direction of one layer (the
    layer with the largest ``||v_attn + v_mlp||`` unless given). Removing the direction of the
    *negative* behaviour adds refusal-like behaviour: ``sign=-1`` removes ``-v`` (the same
    subspace as ``v``; the sign only labels it)."""
    check_identity(vectors.model, model, "these steering vectors")
    v = vectors.v_attn + vectors.v_mlp
    layer = int(v.norm(dim=-1).argmax()) if layer is None else layer
    plan = orthogonalisation_plan(model, sign * v[layer])
    return Intervention("orthogonalise", f"orthogonalise layer {layer}", {"layer": layer}, plan=plan, force=True)


def iti(model: LoadedModel, stats: ContrastiveStatistics, k: int, gamma: float) -> Intervention:
    """Shift the ``k`` heads with the largest component-level steering vector norm by
    ``gamma * v_head[l, h]`` at every position."""
    gamma = check_gamma(gamma)
    W_O, _ = model_weights(model)
    vectors = SteeringVectors.from_statistics(stats, W_O=W_O)
    assert vectors.v_head is not None
    norms = vectors.v_head.norm(dim=-1)
    top = norms.reshape(-1).topk(k).indices
    H = norms.shape[1]
    chosen = [(int(i) // H, int(i) % H) for i in top]
    per_layer: dict[int, torch.Tensor] = {}
    for layer, head in chosen:
        shift = gamma * vectors.v_head[layer, head]
        per_layer[layer] = per_layer[layer] + shift if layer in per_layer else shift
    shifts = {("attn_out", layer): shift for layer, shift in per_layer.items()}
    return Intervention(
        "iti",
        f"iti k={k} gamma={gamma:g}",
        {"k": k, "gamma": gamma, "heads": chosen},
        hooks=shift_hooks(shifts),
        made_for=stats.model,
        shifts=shifts,
    )
