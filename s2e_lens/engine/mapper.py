"""Fold an EditPlan into the live model's weights, and take it out again bit for bit.

A head edit writes the head's slice of the attention output projection (``o_proj`` /
``c_proj`` / ``dense``); a neuron edit writes the neuron's column of the MLP output projection
(``down_proj`` / ``c_proj`` / ``dense_4h_to_h``). GPT-2's Conv1D stores weights as
``[in, out]``, transposed relative to ``nn.Linear``. The result is visible through the
bridge's ``W_O`` / ``W_out`` and in every forward pass, with no hooks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pandas as pd
import torch
from transformers.pytorch_utils import Conv1D

from s2e_lens.core.plan import EditPlan
from s2e_lens.core.storage import compute_dtype
from s2e_lens.errors import InvalidInputError, S2EError
from s2e_lens.models.identity import check_identity
from s2e_lens.models.loaded import LoadedModel


class EditConflictError(S2EError):
    """Two plans edit the same component with opposite signs."""


class RevertError(S2EError):
    """A revert that would not restore the weights exactly."""


@dataclass
class AppliedPlan:
    """A plan applied to a model, with the weights it replaced: a handle whose
    :meth:`remove` takes exactly this plan out again, bit for bit."""

    plan: EditPlan
    model: LoadedModel = field(repr=False)
    saved: dict[tuple[str, int], torch.Tensor] = field(repr=False)  # (kind, layer) -> weight
    conflicts: pd.DataFrame = field(repr=False)

    @property
    def active(self) -> bool:
        return any(a is self for a in self.model.applied_plans)

    def remove(self) -> None:
        """Revert this plan (it must be the most recently applied one still in place)."""
        revert(self.model, self)


def output_projection(model: LoadedModel, kind: str, layer: int) -> torch.nn.Module:
    """The transformers module whose weight a ``kind`` ("attn" / "mlp") edit writes."""
    block = model.bridge.blocks[layer]
    wrapper = block.attn.o if kind == "attn" else block.mlp.out
    return wrapper.original_component


def _weight(module: torch.nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor), f"{type(module).__name__} has no weight tensor"
    return weight


def _to_layout(delta: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """``delta`` is ``[inputs, d_model]`` (W_O / W_out rows); Linear stores ``[d_model, inputs]``."""
    return delta if isinstance(module, Conv1D) else delta.T


def find_conflicts(model: LoadedModel, plan: EditPlan) -> pd.DataFrame:
    """Components that an already-applied plan and ``plan`` edit with opposite signs."""
    rows = []
    for i, earlier in enumerate(model.applied_plans):
        for kind, a, b in (
            ("head", earlier.plan.head_lambda, plan.head_lambda),
            ("neuron", earlier.plan.neuron_lambda * earlier.plan.neuron_k, plan.neuron_lambda * plan.neuron_k),
        ):
            clash = (torch.sign(a) * torch.sign(b)) < 0
            for layer, index in clash.nonzero().tolist():
                rows.append(
                    {
                        "applied_plan": i,
                        "kind": kind,
                        "layer": layer,
                        "index": index,
                        "lambda_applied": float(a[layer, index]),
                        "lambda_new": float(b[layer, index]),
                    }
                )
    return pd.DataFrame(rows, columns=["applied_plan", "kind", "layer", "index", "lambda_applied", "lambda_new"])


# A rank-1 update larger than this multiple of the weights it edits (per component:
# ||Delta W_i|| / ||W_i||, the head's W_O slice or the neuron's W_out row) is refused unless
# forced: it swamps the component instead of nudging it (a near-zero rho gives |lambda| ~ 1e9).
MAX_RELATIVE_UPDATE = 100.0


# what a plan writes into the weights (the optional ones: component-level vectors)
WRITE_TENSORS = ("head_lambda", "head_k", "v_hat_attn", "neuron_lambda", "neuron_k", "v_hat_mlp", "head_u", "neuron_u")


class UnsafeEditError(S2EError):
    """A plan that is not finite, or whose updates dwarf the weights they edit."""


def relative_updates(plan: EditPlan, model: LoadedModel) -> pd.DataFrame:
    """Per edited component: ``|lambda|`` (= ``||Delta W_i||``, unit k and v_hat) over the norm
    of the weights it edits in ``model``, largest first."""
    W_O, W_out = model.bridge.W_O.detach(), model.bridge.W_out.detach()
    head = plan.head_lambda.abs() / W_O.float().flatten(2).norm(dim=-1).cpu().clamp_min(1e-12)
    neuron = plan.neuron_lambda_applied.abs() / W_out.float().norm(dim=-1).cpu().clamp_min(1e-12)
    rows = [
        ("head", layer, i, float(plan.head_lambda[layer, i]), float(head[layer, i]))
        for layer, i in plan.edited_heads.nonzero().tolist()
    ]
    rows += [
        ("neuron", layer, i, float(plan.neuron_lambda[layer, i]), float(neuron[layer, i]))
        for layer, i in plan.edited_neurons.nonzero().tolist()
    ]
    frame = pd.DataFrame(rows, columns=["kind", "layer", "index", "lambda", "relative_update"])
    return frame.sort_values("relative_update", ascending=False, ignore_index=True)


def check_plan_is_safe(model: LoadedModel, plan: EditPlan, *, force: bool = False) -> None:
    """Refuse non-finite plans always, and plans with updates above
    :data:`MAX_RELATIVE_UPDATE` times the edited weights unless ``force``."""
    bad = [
        name
        for name in WRITE_TENSORS
        if getattr(plan, name) is not None and not torch.isfinite(getattr(plan, name)).all()
    ]
    if bad:
        raise UnsafeEditError(
            f"the edit plan has NaN or infinite values in {bad}; it cannot be applied. "
            "Recompute it (s2e edit STATISTICS ...)"
        )
    if force:
        return
    table = relative_updates(plan, model)
    big = table[table["relative_update"] > MAX_RELATIVE_UPDATE]
    if len(big):
        worst = ", ".join(
            f"L{r['layer']}{'H' if r['kind'] == 'head' else 'N'}{r['index']} "
            f"(lambda {r['lambda']:.3g}, {r['relative_update']:.3g}x)"
            for _, r in big.head(5).iterrows()
        )
        raise UnsafeEditError(
            f"{len(big)} edit(s) are larger than {MAX_RELATIVE_UPDATE:g}x the weights they change, e.g. {worst}; "
            f"such an edit overwrites the component rather than steering it (is rho far too small? "
            f"settings: rho_attn={plan.settings.rho_attn:g}, rho_mlp={plan.settings.rho_mlp:g}). "
            "Raise rho, or apply it anyway with force=True (CLI: --force)"
        )


def _same_plan(a: EditPlan, b: EditPlan) -> bool:
    def same(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
        return (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))

    return all(same(getattr(a, n), getattr(b, n)) for n in WRITE_TENSORS)


def apply_plan(
    model: LoadedModel,
    plan: EditPlan,
    *,
    on_conflict: str = "warn",
    force: bool = False,
    allow_stack: bool = False,
) -> AppliedPlan:
    """Add ``plan``'s rank-1 updates to the weights of ``model``.

    Checks first, and the model is untouched if any fails: identity and shapes; finite values
    and no update above :data:`MAX_RELATIVE_UPDATE` times its weights (``force`` skips the
    latter); the same plan is not already applied (``allow_stack`` applies it again, doubling
    it); conflicts with plans already applied (``on_conflict``: "warn" (default), "error" or
    "ignore"). Plans compose: each applied plan stacks on the previous ones; revert in reverse
    order.
    """
    if on_conflict not in ("warn", "error", "ignore"):
        raise InvalidInputError(f"on_conflict must be warn, error or ignore, got {on_conflict!r}")
    check_identity(plan.model, model, "this edit plan")
    card = model.card
    expected = {
        "head_lambda": (card.n_layers, card.n_heads),
        "head_k": (card.n_layers, card.n_heads, card.d_head),
        "v_hat_attn": (card.n_layers, card.d_model),
        "neuron_lambda": (card.n_layers, card.d_mlp),
        "v_hat_mlp": (card.n_layers, card.d_model),
    }
    if plan.head_u is not None:
        expected["head_u"] = (card.n_layers, card.n_heads, card.d_model)
    for name, shape in expected.items():
        if tuple(getattr(plan, name).shape) != shape:
            raise S2EError(f"edit plan tensor {name} has shape {tuple(getattr(plan, name).shape)}, model needs {shape}")
    if plan.neuron_u is not None and plan.neuron_u_index is not None:
        index, rows = plan.neuron_u_index, plan.neuron_u
        if rows.ndim != 2 or rows.shape[1] != card.d_model or index.shape != (rows.shape[0], 2):
            raise S2EError(
                f"edit plan's neuron directions have shape {tuple(rows.shape)}, model needs (n, {card.d_model})"
            )
        if len(index) and (int(index[:, 0].max()) >= card.n_layers or int(index[:, 1].max()) >= card.d_mlp):
            raise S2EError("edit plan's neuron directions name neurons the model does not have")
    if not allow_stack and any(_same_plan(applied.plan, plan) for applied in model.applied_plans):
        raise EditConflictError(
            "this plan is already applied to the model; applying it again would double "
            "it. Revert it first, or pass allow_stack=True to stack it on purpose"
        )
    check_plan_is_safe(model, plan, force=force)
    conflicts = find_conflicts(model, plan)
    if len(conflicts):
        msg = (
            f"{len(conflicts)} component(s) are edited with opposite signs by this plan and an "
            f"applied one (first: {conflicts.iloc[0].to_dict()})"
        )
        if on_conflict == "error":
            raise EditConflictError(msg + "; pass on_conflict='warn' to apply anyway")
        if on_conflict == "warn":
            warnings.warn(msg, stacklevel=2)

    updates: list[tuple[str, int, torch.Tensor]] = []
    head_layers = plan.edited_heads.any(-1).nonzero().flatten().tolist()
    neuron_layers = plan.edited_neurons.any(-1).nonzero().flatten().tolist()
    if head_layers:
        dW = plan.delta_W_O()  # [L, H, d_head, d_model]
        updates += [("attn", layer, dW[layer].reshape(-1, card.d_model)) for layer in head_layers]
    if neuron_layers:
        dW = plan.delta_W_out()  # [L, d_mlp, d_model]
        updates += [("mlp", layer, dW[layer]) for layer in neuron_layers]

    saved: dict[tuple[str, int], torch.Tensor] = {}
    with torch.no_grad():
        for kind, layer, delta in updates:
            module = output_projection(model, kind, layer)
            weight = _weight(module)
            saved[(kind, layer)] = weight.detach().clone()
            # one rounding: the update is added in float32 (or wider) on the weight's device,
            # and the sum is cast to the weight's dtype once
            wide = compute_dtype(weight.dtype)
            update = _to_layout(delta, module).to(device=weight.device, dtype=wide)
            weight.copy_((weight.to(wide) + update).to(weight.dtype))
    applied = AppliedPlan(plan=plan, model=model, saved=saved, conflicts=conflicts)
    model.applied_plans.append(applied)
    return applied


def revert(model: LoadedModel, applied: AppliedPlan | None = None) -> None:
    """Take the most recently applied plan out, restoring its weights bit for bit."""
    if not model.applied_plans:
        raise RevertError("no edit is applied to this model")
    if applied is not None and applied is not model.applied_plans[-1]:
        raise RevertError(
            "only the most recently applied plan can be reverted exactly (plans stack); "
            "revert the later ones first, or use revert_all(model)"
        )
    last = model.applied_plans.pop()
    with torch.no_grad():
        for (kind, layer), original in last.saved.items():
            _weight(output_projection(model, kind, layer)).copy_(original)


def revert_all(model: LoadedModel) -> None:
    while model.applied_plans:
        revert(model)
