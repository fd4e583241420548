"""Hand transformers' KV cache to the bridge's attention under the name it reads.

TransformerLens 4.3 re-implements attention inside its ``AttentionBridge`` components and
extends K and V from the cache it finds in the keyword argument ``past_key_values`` (or
``layer_past``). transformers 5.24 renamed that argument to ``cache`` in every decoder layer
(``past_key_values`` is kept only as a deprecated alias at the model's entry points). Under
5.24 the bridge therefore saw no cache: prefill was right, but every decoded token attended
to itself alone, so generation went wrong from the second token on while single forward passes
still matched transformers.

:func:`route_kv_cache` puts a forward pre-hook (a public torch extension point) on every
attention component of a bridge that copies ``cache`` to ``past_key_values`` when only the new
name is given. Under transformers releases that still pass ``past_key_values`` it does nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.hooks import RemovableHandle
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

NEW_NAME = "cache"  # transformers >= 5.24
OLD_NAME = "past_key_values"  # what AttentionBridge._update_kv_cache reads


def _alias_cache(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    if kwargs.get(NEW_NAME) is None or kwargs.get(OLD_NAME) is not None:
        return None
    return args, {**kwargs, OLD_NAME: kwargs[NEW_NAME]}


def route_kv_cache(bridge: TransformerBridge) -> list[RemovableHandle]:
    """Make every attention component of ``bridge`` see the KV cache, whichever keyword the
    installed transformers passes it under. Returns the hook handles (removing them restores
    the bridge's own behaviour)."""
    return [
        module.register_forward_pre_hook(_alias_cache, with_kwargs=True)
        for module in bridge.modules()
        if isinstance(module, AttentionBridge)
    ]
