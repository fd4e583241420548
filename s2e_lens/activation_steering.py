"""Activation steering, the baseline: add ``gamma * v[l]`` to every layer's attention and MLP
outputs, at every position (prompt included), through hooks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch

from s2e_lens.errors import InvalidInputError
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


def check_gamma(gamma: float) -> float:
    if not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
        raise InvalidInputError(f"gamma must be a finite number, got {gamma!r}")
    return float(gamma)


@contextlib.contextmanager
def hooked(model: LoadedModel, hooks: list[Hook], label: str) -> Iterator[LoadedModel]:
    """Within the block, ``hooks`` act on every forward pass and generation of ``model``, and
    ``model.steering`` names them (statistics record it)."""
    if not hooks:
        yield model
        return
    model.steering.append(label)
    try:
        with model.bridge.hooks(fwd_hooks=hooks):
            yield model
    finally:
        model.steering.remove(label)


@contextlib.contextmanager
def steered(model: LoadedModel, vectors: SteeringVectors, gamma: float) -> Iterator[LoadedModel]:
    """Within the block, every forward pass and generation of ``model`` is steered."""
    from s2e_lens.identity import check_identity

    gamma = check_gamma(gamma)
    check_identity(vectors.model, model, "these steering vectors")
    if not (torch.isfinite(vectors.v_attn).all() and torch.isfinite(vectors.v_mlp).all()):
        raise InvalidInputError("the steering vectors have NaN or infinite values; recompute them")
    hooks = steering_hooks(vectors, gamma) if gamma != 0 else []
    with hooked(model, hooks, f"steering gamma={gamma:g}"):
        yield model
