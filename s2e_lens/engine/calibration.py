"""Calibrated budgets: choose an edit's rho (or a steering gamma) so that the intervention
reaches a target KL to the unedited model on benign text.

Edits and steering compared at the same KL are compared at the same cost by construction, and
a sweep over KL targets spends no generation on plans that are far too weak or too strong.

The search (:func:`search_log_scale`) is a pure bisection in log space over a monotone
measurement; the shell (:func:`calibrate_plan`, :func:`calibrate_steering`) measures KL with a
:class:`~s2e_lens.engine.scoring.KLReference` (a few forward passes per step).

Why a bisection works: for each component ``|lambda| = max(|g| - rho alpha, 0) / (rho (1 - alpha))``
falls as rho grows (the threshold rises and the shrink grows), so every update shrinks and
the KL falls; a steering vector's KL grows with gamma. Neither is guaranteed to be strictly
monotone for every model, so the search checks its bracket and reports every step it took.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from s2e_lens.core.plan import EditPlan
from s2e_lens.core.settings import EditSettings
from s2e_lens.core.statistics import ContrastiveStatistics
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine import interventions, mapper
from s2e_lens.engine.planning import compute_plan, model_weights
from s2e_lens.engine.scoring import KLReference
from s2e_lens.errors import InvalidInputError, S2EError
from s2e_lens.models.loaded import LoadedModel

KL_TOLERANCE = 0.05  # relative: a calibrated intervention's KL is within 5% of its target
MAX_STEPS = 24


class CalibrationError(S2EError):
    """A KL target that the intervention cannot reach."""


@dataclass(frozen=True)
class Search:
    """The outcome of a search: the scale found, its measured value, and every step taken."""

    scale: float
    value: float
    target: float
    steps: tuple[tuple[float, float], ...]  # (scale, measured value) in the order measured

    @property
    def relative_error(self) -> float:
        return abs(self.value - self.target) / self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "value": self.value,
            "target": self.target,
            "relative_error": self.relative_error,
            "steps": [list(s) for s in self.steps],
        }


def search_log_scale(
    measure: Callable[[float], float],
    target: float,
    *,
    increasing: bool,
    start: float = 1.0,
    tolerance: float = KL_TOLERANCE,
    max_steps: int = MAX_STEPS,
    lowest: float = 1e-6,
    highest: float = 1e6,
) -> Search:
    """The scale ``s`` in [lowest, highest] where ``measure(s)`` is within ``tolerance``
    (relative) of ``target``: doubling or halving from ``start`` until the target is bracketed,
    then bisection in log space. ``increasing``: whether ``measure`` grows with ``s``.

    >>> found = search_log_scale(lambda s: 0.1 * s * s, 0.4, increasing=True)
    >>> round(found.scale, 2), abs(found.value - 0.4) <= 0.02
    (2.0, True)
    """
    if not (target > 0 and math.isfinite(target)):
        raise InvalidInputError(f"the KL target must be a positive number, got {target!r}")
    if not 0 < tolerance < 1:
        raise InvalidInputError(f"tolerance must be in (0, 1), got {tolerance!r}")
    steps: list[tuple[float, float]] = []

    def at(s: float) -> float:
        value = float(measure(s))
        steps.append((s, value))
        return value

    def close(value: float) -> bool:
        return abs(value - target) <= tolerance * target

    def too_large(value: float) -> bool:  # whether the scale that gave ``value`` is above the answer
        return (value > target) if increasing else (value < target)

    def unreachable() -> CalibrationError:
        nearest = min(steps, key=lambda st: abs(st[1] - target))
        return CalibrationError(
            f"the target {target:g} cannot be reached between scales {lowest:g} and {highest:g}: measured "
            f"{', '.join(f'{v:.4g} at {sc:.4g}' for sc, v in steps)} (the nearest: {nearest[1]:.4g}). "
            "Choose a target inside that range."
        )

    a, va = start, at(start)
    if close(va):
        return Search(a, va, target, tuple(steps))
    factor = 0.5 if too_large(va) else 2.0
    while True:  # double or halve until the target lies between two measured scales
        b = a * factor
        if not lowest <= b <= highest or len(steps) >= max_steps:
            raise unreachable()
        vb = at(b)
        if close(vb):
            return Search(b, vb, target, tuple(steps))
        if too_large(vb) != too_large(va):
            break
        a, va = b, vb
    lo, hi = sorted((a, b))
    while len(steps) < max_steps:
        mid = math.sqrt(lo * hi)
        value = at(mid)
        if close(value):
            return Search(mid, value, target, tuple(steps))
        if too_large(value):
            hi = mid
        else:
            lo = mid
    best = min(steps, key=lambda st: abs(st[1] - target))
    raise CalibrationError(
        f"no scale within {tolerance:.0%} of the target {target:g} after {max_steps} steps (nearest: "
        f"{best[1]:.4g} at scale {best[0]:.4g}); the measurement may not be monotone here. "
        "Loosen the tolerance or choose another target."
    )


# ------------------------------------------------------------------------------ the shell


@dataclass
class Calibrated:
    """A plan (or a steering strength) calibrated to a KL target."""

    intervention: interventions.Intervention
    search: Search
    settings: EditSettings | None = None  # the plan's settings (rho scaled), for edits
    gamma: float | None = None  # for steering
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.intervention.label,
            "settings": self.settings.to_dict() if self.settings else None,
            "gamma": self.gamma,
            "search": self.search.to_dict(),
            **self.details,
        }


def scaled_settings(settings: EditSettings, scale: float) -> EditSettings:
    """``settings`` with both budgets multiplied by ``scale`` (a switched-off block stays off)."""
    return replace(
        settings,
        rho_attn=settings.rho_attn * scale if settings.rho_attn > 0 else settings.rho_attn,
        rho_mlp=settings.rho_mlp * scale if settings.rho_mlp > 0 else settings.rho_mlp,
    )


def calibrate_plan(
    model: LoadedModel,
    stats: ContrastiveStatistics,
    settings: EditSettings,
    reference: KLReference,
    target: float,
    *,
    tolerance: float = KL_TOLERANCE,
    weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    planner: Callable[[EditSettings], EditPlan] | None = None,
) -> Calibrated:
    """The plan of ``settings``' variant whose KL to the unedited model on ``reference``'s texts
    is within ``tolerance`` of ``target``: both budgets are scaled together (their ratio is
    kept) by a bisection in log space. The model is left unedited. ``planner`` makes each
    plan (default: :func:`compute_plan` on ``stats``; e.g. a layer-sequential one)."""
    if settings.rho_attn <= 0 and settings.rho_mlp <= 0:
        raise InvalidInputError("calibration needs at least one block type switched on (rho_attn or rho_mlp > 0)")
    weights = weights if weights is not None else model_weights(model)
    plans: dict[float, EditPlan] = {}

    def kl_at(scale: float) -> float:
        scaled = scaled_settings(settings, scale)
        plan = planner(scaled) if planner is not None else compute_plan(model, stats, scaled, weights=weights)
        plans[scale] = plan
        if not (plan.n_edited["heads"] or plan.n_edited["neurons"]):
            return 0.0
        try:
            mapper.check_plan_is_safe(model, plan)
        except mapper.UnsafeEditError:
            return math.inf  # far too strong: the bisection moves away from it
        with interventions.edited(model, plan):
            return reference.kl(model)

    found = search_log_scale(kl_at, target, increasing=False, tolerance=tolerance)
    plan, chosen = plans[found.scale], scaled_settings(settings, found.scale)
    label = f"s2e@KL{target:g} rho_attn={chosen.rho_attn:.4g} rho_mlp={chosen.rho_mlp:.4g} alpha={chosen.alpha:g}"
    return Calibrated(
        interventions.edit_intervention(plan, label, target_kl=target),
        found,
        settings=chosen,
        details={"n_edited": plan.n_edited},
    )


def calibrate_steering(
    model: LoadedModel,
    vectors: SteeringVectors,
    reference: KLReference,
    target: float,
    *,
    tolerance: float = KL_TOLERANCE,
    start: float = 1.0,
) -> Calibrated:
    """The steering strength gamma whose KL on ``reference``'s texts is within ``tolerance`` of
    ``target`` (bisection in log space; KL grows with gamma)."""

    def kl_at(gamma: float) -> float:
        with interventions.steered(model, vectors, gamma):
            return reference.kl(model)

    found = search_log_scale(kl_at, target, increasing=True, start=start, tolerance=tolerance, highest=1e3)
    steer = interventions.steering(vectors, found.scale)
    steer = replace(
        steer, label=f"steer@KL{target:g} gamma={found.scale:.4g}", params={**steer.params, "target_kl": target}
    )
    return Calibrated(steer, found, gamma=found.scale)
