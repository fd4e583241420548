"""One streaming pass that collects contrastive statistics for every layer at once.

Targeted hooks on ``attn.hook_out`` / ``mlp.hook_out`` (block outputs before any post-norm),
``attn.hook_z`` and ``mlp.hook_post`` fold each batch into running sums of per-sample means;
no activation is kept, so memory does not grow with the number of samples. The forward pass
runs the transformer body only (no unembedding: logits are not needed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm

from s2e_lens.core.contrastive import ContrastiveSet
from s2e_lens.core.statistics import ContrastiveStatistics, SetMeans
from s2e_lens.engine.hooks import Point, hook_name
from s2e_lens.models.identity import model_identity
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.tokens import Batch, EncodedSample, encode_pairs, make_batches, pad_token_id

STATISTICS: tuple[Point, ...] = ("attn_out", "mlp_out", "z", "post")  # hook points averaged per set


def collect_statistics(
    model: LoadedModel,
    data: ContrastiveSet,
    *,
    batch_size: int = 8,
    padding_side: Literal["left", "right"] = "right",
    sort_by_length: bool = True,
    system: str | None = None,
    progress: bool = True,
) -> ContrastiveStatistics:
    """Means of block outputs and component inputs over the positive and the negative set.

    ``sort_by_length`` batches samples of similar length together (less padding); the result
    does not depend on the order. ``padding_side`` does not change the numbers either (the
    position ids count real tokens only).
    """
    tok = model.tokenizer
    pad_id = pad_token_id(tok)
    encoded = {
        "positive": encode_pairs(tok, data.positive, side="positive", system=system),
        "negative": encode_pairs(tok, data.negative, side="negative", system=system),
    }
    for side, samples in encoded.items():
        for i, sample in enumerate(samples):
            model.check_context(sample.end, f"{side} pair {i}")
    plans = {
        side: make_batches(_order(samples, sort_by_length), batch_size, pad_id, padding_side=padding_side)
        for side, samples in encoded.items()
    }
    bar = tqdm(
        total=sum(len(b) for b in plans.values()),
        desc="statistics",
        unit="batch",
        disable=not progress,
        leave=False,
    )
    means = {}
    with bar:
        for side, batches in plans.items():
            sums = _stream(model, batches, on_batch=lambda: bar.update(1))
            n = len(encoded[side])
            means[side] = SetMeans(
                **{k: (v / n).to(torch.float32) for k, v in sums.items()},
                n_samples=n,
                n_tokens=sum(s.n_response for s in encoded[side]),
            )
    provenance = dict(data.provenance)
    provenance["model_state"] = model.state()  # edits applied and steering active during the pass
    provenance.setdefault("n_positive", len(data.positive))
    provenance.setdefault("n_negative", len(data.negative))
    return ContrastiveStatistics(
        positive=means["positive"],
        negative=means["negative"],
        model=model_identity(model),
        provenance=provenance,
    )


def _order(samples: list[EncodedSample], by_length: bool) -> list[EncodedSample]:
    return sorted(samples, key=lambda s: s.end) if by_length else samples


def _stream(model: LoadedModel, batches: Sequence[Batch], on_batch: Callable[[], None]) -> dict[str, torch.Tensor]:
    """Sum of per-sample means of every hooked activation over ``batches`` (float64)."""
    card = model.card
    L = card.n_layers
    shapes = {
        "attn_out": (L, card.d_model),
        "mlp_out": (L, card.d_model),
        "z": (L, card.n_heads, card.d_head),
        "post": (L, card.d_mlp),
    }
    sums = {k: torch.zeros(shape, dtype=torch.float64, device=model.device) for k, shape in shapes.items()}
    current: dict[str, torch.Tensor] = {}

    def make_hook(kind: str, layer: int) -> Callable[..., None]:
        target = sums[kind][layer]

        def hook(activation: torch.Tensor, hook: object) -> None:
            w = current["weights"]  # [batch * seq]
            flat = activation.reshape(w.shape[0], -1)
            target.add_((w @ flat.to(w.dtype)).view(target.shape))

        return hook

    hooks = [(hook_name(k, layer), make_hook(k, layer)) for k in STATISTICS for layer in range(L)]
    body = model.hf_model.base_model
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
        for batch in batches:
            device = model.device
            current["weights"] = batch.weights.reshape(-1).to(device)
            body(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                position_ids=batch.position_ids.to(device),
                use_cache=False,
            )
            on_batch()
    return sums
