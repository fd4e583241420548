"""Figures carry the plan's numbers where they claim to: checked against the plan's tensors
and independent recomputation, on a synthetic plan with known values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from s2e_lens.core.plan import compute_plan_from_tensors
from s2e_lens.core.settings import EditSettings
from s2e_lens.reporting import figures


def make_plan(
    seed: int,
    L: int = 4,
    H: int = 3,
    d_head: int = 5,
    d_model: int = 8,
    d_mlp: int = 20,
    rho: float = 0.05,
    name: str = "toy",
    behaviour: str = "safety",
):
    g = torch.Generator().manual_seed(seed)
    W_O = torch.randn(L, H, d_head, d_model, generator=g, dtype=torch.float64)
    W_out = torch.randn(L, d_mlp, d_model, generator=g, dtype=torch.float64)
    return compute_plan_from_tensors(
        W_O,
        W_out,
        torch.randn(L, d_model, generator=g, dtype=torch.float64),
        torch.randn(L, d_model, generator=g, dtype=torch.float64),
        torch.randn(L, H, d_head, generator=g, dtype=torch.float64).abs(),
        torch.randn(L, d_mlp, generator=g, dtype=torch.float64).abs(),
        EditSettings(rho_attn=rho, rho_mlp=rho, alpha=0.5),
        model={"name": name, "fingerprint": name},
        provenance={"behaviour": behaviour},
    )


@pytest.fixture()
def plan():
    p = make_plan(0)
    assert p.n_edited["heads"] > 0 and p.n_edited["neurons"] > 0
    return p


def test_lambda_heatmap_shows_lambda_at_real_indices_centred_at_zero(plan) -> None:
    trace = figures.lambda_heatmap(plan).data[0]
    assert np.array_equal(np.asarray(trace.z), plan.head_lambda.numpy())
    assert trace.zmid == 0 and trace.zmin == -trace.zmax == -float(plan.head_lambda.abs().max())
    custom = np.asarray(trace.customdata)  # head, g, lambda, ||k||
    assert np.array_equal(custom[..., 0], np.tile(np.arange(3), (4, 1)))
    assert np.allclose(custom[..., 1], plan.head_g.numpy()) and np.allclose(custom[..., 3], plan.head_k_norm.numpy())
    assert trace.colorscale[0][1] != trace.colorscale[-1][1]  # diverging
    title = figures.lambda_heatmap(plan).layout.title.text
    assert "toy" in title and "safety" in title and "ρ_attn=0.05" in title


def test_sorted_view_sorts_each_layer_and_keeps_head_identity(plan) -> None:
    trace = figures.lambda_heatmap(plan, sorted_view=True).data[0]
    z, custom = np.asarray(trace.z), np.asarray(trace.customdata)
    assert (np.diff(z, axis=1) <= 0).all()
    for layer in range(4):
        for rank in range(3):
            head = int(custom[layer, rank, 0])
            assert z[layer, rank] == float(plan.head_lambda[layer, head])


def test_importance_map_is_g(plan) -> None:
    assert np.array_equal(np.asarray(figures.lambda_heatmap(plan, value="g").data[0].z), plan.head_g.numpy())
    with pytest.raises(ValueError, match="lambda' or 'g'"):
        figures.lambda_heatmap(plan, value="nope")


def test_neuron_topk_picks_the_largest_magnitudes(plan) -> None:
    k = 4
    trace = figures.neuron_topk(plan, k).data[0]
    z, idx = np.asarray(trace.z), np.asarray(trace.customdata)[..., 0].astype(int)
    lam = (plan.neuron_lambda * plan.neuron_k.abs()).numpy()
    for layer in range(4):
        expected = sorted(np.abs(lam[layer]))[-k:]
        assert sorted(np.abs(z[layer])) == pytest.approx(expected)
        assert np.array_equal(z[layer], lam[layer, idx[layer]])
        assert (np.diff(z[layer]) <= 0).all()


def test_neuron_bins_conserve_the_layer_sum(plan) -> None:
    trace = figures.neuron_bins(plan, bins=6).data[0]
    sums = np.asarray(trace.z)
    lam = (plan.neuron_lambda * plan.neuron_k.abs()).numpy()
    assert sums.shape == (4, 6) and np.allclose(sums.sum(1), lam.sum(1))
    counts = np.asarray(trace.customdata)[..., 1].astype(int)
    assert np.array_equal(counts.sum(1), (lam != 0).sum(1))


def test_edit_mass_is_the_frobenius_norm_of_the_update(plan) -> None:
    attn, mlp = figures.edit_mass(plan).data
    dW_O, dW_out = plan.delta_W_O(), plan.delta_W_out()
    assert np.allclose(attn.y, dW_O.flatten(1).norm(dim=-1).numpy())
    assert np.allclose(mlp.y, dW_out.flatten(1).norm(dim=-1).numpy())


def test_frontier_draws_every_kind_and_the_steering_curve_in_gamma_order() -> None:
    frame = pd.DataFrame(
        [
            {"kind": "none", "label": "unedited", "attribute": 0.1, "utility": 0.5, "gamma": math.nan},
            {"kind": "steer", "label": "g2", "attribute": 0.9, "utility": 0.2, "gamma": 2.0},
            {"kind": "steer", "label": "g1", "attribute": 0.5, "utility": 0.4, "gamma": 1.0},
            {"kind": "edit", "label": "e1", "attribute": 0.4, "utility": 0.5, "gamma": math.nan},
            {"kind": "edit", "label": "e2", "attribute": 0.3, "utility": 0.45, "gamma": math.nan},  # dominated
            {"kind": "edit", "label": "e3", "attribute": 0.6, "utility": 0.3, "gamma": math.nan},
        ]
    )
    fig = figures.frontier(frame)
    curve = fig.data[0]
    assert list(curve.y) == [0.1, 0.5, 0.9]  # unedited, then gamma 1, 2
    names = {t.name for t in fig.data}
    assert {"unedited", "activation steering (γ)", "Steer2Edit", "Steer2Edit Pareto frontier"} <= names
    front = next(t for t in fig.data if t.name == "Steer2Edit Pareto frontier")
    assert list(front.x) == [0.3, 0.5] and list(front.y) == [0.6, 0.4]  # e2 is dominated by e1
    with pytest.raises(ValueError, match="need columns"):
        figures.frontier(frame, utility="kl")


def test_frontier_sets_degenerate_interventions_apart() -> None:
    frame = pd.DataFrame(
        [
            {
                "kind": "none",
                "label": "unedited",
                "attribute": 0.1,
                "utility": 0.5,
                "gamma": math.nan,
                "degenerate_flag": False,
            },
            {"kind": "steer", "label": "g1", "attribute": 0.5, "utility": 0.4, "gamma": 1.0, "degenerate_flag": False},
            {"kind": "steer", "label": "g4", "attribute": 1.0, "utility": 0.1, "gamma": 4.0, "degenerate_flag": True},
            {
                "kind": "edit",
                "label": "e1",
                "attribute": 0.4,
                "utility": 0.5,
                "gamma": math.nan,
                "degenerate_flag": False,
            },
            {
                "kind": "edit",
                "label": "e9",
                "attribute": 0.9,
                "utility": 0.45,
                "gamma": math.nan,
                "degenerate_flag": True,
            },
        ]
    )
    fig = figures.frontier(frame)
    assert list(fig.data[0].y) == [0.1, 0.5]  # the steering curve stops before the broken gamma
    flagged = next(t for t in fig.data if t.name == "degenerate output (excluded)")
    assert sorted(flagged.text) == ["e9", "g4"]
    edits = next(t for t in fig.data if t.name == "Steer2Edit")
    assert list(edits.text) == ["e1"]


def test_overlap_matrix_against_hand_counts() -> None:
    a, b = make_plan(1), make_plan(2, rho=0.02)
    table = figures.overlap_matrix({"a": a, "b": b}).set_index(["a", "b"])
    ea, eb = a.edited_heads.numpy(), b.edited_heads.numpy()
    assert table.loc[("a", "b"), "heads_jaccard"] == pytest.approx((ea & eb).sum() / (ea | eb).sum())
    assert table.loc[("a", "b"), "head_lambda_corr"] == pytest.approx(
        np.corrcoef(a.head_lambda.numpy().ravel(), b.head_lambda.numpy().ravel())[0, 1]
    )
    assert table.loc[("a", "a"), "heads_jaccard"] == 1.0
    other_shape = make_plan(3, L=5)
    with pytest.raises(ValueError, match="different model shapes"):
        figures.overlap_matrix({"a": a, "c": other_shape})


def test_compare_models_normalises_depth_and_mass() -> None:
    plans = {"deep": make_plan(4, L=6, name="deep"), "shallow": make_plan(5, L=3, name="shallow")}
    fig = figures.compare_models(plans, bins=3)
    for name, plan in plans.items():
        bars = [t for t in fig.data if t.legendgroup == name]
        heads = sum(np.abs(t.y).sum() for t in bars if t.yaxis == "y")
        assert heads == pytest.approx(1.0)  # shares of the model's head Σ|λ|
        # depth bin of a layer: (l + 0.5) / L; the deep model's first two layers share bin 0
        lam = plan.head_lambda
        first = lam[: plan.n_layers // 3].clamp(min=0).sum() / lam.abs().sum()
        reinforce = next(t for t in bars if t.yaxis == "y" and t.showlegend)
        assert reinforce.y[0] == pytest.approx(float(first))


def test_static_export_or_a_clear_error(tmp_path) -> None:
    fig = figures.edit_mass(make_plan(6))
    html = figures.save_figure(fig, tmp_path / "m.html").read_text()
    assert "plotly" in html and 'src="http' not in html
    with pytest.raises(ValueError, match="use .html, .png or .svg"):
        figures.save_figure(fig, tmp_path / "m.gif")
    if figures.can_export_static():
        assert figures.save_figure(fig, tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        with pytest.raises(figures.StaticExportError, match="Chrome or Chromium"):
            figures.save_figure(fig, tmp_path / "m.png")
