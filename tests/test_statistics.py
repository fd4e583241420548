"""Streaming statistics equal a naive full-activation reference, whatever the batching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import safety_set, tiny_set

from s2e_lens.core.contrastive import ContrastiveSet, ContrastiveSetError
from s2e_lens.core.statistics import ContrastiveStatistics
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.loading import load_model
from s2e_lens.models.tokens import encode_pairs, make_batches

HOOKS = {"attn_out": "attn.hook_out", "mlp_out": "mlp.hook_out", "z": "attn.hook_z", "post": "mlp.hook_post"}


def naive_means(model: LoadedModel, data: ContrastiveSet) -> dict[str, dict[str, torch.Tensor]]:
    """The reference's way: one sample at a time, full activation cache, slice, mean, mean."""
    out = {}
    L = model.card.n_layers
    for side, pairs in (("positive", data.positive), ("negative", data.negative)):
        per_sample = {k: [] for k in HOOKS}
        for sample in encode_pairs(model.tokenizer, pairs):
            ids = torch.tensor([sample.ids])
            with torch.no_grad():
                _, cache = model.bridge.run_with_cache(ids)
            for key, hook in HOOKS.items():
                acts = torch.stack([cache[f"blocks.{l}.{hook}"][0] for l in range(L)])  # [L, seq, ...]
                per_sample[key].append(acts[:, sample.start - 1 : sample.end - 1].double().mean(dim=1))
        out[side] = {k: torch.stack(v).mean(dim=0) for k, v in per_sample.items()}
    return out


def assert_matches(stats: ContrastiveStatistics, reference: dict, rel: float = 1e-5) -> None:
    for side in ("positive", "negative"):
        means = getattr(stats, side)
        for key in HOOKS:
            ours, ref = getattr(means, key).double(), reference[side][key]
            assert ours.shape == ref.shape, (side, key)
            err = (ours - ref).abs().max() / ref.abs().max()
            assert err <= rel, f"{side}.{key}: relative error {err:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_streaming_equals_naive_on_the_default_model(default_model, padding_side: str) -> None:
    data = safety_set()
    reference = naive_means(default_model, data)
    stats = collect_statistics(default_model, data, batch_size=4, padding_side=padding_side, progress=False)
    assert_matches(stats, reference)
    assert stats.positive.n_samples == 6 and stats.negative.n_samples == 6


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3", "gpt_neox"])
def test_streaming_equals_naive_on_tiny_models(family: str, tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs[family]), progress=False)
    data = tiny_set(7)
    reference = naive_means(model, data)
    for batch_size, side in ((1, "right"), (3, "left"), (7, "right")):
        stats = collect_statistics(model, data, batch_size=batch_size, padding_side=side, progress=False)
        assert_matches(stats, reference)


def test_positions_are_the_response_predicting_ones(tiny_dirs: dict[str, Path]) -> None:
    tok = load_model(str(tiny_dirs["llama"]), progress=False).tokenizer
    data = ContrastiveSet.from_pairs([("ab", "xyz")], [("abc", "m")])
    [pos] = encode_pairs(tok, data.positive)
    # <|user|> a b <|end|> <|assistant|> | x y z
    assert pos.start == 5 and pos.end == 8
    assert tok.convert_ids_to_tokens(list(pos.ids[pos.start :])) == ["x", "y", "z"]
    batches = make_batches([pos], 1, 3, padding_side="left")
    assert batches[0].weights[0].tolist() == pytest.approx([0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0])
    [neg] = encode_pairs(tok, data.negative)
    [batch] = make_batches([pos, neg], 2, 3, padding_side="left")
    assert batch.input_ids.shape == (2, 8)
    assert batch.weights[0].tolist() == pytest.approx([0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0])  # longest
    assert batch.weights[1].tolist() == [0, 0, 0, 0, 0, 0, 1.0, 0]  # neg: 7 tokens, left-padded by 1
    assert batch.position_ids[1].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]


def test_statistics_do_not_depend_on_order(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["qwen2"]), progress=False)
    data = tiny_set(6, seed=3)
    a = collect_statistics(model, data, batch_size=2, sort_by_length=True, progress=False)
    b = collect_statistics(model, data, batch_size=4, sort_by_length=False, progress=False)
    torch.testing.assert_close(a.positive.z, b.positive.z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.negative.mlp_out, b.negative.mlp_out, rtol=1e-5, atol=1e-6)


def test_bad_contrastive_sets_are_refused(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    with pytest.raises(ContrastiveSetError, match="the negative set is empty"):
        ContrastiveSet.from_pairs([("a", "b")], [])
    with pytest.raises(ContrastiveSetError, match="positive pair 1: the response '' tokenises to nothing"):
        collect_statistics(model, ContrastiveSet.from_pairs([("a", "b"), ("c", "")], [("a", "d")]), progress=False)
    with pytest.raises(ValueError, match="padding_side"):
        collect_statistics(model, tiny_set(2), padding_side="middle", progress=False)
