"""Hook points by name, and hooks that stay on only while a block (or a handle) holds them.

:func:`hook_name` is the one place where TransformerLens hook names are spelled: the
block outputs before any post-norm (``attn_out``, ``mlp_out``), each head's ``z`` and each
neuron's post-activation (``z``, ``post``), and the attention pattern (``pattern``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from jaxtyping import Float

from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel

Point = Literal["attn_out", "mlp_out", "z", "post", "pattern"]
HOOK_POINTS: dict[str, str] = {
    "attn_out": "blocks.{layer}.attn.hook_out",  # z @ W_O + b_O, before Gemma's post-attention norm
    "mlp_out": "blocks.{layer}.mlp.hook_out",  # post @ W_out + b_out, before any post-MLP norm
    "z": "blocks.{layer}.attn.hook_z",  # [batch, pos, head, d_head]
    "post": "blocks.{layer}.mlp.hook_post",  # [batch, pos, d_mlp]
    "pattern": "blocks.{layer}.attn.hook_pattern",  # [batch, head, query, key]
}

Hook = tuple[str, Callable[..., torch.Tensor | None]]


def hook_name(point: Point, layer: int) -> str:
    """The TransformerLens hook name of ``point`` in ``layer``.

    >>> hook_name("z", 3)
    'blocks.3.attn.hook_z'
    """
    if point not in HOOK_POINTS:
        raise InvalidInputError(f"unknown hook point {point!r}; use one of {sorted(HOOK_POINTS)}")
    return HOOK_POINTS[point].format(layer=layer)


def shift_hook(shift: Float[torch.Tensor, " d_model"]) -> Callable[..., torch.Tensor]:
    """A hook that adds the fixed vector ``shift`` to its activation at every position."""

    cast: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # the shift per device and dtype, made once

    def add(out: torch.Tensor, hook: object) -> torch.Tensor:
        key = (out.device, out.dtype)
        if key not in cast:
            cast[key] = shift.to(device=out.device, dtype=out.dtype)
        return out + cast[key]

    return add


def steering_shifts(vectors: SteeringVectors, gamma: float) -> dict[tuple[str, int], torch.Tensor]:
    """What steering adds, by (block output, layer): ``gamma * v_attn[l]`` at every layer's
    attention output and ``gamma * v_mlp[l]`` at its MLP output (before any post-norm, raw vectors)."""
    shifts: dict[tuple[str, int], torch.Tensor] = {}
    for layer in range(vectors.n_layers):
        shifts[("attn_out", layer)] = gamma * vectors.v_attn[layer]
        shifts[("mlp_out", layer)] = gamma * vectors.v_mlp[layer]
    return shifts


def shift_hooks(shifts: dict[tuple[str, int], torch.Tensor]) -> list[Hook]:
    """A :func:`shift_hook` at each (block output, layer) of ``shifts``."""
    return [(hook_name(point, layer), shift_hook(v)) for (point, layer), v in shifts.items()]  # type: ignore[arg-type]


@contextlib.contextmanager
def hooked(model: LoadedModel, hooks: list[Hook], label: str) -> Iterator[LoadedModel]:
    """Within the block, ``hooks`` act on every forward pass and generation of ``model``
    (prefill and cached decoding alike), and ``model.steering`` names them (statistics record
    it). They are removed on exit, exceptions included."""
    if not hooks:
        yield model
        return
    model.steering.append(label)
    try:
        with model.bridge.hooks(fwd_hooks=hooks):
            yield model
    finally:
        model.steering.remove(label)
