"""Layer-sequential plans (beyond the paper): each block of layers is planned from statistics
of the model with every earlier block already edited.

The paper computes every component's g and k from the unedited model's mean input mu. Once
upstream layers are edited, the inputs of later heads and neurons move, so a plain plan's
prediction of its own shift no longer holds downstream. Here layer l's mu is its input in the
model as edited so far. The steering vectors (the direction to move along) stay those of the
unedited model: the behaviour's direction is a property of the model, not of the edit.
Cost: one pass per block of ``block_size`` layers after the first (which reuses ``stats``);
each pass hooks only its block's inputs and stops after the block's last layer, and
``max_pairs`` caps the pairs per side it runs (a seeded sample, the same for every pass).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from tqdm.auto import tqdm

from s2e_lens.core.contrastive import ContrastiveSet
from s2e_lens.core.plan import EditPlan, compute_plan_from_tensors
from s2e_lens.core.settings import EditSettings
from s2e_lens.core.statistics import ContrastiveStatistics
from s2e_lens.engine import mapper
from s2e_lens.engine.batching import BatchSize
from s2e_lens.engine.extraction import collect_input_means
from s2e_lens.engine.planning import compute_plan, model_weights
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.identity import model_identity
from s2e_lens.models.loaded import LoadedModel


def sequential_plan(
    model: LoadedModel,
    data: ContrastiveSet,
    stats: ContrastiveStatistics,
    settings: EditSettings,
    *,
    block_size: int = 4,
    max_pairs: int | None = None,
    seed: int = 0,
    batch_size: BatchSize = None,
    system: str | None = None,
    reference_strip: bool = False,
    positions: str = "response",
    prompt_positions: int = 4,
    progress: bool = True,
) -> EditPlan:
    """A plan whose layers ``[b, b + block_size)`` are computed from the statistics of ``data``
    collected on ``model`` with the plan's layers ``< b`` applied (``stats``: the unedited
    model's statistics of the same data, which give the steering vectors and the first block).
    ``settings.layers`` (if set) still limits which layers are edited. The model is left as
    it was. Give the same ``system``, ``reference_strip`` and ``positions`` that ``stats`` were
    collected with. ``max_pairs``: re-estimate each block's inputs on at most this many pairs
    per side (``ContrastiveSet.sample(max_pairs, seed)``; None: all of ``data``). With
    ``block_size >= n_layers``, or when only one layer is edited, this is the plain plan."""
    if block_size < 1:
        raise InvalidInputError(f"block_size must be >= 1, got {block_size}")
    if max_pairs is not None and max_pairs < 1:
        raise InvalidInputError(f"max_pairs must be >= 1 (or None: every pair), got {max_pairs}")
    probe = data if max_pairs is None else data.sample(max_pairs, seed)
    if model.applied_plans:
        raise InvalidInputError("plan on the unedited model: revert the applied edits first")
    n_layers = model.card.n_layers
    chosen = set(settings.layers) if settings.layers is not None else set(range(n_layers))
    weights = model_weights(model)
    d = stats.difference  # the steering vectors and component directions: the unedited model's
    plain = compute_plan(model, stats, settings, weights=weights)  # checks identity and state
    mu_z, mu_post = plain.mu_z.clone(), plain.mu_post.clone()
    head_lambda, neuron_lambda = torch.zeros_like(plain.head_lambda), torch.zeros_like(plain.neuron_lambda)
    head_g, head_k, neuron_g, neuron_k = (
        plain.head_g.clone(),
        plain.head_k.clone(),
        plain.neuron_g.clone(),
        plain.neuron_k.clone(),
    )
    # component-level vectors: each part's sparse neuron directions, for the neurons it edits
    directions: list[tuple[torch.Tensor, torch.Tensor]] = []
    blocks = [list(range(b, min(b + block_size, n_layers))) for b in range(0, n_layers, block_size)]
    passes = 0
    so_far: EditPlan | None = None
    for block in tqdm(blocks, desc="layer-sequential plan", disable=not progress):
        todo = [x for x in block if x in chosen]
        if not todo:
            continue
        # the other layers' inputs take no part (their importance is masked out): the block's own
        # are re-estimated on the model edited so far
        block_mu_z, block_mu_post = plain.mu_z.clone(), plain.mu_post.clone()
        if so_far is not None and (so_far.n_edited["heads"] or so_far.n_edited["neurons"]):
            applied = mapper.apply_plan(model, so_far)
            try:
                means = collect_input_means(
                    model,
                    probe,
                    todo,
                    batch_size=batch_size,
                    system=system,
                    reference_strip=reference_strip,
                    positions=positions,
                    prompt_positions=prompt_positions,
                    progress=False,
                )
            finally:
                applied.remove()
            block_mu_z[todo], block_mu_post[todo] = means.mu_z, means.mu_post
            passes += 1
        part = compute_plan_from_tensors(
            *weights,
            d.attn_out,
            d.mlp_out,
            block_mu_z,
            block_mu_post,
            replace(settings, layers=tuple(todo)),
            dz=d.z,
            dpost=d.post,
        )
        for x in todo:
            mu_z[x], mu_post[x] = part.mu_z[x], part.mu_post[x]
            head_g[x], head_k[x], head_lambda[x] = part.head_g[x], part.head_k[x], part.head_lambda[x]
            neuron_g[x], neuron_k[x], neuron_lambda[x] = part.neuron_g[x], part.neuron_k[x], part.neuron_lambda[x]
        if part.neuron_u is not None and part.neuron_u_index is not None:  # only the todo layers are edited
            directions.append((part.neuron_u_index, part.neuron_u))
        so_far = replace(
            plain,
            head_lambda=head_lambda.clone(),
            neuron_lambda=neuron_lambda.clone(),
            head_k=head_k.clone(),
            neuron_k=neuron_k.clone(),
            **_neuron_directions(plain, directions),
        )
    provenance: dict[str, Any] = {
        **plain.provenance,
        "sequential": {"block_size": block_size, "statistics_passes": passes + 1, "max_pairs": max_pairs},
    }
    return replace(
        plain,
        head_g=head_g,
        head_lambda=head_lambda,
        head_k=head_k,
        mu_z=mu_z,
        neuron_g=neuron_g,
        neuron_lambda=neuron_lambda,
        neuron_k=neuron_k,
        mu_post=mu_post,
        model=model_identity(model),
        provenance=provenance,
        **_neuron_directions(plain, directions),
    )


def _neuron_directions(plain: EditPlan, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """The sparse neuron directions of the parts computed so far (component-level vectors);
    nothing to replace with layer vectors."""
    if plain.neuron_u is None or plain.neuron_u_index is None:
        return {}
    if not parts:
        return {"neuron_u_index": plain.neuron_u_index[:0], "neuron_u": plain.neuron_u[:0]}
    return {"neuron_u_index": torch.cat([i for i, _ in parts]), "neuron_u": torch.cat([u for _, u in parts])}
