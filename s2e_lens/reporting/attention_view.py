"""Attention patterns of chosen heads (by default a plan's most-edited heads) on a prompt,
drawn with circuitsvis and rendered offline (its script is inlined, never fetched)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float

from s2e_lens.core.plan import EditPlan
from s2e_lens.engine.hooks import hook_name
from s2e_lens.errors import InvalidInputError
from s2e_lens.io.files import write_text
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.tokens import encode_prompt


def top_heads(plan: EditPlan, n: int = 6) -> list[tuple[int, int]]:
    """The ``n`` heads with the largest |lambda|, as (layer, head), largest first."""
    lam = plan.head_lambda.abs()
    H = lam.shape[1]
    flat = lam.reshape(-1)
    n = min(n, int((flat > 0).sum()))
    return [(int(i) // H, int(i) % H) for i in flat.topk(n).indices] if n else []


def attention_patterns(
    model: LoadedModel, prompt: str, heads: list[tuple[int, int]], *, chat: bool = True
) -> tuple[Float[torch.Tensor, "n_heads query key"], list[str]]:
    """Attention probabilities of ``heads`` on ``prompt`` (chat-templated unless ``chat=False``)
    and the prompt's tokens as strings. Runs the model as it is (edited or not)."""
    if not heads:
        raise InvalidInputError("no heads given: pass (layer, head) pairs, or a plan that edits some heads")
    n_layers, n_heads = model.card.n_layers, model.card.n_heads
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InvalidInputError(
                f"head ({layer}, {head}) does not exist: the model has {n_layers} layers x {n_heads} heads"
            )
    tok = model.tokenizer
    ids = encode_prompt(tok, prompt) if chat else list(tok(prompt)["input_ids"])
    layers = sorted({layer for layer, _ in heads})
    got: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Callable[[torch.Tensor, object], torch.Tensor]:
        def hook(pattern: torch.Tensor, hook: object) -> torch.Tensor:
            got[layer] = pattern[0].detach().float().cpu()
            return pattern

        return hook

    with (
        torch.inference_mode(),
        model.bridge.hooks(fwd_hooks=[(hook_name("pattern", layer), keep(layer)) for layer in layers]),
    ):
        model.hf_model(input_ids=torch.tensor([ids], device=model.device), use_cache=False)
    patterns = torch.stack([got[layer][head] for layer, head in heads])
    tokens = [str(tok.decode([t])) for t in ids]
    return patterns, tokens


@dataclass
class OfflineHTML:
    """HTML that shows itself in Jupyter and saves to a file; needs no network."""

    html: str

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """A standalone HTML page; an existing file is replaced only with ``overwrite``."""
        return write_text(path, f"<!doctype html><meta charset='utf-8'><body>{self.html}</body>", overwrite=overwrite)


def attention_view(
    model: LoadedModel,
    prompt: str,
    *,
    plan: EditPlan | None = None,
    heads: list[tuple[int, int]] | None = None,
    n: int = 6,
) -> OfflineHTML:
    """circuitsvis attention heads view of ``heads`` (default: the plan's ``n`` most-edited)."""
    from circuitsvis.utils.render import render_local

    if heads is None:
        if plan is None:
            raise InvalidInputError("give heads=[(layer, head), ...] or a plan to take its most-edited heads from")
        heads = top_heads(plan, n)
    patterns, tokens = attention_patterns(model, prompt, heads)
    names = [
        f"L{layer}H{head}" + (f" λ={float(plan.head_lambda[layer, head]):+.2f}" if plan is not None else "")
        for layer, head in heads
    ]
    html = render_local("AttentionHeads", attention=patterns.tolist(), tokens=tokens, attentionHeadNames=names)
    return OfflineHTML(html)
