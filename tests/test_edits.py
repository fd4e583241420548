"""The vectorised edit rule against plainly written per-head / per-neuron loops."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_set

from s2e_lens.core import edit_rule as edits
from s2e_lens.core.plan import EditPlan, PlanError, compute_plan_from_tensors
from s2e_lens.core.settings import EditSettings, EditSettingsError
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.planning import compute_plan, model_weights
from s2e_lens.models.loading import load_model


def lam_ref(g: float, rho: float, alpha: float) -> float:
    if rho <= 0:
        return 0.0
    return math.copysign(max(abs(g) - rho * alpha, 0.0), g) / (rho * (1 - alpha)) if g else 0.0


def loop_reference(W_O, W_out, v_attn, v_mlp, mu_z, mu_post, rho_attn, rho_mlp, alpha):
    """Per component, in float64 numpy, straight from the method's formulas."""
    W_O, W_out = W_O.double().numpy(), W_out.double().numpy()
    v_attn, v_mlp = v_attn.double().numpy(), v_mlp.double().numpy()
    mu_z, mu_post = mu_z.double().numpy(), mu_post.double().numpy()
    L, H = W_O.shape[:2]
    N = W_out.shape[1]
    g_h, lam_h, k_h = np.zeros((L, H)), np.zeros((L, H)), np.zeros(W_O.shape[:3])
    g_n, lam_n, k_n = np.zeros((L, N)), np.zeros((L, N)), np.zeros((L, N))
    for l in range(L):
        va = v_attn[l] / np.linalg.norm(v_attn[l])
        vm = v_mlp[l] / np.linalg.norm(v_mlp[l])
        for h in range(H):
            B = W_O[l, h].T  # [d_model, d_head]
            out = B @ mu_z[l, h]
            g_h[l, h] = out @ va / (np.linalg.norm(out) * np.linalg.norm(va))
            k = B.T @ va
            k_h[l, h] = k / np.linalg.norm(k)
            lam_h[l, h] = lam_ref(g_h[l, h], rho_attn, alpha)
        for n in range(N):
            w = W_out[l, n]
            out = w * mu_post[l, n]
            g_n[l, n] = out @ vm / (np.linalg.norm(out) * np.linalg.norm(vm))
            k_n[l, n] = np.sign(w @ vm)
            lam_n[l, n] = lam_ref(g_n[l, n], rho_mlp, alpha)
    return g_h, lam_h, k_h, g_n, lam_n, k_n


def check_against_loop(W_O, W_out, stats, settings: EditSettings) -> EditPlan:
    v_attn = stats.positive.attn_out - stats.negative.attn_out
    v_mlp = stats.positive.mlp_out - stats.negative.mlp_out
    plan = compute_plan_from_tensors(W_O, W_out, v_attn, v_mlp, stats.mu_z, stats.mu_post, settings)
    g_h, lam_h, k_h, g_n, lam_n, k_n = loop_reference(
        W_O, W_out, v_attn, v_mlp, stats.mu_z, stats.mu_post, settings.rho_attn, settings.rho_mlp, settings.alpha
    )
    close = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(plan.head_g.numpy(), g_h, **close)
    np.testing.assert_allclose(plan.head_k.numpy(), k_h, **close)
    np.testing.assert_allclose(plan.head_lambda.numpy(), lam_h, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(plan.neuron_g.numpy(), g_n, **close)
    np.testing.assert_array_equal(plan.neuron_k.numpy(), k_n)
    np.testing.assert_allclose(plan.neuron_lambda.numpy(), lam_n, rtol=1e-4, atol=1e-4)
    return plan


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_vectorised_plan_equals_loop_on_tiny_models(family: str, tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs[family]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    W_O, W_out = model_weights(model)
    plan = check_against_loop(W_O, W_out, stats, EditSettings(rho_attn=0.2, rho_mlp=0.3, alpha=0.5))
    assert 0 < plan.n_edited["heads"] < plan.head_g.numel()  # sparse, not empty
    assert 0 < plan.n_edited["neurons"] < plan.neuron_g.numel()


@pytest.mark.slow
def test_vectorised_plan_equals_loop_on_the_default_model(default_model, default_stats) -> None:
    W_O, W_out = model_weights(default_model)
    plan = check_against_loop(W_O, W_out, default_stats, EditSettings(rho_attn=0.3, rho_mlp=0.6, alpha=0.8))
    assert plan.head_g.shape == (30, 9) and plan.neuron_g.shape == (30, 1536)
    assert plan.n_edited["heads"] > 0 and plan.n_edited["neurons"] > 0


def test_lambda_is_the_minimiser_of_the_elastic_net_objective() -> None:
    g = torch.linspace(-1, 1, 41, dtype=torch.float64)
    grid = torch.linspace(-40, 40, 160001, dtype=torch.float64)
    for rho, alpha in ((0.3, 0.8), (0.1, 0.0), (0.5, 0.5)):
        lam = edits.elastic_net_lambda(g, rho, alpha)
        objective = -g[:, None] * grid + rho * (alpha * grid.abs() + (1 - alpha) / 2 * grid**2)
        best = grid[objective.argmin(dim=1)]
        torch.testing.assert_close(lam, best, atol=1e-3, rtol=0)
    assert torch.equal(edits.elastic_net_lambda(g, 0.0, 0.5), torch.zeros_like(g))
    assert torch.equal(edits.elastic_net_lambda(g, -1.0, 0.5), torch.zeros_like(g))


def test_top_k_keeps_the_k_largest_and_shrinks() -> None:
    g = torch.tensor([[0.1, -0.9, 0.5], [0.7, 0.0, -0.2]])
    lam = edits.top_k_lambda(g, 2, rho=0.5, alpha=0.5)
    assert torch.allclose(lam, torch.tensor([[0.0, -0.9 / 0.25, 0.0], [0.7 / 0.25, 0.0, 0.0]]))


def test_direction_variants() -> None:
    torch.manual_seed(0)
    W_O = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    mu = torch.randn(2, 3, 4, dtype=torch.float64)
    v_hat = edits.unit(torch.randn(2, 6, dtype=torch.float64))
    k_mu = edits.head_directions(W_O, v_hat, mu, "mu")
    torch.testing.assert_close(k_mu, mu / mu.norm(dim=-1, keepdim=True))
    k_svd = edits.head_directions(W_O, v_hat, mu, "svd")
    for l in range(2):
        for h in range(3):
            _, _, Vt = np.linalg.svd(W_O[l, h].T.numpy())  # B = U S V^T; top right singular vector
            top = torch.from_numpy(Vt[0])
            assert torch.allclose(k_svd[l, h].abs(), top.abs(), atol=1e-10)
            assert float(k_svd[l, h] @ (W_O[l, h] @ v_hat[l])) >= 0  # sign aligned with B^T v_hat
    g_dot = edits.head_importance(W_O, mu, v_hat, "dot")
    torch.testing.assert_close(g_dot, torch.einsum("lhd,lhdm,lm->lh", mu, W_O, v_hat))


def test_orthogonalisation_is_projection_out_of_r() -> None:
    torch.manual_seed(1)
    W_O = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    W_out = torch.randn(2, 5, 6, dtype=torch.float64)
    r_hat = edits.unit(torch.randn(2, 6, dtype=torch.float64))
    lam, k = edits.orthogonalisation_heads(W_O, r_hat)
    edited = W_O + edits.head_deltas(lam, k, r_hat)
    P = torch.eye(6, dtype=torch.float64)[None] - torch.einsum("lm,ln->lmn", r_hat, r_hat)
    torch.testing.assert_close(edited, torch.einsum("lhdm,lmn->lhdn", W_O, P))
    lam_n, k_n = edits.orthogonalisation_neurons(W_out, r_hat)
    edited_n = W_out + edits.neuron_deltas(lam_n, k_n, r_hat)
    torch.testing.assert_close(edited_n, torch.einsum("lnm,lmk->lnk", W_out, P))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alpha=1.0), r"alpha must be in \[0, 1\)"),
        (dict(alpha=-0.1), r"alpha must be in \[0, 1\)"),
        (dict(rho_attn=float("nan")), "rho_attn must be a finite number"),
        (dict(rho_mlp=float("inf")), "rho_mlp must be a finite number"),
        (dict(direction="up"), "direction must be"),
        (dict(top_k_attn=-1), "top_k"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(EditSettingsError, match=message):
        EditSettings(**kwargs)


def test_zero_norm_steering_vector_is_refused(tiny_dirs: dict[str, Path]) -> None:
    from s2e_lens.core.contrastive import ContrastiveSet

    model = load_model(str(tiny_dirs["llama"]), progress=False)
    same = [("abc", "xyz"), ("de", "pq")]
    stats = collect_statistics(model, ContrastiveSet.from_pairs(same, same), progress=False)
    with pytest.raises(PlanError, match=r"v_attn has zero norm at layer\(s\) \[0, 1\]"):
        compute_plan(model, stats, EditSettings(rho_attn=0.2))
    stats.positive.attn_out[0, 0] = float("nan")
    with pytest.raises(PlanError, match="NaN"):
        compute_plan(model, stats, EditSettings(rho_attn=0.2))
