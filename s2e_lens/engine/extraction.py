"""One streaming pass that collects contrastive statistics for every layer at once.

Targeted hooks on ``attn.hook_out`` / ``mlp.hook_out`` (block outputs before any post-norm),
``attn.hook_z`` and ``mlp.hook_post`` fold each batch into running sums of per-sample means;
no activation is kept, so memory does not grow with the number of samples. The forward pass
runs the transformer body only (no unembedding: logits are not needed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from s2e_lens.core.contrastive import ContrastiveSet
from s2e_lens.core.statistics import ContrastiveStatistics, SetMeans, input_mean, positions_rule
from s2e_lens.core.storage import accumulator_dtype, stored
from s2e_lens.engine.batching import AUTO_START, BatchSize, largest_that_fits, resolve
from s2e_lens.engine.hooks import Point, hook_name
from s2e_lens.errors import InvalidInputError
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
    encoded = _encode(model, data, system, reference_strip, positions, prompt_positions)
    sums = _side_sums(
        model,
        encoded,
        STATISTICS,
        batch_size=batch_size,
        padding_side=padding_side,
        sort_by_length=sort_by_length,
        positions=positions,
        prompt_positions=prompt_positions,
        progress=progress,
    )
    means = {}
    for side, samples in encoded.items():
        n = len(samples)
        means[side] = SetMeans(
            **{k: stored(v / n) for k, v in sums[side].items()},
            n_samples=n,
            n_tokens=sum(hi - lo for lo, hi in (s.window(positions, prompt_positions) for s in samples)),
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


@dataclass(frozen=True)
class InputMeans:
    """Each head's and neuron's mean input in ``layers`` (row ``i`` is layer ``layers[i]``):
    the average of the positive and the negative set's means, as ``ContrastiveStatistics``
    gives them for every layer."""

    layers: tuple[int, ...]
    mu_z: Float[torch.Tensor, "chosen head d_head"]
    mu_post: Float[torch.Tensor, "chosen d_mlp"]


def collect_input_means(
    model: LoadedModel,
    data: ContrastiveSet,
    layers: Sequence[int],
    *,
    batch_size: BatchSize = None,
    system: str | None = None,
    reference_strip: bool = False,
    positions: str = "response",
    prompt_positions: int = 4,
    progress: bool = True,
) -> InputMeans:
    """The component inputs' means (``mu_z``, ``mu_post``) in ``layers`` only, from a cheaper
    pass: only those layers are hooked, and each forward pass stops once the last of them has
    been seen (the layers above it are not run). Equal to ``collect_statistics``' ``mu_z`` and
    ``mu_post`` at those layers; what a layer-sequential plan re-estimates per block."""
    chosen = tuple(sorted({int(x) for x in layers}))
    if not chosen or chosen[0] < 0 or chosen[-1] >= model.card.n_layers:
        raise InvalidInputError(f"layers must be a non-empty subset of 0..{model.card.n_layers - 1}, got {layers!r}")
    encoded = _encode(model, data, system, reference_strip, positions, prompt_positions)
    sums = _side_sums(
        model,
        encoded,
        ("z", "post"),
        layers=chosen,
        batch_size=batch_size,
        positions=positions,
        prompt_positions=prompt_positions,
        progress=progress,
    )
    rows = list(chosen)

    def mean(kind: str) -> torch.Tensor:  # each set's mean stored, then mu: as collect_statistics
        pos, neg = (stored(sums[side][kind][rows] / len(encoded[side])) for side in ("positive", "negative"))
        return input_mean(pos, neg)

    return InputMeans(chosen, mean("z"), mean("post"))


def _encode(
    model: LoadedModel,
    data: ContrastiveSet,
    system: str | None,
    reference_strip: bool,
    positions: str,
    prompt_positions: int,
) -> dict[str, list[EncodedSample]]:
    """Both sets encoded, every sample checked against the context and the positions rule
    before any model work."""
    tok = model.tokenizer
    encoded = {
        "positive": encode_pairs(tok, data.positive, side="positive", system=system, reference_strip=reference_strip),
        "negative": encode_pairs(tok, data.negative, side="negative", system=system, reference_strip=reference_strip),
    }
    for side, samples in encoded.items():
        for i, sample in enumerate(samples):
            model.check_context(sample.end, f"{side} pair {i}")
            sample.window(positions, prompt_positions)  # checks the rule before any model work
    return encoded


def _side_sums(
    model: LoadedModel,
    encoded: dict[str, list[EncodedSample]],
    kinds: Sequence[Point],
    *,
    layers: Sequence[int] | None = None,
    batch_size: BatchSize,
    padding_side: Literal["left", "right"] = "right",
    sort_by_length: bool = True,
    positions: str,
    prompt_positions: int,
    progress: bool,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per set, the sums of per-sample means of ``kinds`` (in ``layers``; None: all), batched
    as asked ("auto": the largest batch that fits)."""
    pad_id = pad_token_id(model.tokenizer)
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
    sums = {}
    with bar:
        for side in encoded:

            def one_pass(n: int, side: str = side) -> dict[str, torch.Tensor]:
                return _stream(model, batches(side, n), on_batch=lambda: bar.update(1), kinds=kinds, layers=layers)

            if size == "auto":
                sums[side], start = largest_that_fits(one_pass, start, what="statistics extraction")
            else:
                sums[side] = one_pass(size)
    return sums


def _order(samples: list[EncodedSample], by_length: bool) -> list[EncodedSample]:
    return sorted(samples, key=lambda s: s.end) if by_length else samples


class _SeenEnough(Exception):
    """Raised by the last hook a pass needs: the layers above it are not run."""


def _stream(
    model: LoadedModel,
    batches: Sequence[Batch],
    on_batch: Callable[[], None],
    kinds: Sequence[Point] = STATISTICS,
    layers: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Sum of per-sample means of every hooked activation over ``batches``, accumulated on the
    model's device in float64 (float32 on MPS). With ``layers``, only those layers are hooked
    (the other rows stay zero) and each forward pass stops once every hook has fired."""
    card = model.card
    L = card.n_layers
    shapes = {
        "attn_out": (L, card.d_model),
        "mlp_out": (L, card.d_model),
        "z": (L, card.n_heads, card.d_head),
        "post": (L, card.d_mlp),
    }
    acc = accumulator_dtype(model.device)  # float64 where the device has it, whatever the model's dtype
    sums: dict[str, torch.Tensor] = {k: torch.zeros(shapes[k], dtype=acc, device=model.device) for k in kinds}
    current: dict[str, torch.Tensor] = {}
    hooked = range(L) if layers is None else layers
    n_hooks = len(kinds) * len(hooked)
    stop_early = layers is not None and max(layers) < L - 1
    fired = [0]

    def make_hook(kind: str, layer: int) -> Callable[..., None]:
        target = sums[kind][layer]

        def hook(activation: torch.Tensor, hook: object) -> None:
            w = current["weights"]  # [batch * seq]
            flat = activation.reshape(w.shape[0], -1)
            target.add_((w @ flat.to(w.dtype)).view(target.shape))
            fired[0] += 1
            if stop_early and fired[0] == n_hooks:
                raise _SeenEnough

        return hook

    hooks = [(hook_name(k, layer), make_hook(k, layer)) for k in kinds for layer in hooked]
    body = model.hf_model.base_model
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
        for batch in batches:
            device = model.device
            current["weights"] = batch.weights.reshape(-1).to(device)
            fired[0] = 0
            try:
                body(
                    input_ids=batch.input_ids.to(device),
                    attention_mask=batch.attention_mask.to(device),
                    position_ids=batch.position_ids.to(device),
                    use_cache=False,
                )
            except _SeenEnough:
                pass
            if fired[0] != n_hooks:  # a hook that never fired would leave its rows silently zero
                raise RuntimeError(f"statistics pass: {fired[0]} of {n_hooks} hooks fired in one forward pass")
            on_batch()
    return sums
