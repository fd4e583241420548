"""Component-level vectors (issue 15): each head and neuron writes along its own
positive-minus-negative output and is scored by its share of the layer's vector. Checked
against a per-component loop, the identity that a layer's shares sum to 1, and the weights the
edit writes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_set

from s2e_lens.core.edit_rule import elastic_net_lambda
from s2e_lens.core.plan import EditPlan
from s2e_lens.core.settings import EditSettings, EditSettingsError
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.mapper import apply_plan
from s2e_lens.engine.planning import compute_plan
from s2e_lens.models.loading import load_model

SETTINGS = EditSettings(rho_attn=0.2, rho_mlp=0.02, alpha=0.5, vectors="component")


@pytest.fixture(scope="module")
def setup(tiny_dirs: dict[str, Path]):
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    return model, stats, compute_plan(model, stats, SETTINGS)


def test_against_a_per_component_loop(setup) -> None:
    model, stats, plan = setup
    W_O, W_out = model.bridge.W_O.detach().float(), model.bridge.W_out.detach().float()
    dz, dpost = stats.positive.z - stats.negative.z, stats.positive.post - stats.negative.post
    v_attn = stats.positive.attn_out - stats.negative.attn_out
    v_mlp = stats.positive.mlp_out - stats.negative.mlp_out
    for layer in range(model.card.n_layers):
        shares = []
        for h in range(model.card.n_heads):
            c = dz[layer, h] @ W_O[layer, h]  # the head's own positive-minus-negative output
            g = float(c @ v_attn[layer]) / float(v_attn[layer].norm()) ** 2
            u = c / c.norm()
            k = W_O[layer, h] @ u
            lam = float(elastic_net_lambda(torch.tensor(g), SETTINGS.rho_attn, SETTINGS.alpha))
            assert float(plan.head_g[layer, h]) == pytest.approx(g, rel=1e-4, abs=1e-6)
            assert float(plan.head_lambda[layer, h]) == pytest.approx(lam, rel=1e-4, abs=1e-6)
            torch.testing.assert_close(plan.head_k[layer, h], k / k.norm(), rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(plan.head_u[layer, h], u, rtol=1e-4, atol=1e-6)
            shares.append(g)
        # the attention block's vector is the sum of its heads' own contrasts: shares sum to 1
        assert sum(shares) == pytest.approx(1.0, abs=1e-3)
        n_shares = dpost[layer] * (W_out[layer] @ v_mlp[layer]) / v_mlp[layer].norm() ** 2
        torch.testing.assert_close(plan.neuron_g[layer], n_shares, rtol=1e-4, atol=1e-6)
        assert float(n_shares.sum()) == pytest.approx(1.0, abs=1e-3)  # likewise for the MLP's neurons


def test_the_weights_it_writes_and_takes_out(setup, tmp_path: Path) -> None:
    model, _, plan = setup
    assert plan.n_edited["heads"] > 0 and plan.n_edited["neurons"] > 0
    before_O, before_out = model.bridge.W_O.detach().clone(), model.bridge.W_out.detach().clone()
    state = {k: v.clone() for k, v in model.hf_state_dict().items()}
    applied = apply_plan(model, plan)
    dO = model.bridge.W_O.detach() - before_O
    dout = model.bridge.W_out.detach() - before_out
    for layer, h in plan.edited_heads.nonzero().tolist():
        expect = plan.head_lambda[layer, h] * torch.outer(plan.head_k[layer, h], plan.head_u[layer, h])
        torch.testing.assert_close(dO[layer, h], expect, rtol=1e-4, atol=1e-6)
    for layer, n in plan.edited_neurons.nonzero().tolist():
        w = before_out[layer, n]
        sign = torch.sign(plan.neuron_g[layer, n] / (w @ plan.v_hat_mlp[layer]))  # sign(dpost)
        expect = plan.neuron_lambda[layer, n] * plan.neuron_k[layer, n] * sign * w / w.norm()
        torch.testing.assert_close(dout[layer, n], expect, rtol=1e-4, atol=1e-6)
    assert not dout[~plan.edited_neurons].any() and not dO[~plan.edited_heads].any()
    applied.remove()
    assert all(torch.equal(v, state[k]) for k, v in model.hf_state_dict().items())
    again = EditPlan.load(plan.save(tmp_path / "component"))
    assert again.settings.vectors == "component"
    for name in ("head_u", "neuron_u", "neuron_u_index"):
        assert torch.equal(getattr(again, name), getattr(plan, name))
    torch.testing.assert_close(again.delta_W_out(), plan.delta_W_out())


def test_layer_vectors_are_unchanged_and_bad_combinations_refused(setup) -> None:
    model, stats, _ = setup
    layer_plan = compute_plan(model, stats, replace(SETTINGS, vectors="layer"))
    assert layer_plan.head_u is None and layer_plan.neuron_u is None
    with pytest.raises(EditSettingsError, match="importance='dot' has no meaning"):
        replace(SETTINGS, importance="dot")
    with pytest.raises(EditSettingsError, match="vectors must be"):
        replace(SETTINGS, vectors="head")  # type: ignore[arg-type]
