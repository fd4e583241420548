"""An edit plan as low-rank updates of the output projections: the exchange format of LoRA.

Every edited head of layer l writes ``lambda_h (z_h . k_hat_h) w_h`` into the residual stream,
where ``w_h`` is the layer's ``v_hat`` under the paper's rule (or the head's own direction with
component vectors). In the orientation of a ``torch.nn.Linear`` weight (``[out, in]`` =
``[d_model, n_heads * d_head]`` for the attention output projection, ``[d_model, d_mlp]`` for
the MLP's), the layer's update is therefore

    Delta W = sum over write directions w of  w a_w^T  =  B @ A,

with one column of ``B`` per distinct write direction and the matching row of ``A`` holding
``lambda_h k_hat_h`` in the slice of every head that writes along it (``lambda_n k_n`` at
every such neuron). The rank is the number of distinct directions: 1 per projection and layer
under the paper's rule, up to the number of edited components with component vectors.
Composed plans are one update per projection: their factors are concatenated, and factors
that write along the same direction are summed into one.

Pure tensor functions (CPU, float32): nothing here touches a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from s2e_lens.core.plan import EditPlan

KINDS = ("attn", "mlp")


@dataclass(frozen=True)
class LowRankUpdate:
    """``Delta W = B @ A`` of one output projection (``kind`` "attn" or "mlp", ``layer``), in
    the ``[out, in]`` orientation of a Linear weight."""

    kind: str
    layer: int
    A: Float[torch.Tensor, "rank inputs"]
    B: Float[torch.Tensor, "d_model rank"]

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def dense(self) -> Float[torch.Tensor, "d_model inputs"]:
        return self.B @ self.A


def _grouped(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(direction, input row) pairs summed per identical direction -> (A, B)."""
    directions: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    for w, a in rows:
        for i, seen in enumerate(directions):
            if torch.equal(seen, w):
                inputs[i] = inputs[i] + a
                break
        else:
            directions.append(w)
            inputs.append(a)
    return torch.stack(inputs), torch.stack(directions, dim=1)


def _head_rows(plan: EditPlan, layer: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n_heads, d_head = plan.head_k.shape[1:]
    rows = []
    for h in plan.edited_heads[layer].nonzero().flatten().tolist():
        a = torch.zeros(n_heads * d_head, dtype=torch.float32)
        a[h * d_head : (h + 1) * d_head] = plan.head_lambda[layer, h] * plan.head_k[layer, h]
        w = plan.head_u[layer, h] if plan.head_u is not None else plan.v_hat_attn[layer]
        rows.append((w.float(), a))
    return rows


def _neuron_rows(plan: EditPlan, layer: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    scale = (plan.neuron_lambda[layer] * plan.neuron_k[layer]).float()
    edited = plan.edited_neurons[layer]
    if plan.neuron_u is None or plan.neuron_u_index is None:
        return [(plan.v_hat_mlp[layer].float(), torch.where(edited, scale, torch.zeros_like(scale)))]
    rows = []
    for (at_layer, n), u in zip(plan.neuron_u_index.tolist(), plan.neuron_u, strict=True):
        if at_layer == layer and bool(edited[n]):
            a = torch.zeros_like(scale)
            a[n] = scale[n]
            rows.append((u.float(), a))
    return rows


def low_rank_updates(plans: Sequence[EditPlan]) -> list[LowRankUpdate]:
    """The updates that ``plans`` (applied in order) make, one per edited projection, sorted
    by kind then layer. Their sum over plans equals the plans' dense deltas."""
    if not plans:
        return []
    n_layers = plans[0].n_layers
    out = []
    for kind in KINDS:
        for layer in range(n_layers):
            rows: list[tuple[torch.Tensor, torch.Tensor]] = []
            for plan in plans:
                if kind == "attn" and bool(plan.edited_heads[layer].any()):
                    rows += _head_rows(plan, layer)
                elif kind == "mlp" and bool(plan.edited_neurons[layer].any()):
                    rows += _neuron_rows(plan, layer)
            if rows:
                A, B = _grouped(rows)
                out.append(LowRankUpdate(kind, layer, A, B))
    return out
