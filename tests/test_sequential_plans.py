"""Layer-sequential plans (issue 15) and the layer restriction they build on, against an
independent computation: the statistics collected by hand on the model with the earlier
layers' edits applied."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_set

from s2e_lens.core.plan import EditPlan, PlanError, compute_plan_from_tensors
from s2e_lens.core.settings import EditSettings, EditSettingsError
from s2e_lens.engine.extraction import collect_input_means, collect_statistics
from s2e_lens.engine.interventions import edited
from s2e_lens.engine.planning import compute_plan, model_weights
from s2e_lens.engine.sequential import sequential_plan
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loading import load_model

SETTINGS = EditSettings(rho_attn=0.05, rho_mlp=0.05, alpha=0.1)
FIELDS = ("head_lambda", "head_k", "head_g", "mu_z", "neuron_lambda", "neuron_k", "neuron_g", "mu_post")


def _equal(a: EditPlan, b: EditPlan, fields: tuple[str, ...] = FIELDS) -> None:
    for name in fields:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-7, msg=name)


def test_layer_restriction(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    stats = collect_statistics(model, tiny_set(5), progress=False)
    full = compute_plan(model, stats, SETTINGS)
    only = compute_plan(model, stats, replace(SETTINGS, layers=[1]))  # type: ignore[arg-type]
    assert only.settings.layers == (1,) and full.n_edited["heads"] > only.n_edited["heads"] > 0
    assert not only.head_lambda[0].any() and not only.neuron_lambda[0].any()
    torch.testing.assert_close(only.head_lambda[1], full.head_lambda[1])
    assert EditPlan.load(only.save(tmp_path / "p")).settings.layers == (1,)  # JSON list -> the same tuple
    # a top-k budget is spent inside the chosen layers
    top = compute_plan(model, stats, replace(SETTINGS, selection="top_k", top_k_attn=3, layers=(0,)))
    assert int(top.edited_heads[0].sum()) == 3 and not top.edited_heads[1].any()
    with pytest.raises(PlanError, match=r"out of range: the model has 2 layers"):
        compute_plan(model, stats, replace(SETTINGS, layers=(5,)))
    for bad in ([], [-1], [0.5], "0"):
        with pytest.raises(EditSettingsError, match="layers must be"):
            replace(SETTINGS, layers=bad)  # type: ignore[arg-type]


def test_sequential_equals_plain_with_one_block_or_one_edited_layer(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    data = tiny_set(5)
    stats = collect_statistics(model, data, progress=False)
    _equal(
        sequential_plan(model, data, stats, SETTINGS, block_size=2, progress=False),
        compute_plan(model, stats, SETTINGS),
    )
    one = replace(SETTINGS, layers=(1,))
    _equal(sequential_plan(model, data, stats, one, block_size=1, progress=False), compute_plan(model, stats, one))


def test_sequential_layer_uses_its_input_in_the_edited_model(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    data = tiny_set(5)
    stats = collect_statistics(model, data, progress=False)
    before = {k: v.clone() for k, v in model.hf_state_dict().items()}
    plan = sequential_plan(model, data, stats, SETTINGS, block_size=1, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.hf_state_dict().items())  # left unedited
    # by hand: layer 0 as the plain plan edits it, then statistics of the edited model for layer 1
    first = compute_plan(model, stats, replace(SETTINGS, layers=(0,)))
    with edited(model, first):
        after_first = collect_statistics(model, data, progress=False)
    second = compute_plan_from_tensors(
        *model_weights(model),
        stats.positive.attn_out - stats.negative.attn_out,  # the unedited model's direction
        stats.positive.mlp_out - stats.negative.mlp_out,
        after_first.mu_z,
        after_first.mu_post,
        replace(SETTINGS, layers=(1,)),
    )
    torch.testing.assert_close(plan.head_lambda[0], first.head_lambda[0])
    torch.testing.assert_close(plan.mu_z[1], after_first.mu_z[1])
    torch.testing.assert_close(plan.head_lambda[1], second.head_lambda[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plan.neuron_lambda[1], second.neuron_lambda[1], rtol=1e-5, atol=1e-6)
    # the edit moved layer 1's input, so the sequential plan differs from the plain one there
    assert not torch.allclose(after_first.mu_z[1], stats.mu_z[1])
    assert plan.provenance["sequential"] == {"block_size": 1, "statistics_passes": 2, "max_pairs": None}


def test_sequential_re_estimates_on_the_sampled_pairs(tiny_dirs: dict[str, Path]) -> None:
    """With max_pairs, layer 1's inputs come from the statistics of the seeded sample of the
    probe pairs (collected by hand on the model with layer 0 edited), not of the whole set."""
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    data = tiny_set(6)
    stats = collect_statistics(model, data, progress=False)
    plan = sequential_plan(model, data, stats, SETTINGS, block_size=1, max_pairs=3, seed=4, progress=False)
    first = compute_plan(model, stats, replace(SETTINGS, layers=(0,)))
    with edited(model, first):
        on_sample = collect_statistics(model, data.sample(3, seed=4), progress=False)
        on_all = collect_statistics(model, data, progress=False)
    torch.testing.assert_close(plan.mu_z[1], on_sample.mu_z[1])
    torch.testing.assert_close(plan.mu_post[1], on_sample.mu_post[1])
    assert not torch.allclose(on_sample.mu_z[1], on_all.mu_z[1])  # the sample is not the whole set
    torch.testing.assert_close(plan.mu_z[0], stats.mu_z[0])  # the first block: the unedited statistics
    assert plan.provenance["sequential"]["max_pairs"] == 3
    whole = sequential_plan(model, data, stats, SETTINGS, block_size=1, max_pairs=6, progress=False)
    _equal(whole, sequential_plan(model, data, stats, SETTINGS, block_size=1, progress=False))
    with pytest.raises(InvalidInputError, match="max_pairs must be >= 1"):
        sequential_plan(model, data, stats, SETTINGS, max_pairs=0, progress=False)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_neox"])
def test_input_means_of_some_layers_equal_the_full_pass_and_skip_the_layers_above(
    family: str, tiny_dirs: dict[str, Path]
) -> None:
    """The block pass of a sequential plan: its means equal the full statistics at the chosen
    layers, and the decoder layers above the last chosen one never run (a forward pre-hook
    on each counts its calls). gpt_neox has parallel attention and MLP; gemma3 3 layers."""
    model = load_model(str(tiny_dirs[family]), progress=False)
    data = tiny_set(5)
    full = collect_statistics(model, data, batch_size=2, progress=False)
    layers = model.hf_model.base_model.layers
    calls = [0] * len(layers)
    handles = [
        layer.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(layers)
    ]
    try:
        for chosen in ([0], [1, 0]):
            calls[:] = [0] * len(layers)
            means = collect_input_means(model, data, chosen, batch_size=2, progress=False)
            assert means.layers == tuple(sorted(chosen))
            torch.testing.assert_close(means.mu_z, full.mu_z[list(means.layers)], rtol=0, atol=0)  # the same sums
            torch.testing.assert_close(means.mu_post, full.mu_post[list(means.layers)], rtol=0, atol=0)
            top = max(chosen)
            assert calls[top] == 6 and all(c == 0 for c in calls[top + 1 :]), calls  # 3 batches per side
    finally:
        for h in handles:
            h.remove()
    for bad in ([], [len(layers)], [-1]):
        with pytest.raises(InvalidInputError, match="layers must be a non-empty subset"):
            collect_input_means(model, data, bad, progress=False)


def test_a_sample_of_a_contrastive_set() -> None:
    data = tiny_set(9)
    sample = data.sample(4, seed=2)
    assert len(sample.positive) == len(sample.negative) == 4
    for part, whole in ((sample.positive, data.positive), (sample.negative, data.negative)):
        where = [whole.index(p) for p in part]
        assert where == sorted(where)  # a subset, in the set's order
    assert sample == data.sample(4, seed=2) and sample.positive != data.sample(4, seed=3).positive
    assert data.sample(9).positive == data.positive and data.sample(20).negative == data.negative


def test_sequential_with_component_vectors_writes_every_edited_neuron(tiny_dirs: dict[str, Path]) -> None:
    """Component-level plans keep sparse neuron directions for the neurons they edit; a
    sequential plan gathers them from its parts (EditPlan refuses directions that do not cover
    its edited neurons exactly). A neuron's component direction and share come from the
    unedited model's contrast, so here the edited neurons are the plain plan's."""
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    data = tiny_set(5)
    stats = collect_statistics(model, data, progress=False)
    settings = replace(SETTINGS, vectors="component", rho_mlp=0.02)
    one_block = sequential_plan(model, data, stats, settings, block_size=2, progress=False)
    plain = compute_plan(model, stats, settings)
    _equal(one_block, plain, FIELDS + ("head_u", "neuron_u", "neuron_u_index"))
    plan = sequential_plan(model, data, stats, settings, block_size=1, progress=False)
    edited = plan.edited_neurons
    assert edited[0].any() and edited[1].any()
    assert not torch.allclose(plan.mu_post[1], plain.mu_post[1])  # layer 1 was planned on the edited model
    rows = plan.delta_W_out().abs().sum(-1) > 0  # every edited neuron is written, nothing else
    assert torch.equal(rows, edited)


def test_neuron_directions_must_cover_the_edited_neurons(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    plan = compute_plan(model, collect_statistics(model, tiny_set(5), progress=False),
                        replace(SETTINGS, vectors="component", rho_mlp=0.02))  # fmt: skip
    assert plan.neuron_u_index is not None and plan.neuron_u is not None and len(plan.neuron_u_index) > 1
    with pytest.raises(PlanError, match="cover exactly its edited neurons"):
        replace(plan, neuron_u_index=plan.neuron_u_index[1:], neuron_u=plan.neuron_u[1:])
