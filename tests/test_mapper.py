"""Applying plans to live weights: the method's identity, revert, composition, refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tiny
import torch
from conftest import safety_set, tiny_set

from s2e_lens.core.plan import EditPlan
from s2e_lens.core.settings import EditSettings
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.mapper import EditConflictError, RevertError, apply_plan, revert, revert_all
from s2e_lens.engine.planning import compute_plan
from s2e_lens.models.identity import IdentityMismatchError
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.loading import load_model
from s2e_lens.models.tokens import encode_prompt


def equivalent_hooks(plan: EditPlan) -> list:
    """Hooks that add lam (z . k_hat) v_hat per edited head and lam k a v_hat per edited neuron."""
    hooks, seen = [], {}
    for layer in range(plan.n_layers):
        heads = plan.edited_heads[layer].nonzero().flatten()
        neurons = plan.edited_neurons[layer].nonzero().flatten()
        if len(heads):

            def keep_z(z, hook, layer=layer):
                seen[("z", layer)] = z

            def add_attn(out, hook, layer=layer, heads=heads):
                z = seen[("z", layer)][..., heads, :]  # [b, s, k, d_head]
                coef = torch.einsum("bskd,kd,k->bs", z, plan.head_k[layer, heads], plan.head_lambda[layer, heads])
                return out + coef[..., None] * plan.v_hat_attn[layer]

            hooks += [(f"blocks.{layer}.attn.hook_z", keep_z), (f"blocks.{layer}.attn.hook_out", add_attn)]
        if len(neurons):

            def keep_post(a, hook, layer=layer):
                seen[("post", layer)] = a

            def add_mlp(out, hook, layer=layer, neurons=neurons):
                a = seen[("post", layer)][..., neurons]
                coef = a @ (plan.neuron_lambda[layer, neurons] * plan.neuron_k[layer, neurons])
                return out + coef[..., None] * plan.v_hat_mlp[layer]

            hooks += [(f"blocks.{layer}.mlp.hook_post", keep_post), (f"blocks.{layer}.mlp.hook_out", add_mlp)]
    return hooks


def check_identity_of_method(model: LoadedModel, plan: EditPlan, ids: torch.Tensor, atol: float) -> None:
    with torch.no_grad():
        with model.bridge.hooks(fwd_hooks=equivalent_hooks(plan)):
            hooked = model.bridge(ids)
        apply_plan(model, plan)
        edited = model.bridge(ids)
        revert(model)
        plain = model.bridge(ids)
    assert (edited - plain).abs().max() > 100 * atol  # the edit does something
    assert (edited - hooked).abs().max() <= atol


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_edited_weights_equal_unedited_model_plus_gated_addition(family: str, tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs[family]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    plan = compute_plan(model, stats, EditSettings(rho_attn=0.2, rho_mlp=0.3, alpha=0.5))
    assert plan.n_edited["heads"] and plan.n_edited["neurons"]
    ids = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (2, 11))
    check_identity_of_method(model, plan, ids, atol=2e-4)


@pytest.mark.slow
def test_identity_of_the_method_on_the_default_model(default_model, default_stats) -> None:
    plan = compute_plan(default_model, default_stats, EditSettings(rho_attn=0.3, rho_mlp=0.6, alpha=0.8))
    ids = torch.tensor([encode_prompt(default_model.tokenizer, "How do I bake bread?")])
    check_identity_of_method(default_model, plan, ids, atol=2e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_edits_are_visible_through_W_O_and_W_out_and_revert_is_bitwise(family: str, tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs[family]), progress=False)
    before = {k: v.clone() for k, v in model.hf_state_dict().items()}
    W_O, W_out = model.bridge.W_O.detach().clone(), model.bridge.W_out.detach().clone()
    stats = collect_statistics(model, tiny_set(5), progress=False)
    plan = compute_plan(model, stats, EditSettings(rho_attn=0.2, rho_mlp=0.3, alpha=0.5))
    apply_plan(model, plan)
    torch.testing.assert_close(model.bridge.W_O, W_O + plan.delta_W_O(), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.bridge.W_out, W_out + plan.delta_W_out(), rtol=0, atol=1e-6)
    changed = [k for k, v in model.hf_state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(("proj" in k or "dense" in k) for k in changed)  # only output projections
    revert(model)
    assert all(torch.equal(v, before[k]) for k, v in model.hf_state_dict().items())
    with pytest.raises(RevertError, match="no edit is applied"):
        revert(model)


def test_plans_compose_conflicts_are_reported_and_revert_unwinds(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["qwen2"]), progress=False)
    before = {k: v.clone() for k, v in model.hf_state_dict().items()}
    stats = collect_statistics(model, tiny_set(5), progress=False)
    a = compute_plan(model, stats, EditSettings(rho_attn=0.2, rho_mlp=0.3, alpha=0.5))
    opposite = dataclasses.replace(a, head_lambda=-a.head_lambda, neuron_lambda=-a.neuron_lambda)
    first = apply_plan(model, a)
    after_a = {k: v.clone() for k, v in model.hf_state_dict().items()}
    with pytest.raises(EditConflictError, match="opposite signs"):
        apply_plan(model, opposite, on_conflict="error")
    assert all(torch.equal(v, after_a[k]) for k, v in model.hf_state_dict().items())  # untouched
    with pytest.warns(UserWarning, match="opposite signs"):
        second = apply_plan(model, opposite)
    assert len(second.conflicts) == a.n_edited["heads"] + a.n_edited["neurons"]
    # composition: two plans add up (here they cancel, up to float rounding)
    torch.testing.assert_close(model.bridge.W_O, before_W_O(before, model), atol=1e-5, rtol=0)
    with pytest.raises(RevertError, match="most recently applied"):
        revert(model, first)
    revert_all(model)
    assert all(torch.equal(v, before[k]) for k, v in model.hf_state_dict().items())


def before_W_O(state: dict[str, torch.Tensor], model: LoadedModel) -> torch.Tensor:
    """W_O rebuilt from the saved transformers tensors, independently of the bridge's view."""
    card = model.card
    per_layer = []
    for layer in range(card.n_layers):
        w = state[f"model.layers.{layer}.self_attn.o_proj.weight"]  # [d_model, heads * d_head]
        per_layer.append(w.T.reshape(card.n_heads, card.d_head, card.d_model))
    return torch.stack(per_layer)


def test_a_plan_for_another_model_is_refused_and_changes_nothing(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    source = load_model(str(tiny_dirs["llama"]), progress=False)
    plan = compute_plan(source, collect_statistics(source, tiny_set(4), progress=False), EditSettings(rho_attn=0.2))
    other_shape = load_model(str(tiny_dirs["gemma3"]), progress=False)
    other_weights = load_model(str(tiny.build("llama", tmp_path / "llama_seed1", seed=1)), progress=False)
    for target, message in ((other_shape, "does not fit"), (other_weights, "different weights")):
        before = {k: v.clone() for k, v in target.hf_state_dict().items()}
        with pytest.raises(IdentityMismatchError, match=message):
            apply_plan(target, plan)
        assert all(torch.equal(v, before[k]) for k, v in target.hf_state_dict().items())
        assert target.applied_plans == []


@pytest.mark.slow
def test_every_edit_moves_its_component_along_v_hat_as_the_method_says(default_model, default_stats) -> None:
    """Sign convention on real data. With the components' mean inputs over the positive and
    negative data (measured by hooks on the unedited model) and the live weights read back
    after the mapper wrote them, every edited head's and neuron's mean output projection on
    v_hat rises, by lam (mu . k_hat) for a head and lam k mu for a neuron."""
    plan = compute_plan(default_model, default_stats, EditSettings(rho_attn=0.3, rho_mlp=0.6, alpha=0.8))
    measured = collect_statistics(default_model, safety_set(), batch_size=3, padding_side="left", progress=False)
    mean_z = 0.5 * (measured.positive.z + measured.negative.z)
    mean_a = 0.5 * (measured.positive.post + measured.negative.post)

    def projections() -> tuple[torch.Tensor, torch.Tensor]:
        W_O, W_out = default_model.bridge.W_O.detach(), default_model.bridge.W_out.detach()
        heads = torch.einsum("lhd,lhdm,lm->lh", mean_z, W_O, plan.v_hat_attn)
        neurons = mean_a * torch.einsum("lnm,lm->ln", W_out, plan.v_hat_mlp)
        return heads, neurons

    heads_before, neurons_before = projections()
    apply_plan(default_model, plan)
    try:
        heads_after, neurons_after = projections()
    finally:
        revert(default_model)
    h, n = plan.edited_heads, plan.edited_neurons
    assert (torch.sign(plan.head_lambda[h]) == torch.sign(plan.head_g[h])).all()
    assert ((heads_after - heads_before)[h] > 0).all()
    assert ((neurons_after - neurons_before)[n] > 0).all()
    assert torch.equal((heads_after - heads_before)[~h], torch.zeros_like(heads_after[~h]))
    expected = plan.head_lambda * torch.einsum("lhd,lhd->lh", mean_z, plan.head_k)
    torch.testing.assert_close((heads_after - heads_before)[h], expected[h], rtol=1e-3, atol=1e-3)
