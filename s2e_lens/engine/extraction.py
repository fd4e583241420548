"""One streaming pass that collects contrastive statistics for every layer at once.

Targeted hooks on ``attn.hook_out`` / ``mlp.hook_out`` (block outputs before any post-norm),
``attn.hook_z`` and ``mlp.hook_post`` fold each batch into running sums of per-sample means;
no activation is kept, so memory does not grow with the number of samples. The forward pass
runs the transformer body only (no unembedding: logits are not needed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm

from s2e_lens.core.contrastive import ContrastiveSet
from s2e_lens.core.statistics import ContrastiveStatistics, SetMeans, positions_rule
from s2e_lens.core.storage import accumulator_dtype, stored
from s2e_lens.engine.batching import AUTO_START, BatchSize, largest_that_fits, resolve
from s2e_lens.engine.hooks import Point, hook_name
from s2e_lens.models.identity import model_identity
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.tokens import Batch, EncodedSample, encode_pairs, make_batches, pad_token_id

DEFAULT_BATCH_SIZE = 8  # on the CPU
STATISTICS: tuple[Point, ...] = ("attn_out", "mlp_out", "z", "post")  # hook points averaged per set


def collect_statistics(
    model: LoadedModel,
    data: ContrastiveSet,
    *,
    batch_size: BatchSize = None,
    padding_side: Literal["left", "right"] = "right",
    sort_by_length: bool = True,
    system: str | None = None,
    reference_strip: bool = False,
    positions: str = "response",
    prompt_positions: int = 4,
    progress: bool = True,
) -> ContrastiveStatistics:
    """Means of block outputs and component inputs over the positive and the negative set.

    ``sort_by_length`` batches samples of similar length together (less padding); the result
    does not depend on the order. ``padding_side`` does not change the numbers either (the
    position ids count real tokens only). ``batch_size``: 8 on the CPU; on accelerators "auto",
    the largest that fits (halved after an out-of-memory error). ``system`` is a system prompt
    for every pair; ``reference_strip`` reproduces the reference implementation's stripped
    prompts (see :func:`s2e_lens.models.tokens.encode_pairs`; off by default). ``positions``:
    where each sample's mean is taken, ``response`` (the paper's), ``prompt_end`` (the last
    ``prompt_positions`` prompt tokens) or ``both`` (:meth:`EncodedSample.window`); a
    ``prompt_end`` contrast needs positive and negative prompts that differ.
    """
    tok = model.tokenizer
    pad_id = pad_token_id(tok)
    encoded = {
        "positive": encode_pairs(tok, data.positive, side="positive", system=system, reference_strip=reference_strip),
        "negative": encode_pairs(tok, data.negative, side="negative", system=system, reference_strip=reference_strip),
    }
    for side, samples in encoded.items():
        for i, sample in enumerate(samples):
            model.check_context(sample.end, f"{side} pair {i}")
            sample.window(positions, prompt_positions)  # checks the rule before any model work
    size = resolve(batch_size, model.device, DEFAULT_BATCH_SIZE)
    ordered = {side: _order(samples, sort_by_length) for side, samples in encoded.items()}

    def batches(side: str, n: int) -> list[Batch]:
        return make_batches(
            ordered[side], n, pad_id, padding_side=padding_side, positions=positions, prompt_positions=prompt_positions
        )

    start = size if size != "auto" else min(AUTO_START, max(len(s) for s in encoded.values()))
    bar = tqdm(
        total=sum(math.ceil(len(samples) / start) for samples in encoded.values()),  # batches, counted
        desc="statistics",
        unit="batch",
        disable=not progress,
        leave=False,
    )
    means = {}
    with bar:
        for side in encoded:

            def one_pass(n: int, side: str = side) -> dict[str, torch.Tensor]:
                return _stream(model, batches(side, n), on_batch=lambda: bar.update(1))

            if size == "auto":
                sums, start = largest_that_fits(one_pass, start, what="statistics extraction")
            else:
                sums = one_pass(size)
            n = len(encoded[side])
            means[side] = SetMeans(
                **{k: stored(v / n) for k, v in sums.items()},
                n_samples=n,
                n_tokens=sum(hi - lo for lo, hi in (s.window(positions, prompt_positions) for s in encoded[side])),
            )
    provenance = dict(data.provenance)
    if system is not None:
        provenance["system_prompt"] = system
    if reference_strip:
        provenance["reference_strip"] = True
    if positions != "response":
        provenance["positions"] = {"rule": positions, "prompt_positions": prompt_positions}
    provenance["model_state"] = model.state()  # edits applied and steering active during the pass
    provenance.setdefault("n_positive", len(data.positive))
    provenance.setdefault("n_negative", len(data.negative))
    return ContrastiveStatistics(
        positive=means["positive"],
        negative=means["negative"],
        model=model_identity(model),
        provenance=provenance,
        positions=positions_rule(positions, prompt_positions),
    )


def _order(samples: list[EncodedSample], by_length: bool) -> list[EncodedSample]:
    return sorted(samples, key=lambda s: s.end) if by_length else samples


def _stream(model: LoadedModel, batches: Sequence[Batch], on_batch: Callable[[], None]) -> dict[str, torch.Tensor]:
    """Sum of per-sample means of every hooked activation over ``batches``, accumulated on the
    model's device in float64 (float32 on MPS)."""
    card = model.card
    L = card.n_layers
    shapes = {
        "attn_out": (L, card.d_model),
        "mlp_out": (L, card.d_model),
        "z": (L, card.n_heads, card.d_head),
        "post": (L, card.d_mlp),
    }
    acc = accumulator_dtype(model.device)  # float64 where the device has it, whatever the model's dtype
    sums = {k: torch.zeros(shape, dtype=acc, device=model.device) for k, shape in shapes.items()}
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
