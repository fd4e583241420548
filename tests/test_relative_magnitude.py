"""Scale-aware magnitude (issue 15): ``EditSettings(magnitude="relative")`` reads lambda in
units of each component's own natural variation along v_hat. Checked against measured spreads
of real head inputs, and by its defining property: reparametrising a head (W_O times c, its
inputs divided by c: the same model) leaves the relative edit's effect unchanged, while the
paper's absolute lambda changes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import torch
from conftest import tiny_set

from s2e_lens.core import edit_rule
from s2e_lens.core.settings import EditSettings, EditSettingsError
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.interventions import edited
from s2e_lens.engine.planning import compute_plan
from s2e_lens.models.loading import load_model


def test_the_scale_is_the_ratio_of_measured_spreads(tiny_dirs: dict[str, Path]) -> None:
    """sigma / s from z measured at every position of some texts: std(z . u) / std(z . k_hat)."""
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    stats = collect_statistics(model, tiny_set(5), progress=False)
    paper = compute_plan(model, stats, EditSettings(rho_attn=0.05, alpha=0.1))
    relative = compute_plan(model, stats, EditSettings(rho_attn=0.05, alpha=0.1, magnitude="relative"))
    ids = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (3, 11))
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.card.n_layers)]
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(ids, names_filter=names)
    W_O = model.bridge.W_O.detach().float()
    for layer, name in enumerate(names):
        z = cache[name].float().reshape(-1, model.card.n_heads, model.card.d_head)  # [positions, head, d_head]
        u = torch.einsum("hdm,m->hd", W_O[layer], paper.v_hat_attn[layer])
        s = torch.einsum("phd,hd->ph", z, paper.head_k[layer]).std(0)
        sigma = torch.einsum("phd,hd->ph", z, u).std(0)
        torch.testing.assert_close(sigma / s, u.norm(dim=-1), rtol=1e-4, atol=0)
        torch.testing.assert_close(
            relative.head_lambda[layer], paper.head_lambda[layer] * sigma / s, rtol=1e-4, atol=1e-7
        )
    # neurons: the scale is |w . v_hat| (the activation's spread cancels)
    paper_n = compute_plan(model, stats, EditSettings(rho_attn=0, rho_mlp=0.05, alpha=0.1))
    rel_n = compute_plan(model, stats, EditSettings(rho_attn=0, rho_mlp=0.05, alpha=0.1, magnitude="relative"))
    read = torch.einsum("lnm,lm->ln", model.bridge.W_out.detach().float(), paper_n.v_hat_mlp)
    torch.testing.assert_close(rel_n.neuron_lambda, paper_n.neuron_lambda * read.abs(), rtol=1e-5, atol=1e-7)
    assert relative.n_edited == paper.n_edited and relative.n_edited["heads"] > 0  # same components


def _reparametrise(model, c: float) -> None:
    """Heads 0 and 1 of layer 0 (one key/value group): their values / c, their W_O rows * c."""
    attn = model.hf_model.model.layers[0].self_attn
    d_head = model.card.d_head
    with torch.no_grad():
        attn.v_proj.weight[:d_head] /= c  # kv head 0 serves query heads 0 and 1
        attn.o_proj.weight[:, : 2 * d_head] *= c


@pytest.mark.parametrize("magnitude, invariant", [("relative", True), ("paper", False)])
def test_relative_lambda_is_invariant_to_reparametrising_a_head(
    tiny_dirs: dict[str, Path], magnitude: str, invariant: bool
) -> None:
    settings = EditSettings(rho_attn=0.05, alpha=0.1, magnitude=magnitude)  # type: ignore[arg-type]
    ids = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (2, 9))
    outputs = []
    for c in (1.0, 8.0):
        model = load_model(str(tiny_dirs["llama"]), progress=False)
        with torch.no_grad():
            plain = model.bridge(ids)
        _reparametrise(model, c)
        with torch.no_grad():
            torch.testing.assert_close(model.bridge(ids), plain, rtol=1e-4, atol=1e-5)  # the same model
        plan = compute_plan(model, collect_statistics(model, tiny_set(5), progress=False), settings)
        assert bool(plan.edited_heads[0, :2].any()), "the reparametrised heads must be edited for this test"
        with edited(model, plan), torch.no_grad():
            outputs.append(model.bridge(ids))
    same = torch.allclose(outputs[0], outputs[1], rtol=1e-3, atol=1e-4)
    assert same == invariant, (outputs[0] - outputs[1]).abs().max()


def test_relative_magnitude_needs_the_methods_direction_for_heads() -> None:
    with pytest.raises(EditSettingsError, match="direction='gradient'"):
        EditSettings(direction="mu", magnitude="relative")
    EditSettings(direction="mu", magnitude="relative", rho_attn=0, rho_mlp=0.3)  # neurons alone: fine
    with pytest.raises(EditSettingsError, match="magnitude must be"):
        EditSettings(magnitude="huge")  # type: ignore[arg-type]
    assert edit_rule.relative_scale_heads(torch.ones(1, 1, 2, 3), torch.tensor([[1.0, 0, 0]])).item() == pytest.approx(
        2**0.5
    )
