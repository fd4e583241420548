"""Activation steering, the baseline: add ``gamma * v[l]`` to every layer's attention and MLP
outputs, at every position (prompt included), through hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from s2e_lens.loading import LoadedModel
from s2e_lens.steering import SteeringVectors

Hook = tuple[str, Callable[..., torch.Tensor]]


def shift_hook(shift: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A hook that adds the fixed vector ``shift`` to its activation at every position."""

    def add(out: torch.Tensor, hook: object) -> torch.Tensor:
        return out + shift.to(device=out.device, dtype=out.dtype)

    return add


def steering_hooks(vectors: SteeringVectors, gamma: float) -> list[Hook]:
    """Hooks adding ``gamma * v_attn[l]`` at ``blocks.l.attn.hook_out`` and ``gamma * v_mlp[l]``
    at ``blocks.l.mlp.hook_out`` (block outputs before any post-norm, raw vectors)."""
    hooks: list[Hook] = []
    for layer in range(vectors.n_layers):
        for kind, v in (("attn", vectors.v_attn[layer]), ("mlp", vectors.v_mlp[layer])):
            hooks.append((f"blocks.{layer}.{kind}.hook_out", shift_hook(gamma * v)))
    return hooks


@contextlib.contextmanager
def steered(model: LoadedModel, vectors: SteeringVectors, gamma: float) -> Iterator[LoadedModel]:
    """Within the block, every forward pass and generation of ``model`` is steered."""
    from s2e_lens.identity import check_identity

    check_identity(vectors.model, model, "these steering vectors")
    if gamma == 0:
        yield model
        return
    with model.bridge.hooks(fwd_hooks=steering_hooks(vectors, gamma)):
        yield model
