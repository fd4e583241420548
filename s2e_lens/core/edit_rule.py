"""Steer2Edit's edit rule as pure tensor functions, vectorised over all heads and neurons
(its settings: :mod:`s2e_lens.core.settings`).

Notation (TransformerLens): ``W_O[l, h]`` is ``[d_head, d_model]`` and the paper's
``B = W_O[l, h].T``; ``W_out[l, n]`` is ``[d_model]``. ``v_hat[l]`` is the unit steering
vector of the block type, shared by all components of layer l; ``mu`` is the mean input
(average of the positive and negative means).

Head:   g = cos(v_hat, B mu);  k_hat = B^T v_hat / ||B^T v_hat||;  W_O[l, h] += lam k_hat v_hat^T
Neuron: g = cos(v_hat, w mu);  k = sign(w . v_hat);              W_out[l, n] += lam k v_hat
lam = sign(g) max(|g| - rho alpha, 0) / (rho (1 - alpha))   (rho <= 0 switches the block off)
"""

from __future__ import annotations

import torch
from jaxtyping import Float

from s2e_lens.core.settings import Direction, EditSettings, Importance


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where den == 0 (a component with no output has no direction)."""
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def unit(v: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "... d"]:
    return _safe_div(v, v.norm(dim=-1, keepdim=True))


# ------------------------------------------------------------------------------------ heads


def head_outputs(
    W_O: Float[torch.Tensor, "layer head d_head d_model"], mu_z: Float[torch.Tensor, "layer head d_head"]
) -> Float[torch.Tensor, "layer head d_model"]:
    """``B mu`` for every head: the head's output at its mean input."""
    return torch.einsum("lhd,lhdm->lhm", mu_z, W_O)


def head_importance(
    W_O: Float[torch.Tensor, "layer head d_head d_model"],
    mu_z: Float[torch.Tensor, "layer head d_head"],
    v_hat: Float[torch.Tensor, "layer d_model"],
    importance: Importance = "cosine",
) -> Float[torch.Tensor, "layer head"]:
    out = head_outputs(W_O, mu_z)
    dot = torch.einsum("lhm,lm->lh", out, v_hat)
    if importance == "dot":
        return dot
    return _safe_div(dot, out.norm(dim=-1) * v_hat.norm(dim=-1)[:, None])


def head_read_vectors(
    W_O: Float[torch.Tensor, "layer head d_head d_model"],
    v_hat: Float[torch.Tensor, "layer d_model"] | Float[torch.Tensor, "layer head d_model"],
) -> Float[torch.Tensor, "layer head d_head"]:
    """``B^T v_hat``: the input direction that moves the head's output most along v_hat
    (``v_hat`` per layer, or per head)."""
    if v_hat.ndim == 3:
        return torch.einsum("lhdm,lhm->lhd", W_O, v_hat)
    return torch.einsum("lhdm,lm->lhd", W_O, v_hat)


def head_directions(
    W_O: Float[torch.Tensor, "layer head d_head d_model"],
    v_hat: Float[torch.Tensor, "layer d_model"] | Float[torch.Tensor, "layer head d_model"],
    mu_z: Float[torch.Tensor, "layer head d_head"],
    direction: Direction = "gradient",
) -> Float[torch.Tensor, "layer head d_head"]:
    """Unit ``k_hat`` per head."""
    grad = head_read_vectors(W_O, v_hat)
    if direction == "gradient":
        return unit(grad)
    if direction == "mu":
        return unit(mu_z)
    # svd: top right singular vector of B = top left singular vector of W_O[l, h]
    U, _, _ = torch.linalg.svd(W_O, full_matrices=False)
    k = U[..., :, 0]
    sign = torch.sign(torch.einsum("lhd,lhd->lh", k, grad))
    return k * torch.where(sign == 0, torch.ones_like(sign), sign)[..., None]


# ---------------------------------------------------------------------------------- neurons


def neuron_read(
    W_out: Float[torch.Tensor, "layer d_mlp d_model"], v_hat: Float[torch.Tensor, "layer d_model"]
) -> Float[torch.Tensor, "layer d_mlp"]:
    """``w . v_hat`` for every neuron (the d_in = 1 case of ``B^T v_hat``)."""
    return torch.einsum("lnm,lm->ln", W_out, v_hat)


def neuron_importance(
    W_out: Float[torch.Tensor, "layer d_mlp d_model"],
    mu_post: Float[torch.Tensor, "layer d_mlp"],
    v_hat: Float[torch.Tensor, "layer d_model"],
    importance: Importance = "cosine",
) -> Float[torch.Tensor, "layer d_mlp"]:
    read = neuron_read(W_out, v_hat)
    if importance == "dot":
        return mu_post * read
    # cos(v_hat, w mu) = mu (w . v_hat) / (|mu| ||w|| ||v_hat||)
    den = mu_post.abs() * W_out.norm(dim=-1) * v_hat.norm(dim=-1)[:, None]
    return _safe_div(mu_post * read, den)


def neuron_directions(
    W_out: Float[torch.Tensor, "layer d_mlp d_model"],
    v_hat: Float[torch.Tensor, "layer d_model"],
    mu_post: Float[torch.Tensor, "layer d_mlp"],
    direction: Direction = "gradient",
) -> Float[torch.Tensor, "layer d_mlp"]:
    """``k`` in {-1, 0, +1} per neuron (a unit vector in one dimension).

    ``gradient`` and ``svd`` coincide for d_in = 1 (the sign of w . v_hat); ``mu`` is the
    sign of the mean activation.
    """
    if direction == "mu":
        return torch.sign(mu_post)
    return torch.sign(neuron_read(W_out, v_hat))


# ----------------------------------------------------------------------------------- lambda


def elastic_net_lambda(g: torch.Tensor, rho: float, alpha: float) -> torch.Tensor:
    """Closed-form minimiser of ``-g lam + rho (alpha |lam| + (1 - alpha) / 2 lam^2)``: a soft
    threshold at ``rho alpha`` (sparsity), then a shrink by ``rho (1 - alpha)`` (budget).

    >>> elastic_net_lambda(torch.tensor([0.9, -0.5, 0.1]), rho=0.5, alpha=0.4).tolist()
    [2.3333332538604736, -1.0, 0.0]
    """
    if rho <= 0:
        return torch.zeros_like(g)
    return torch.sign(g) * torch.clamp(g.abs() - rho * alpha, min=0.0) / (rho * (1.0 - alpha))


def top_k_lambda(g: torch.Tensor, k: int, rho: float, alpha: float) -> torch.Tensor:
    """l0 budget: the ``k`` largest |g| (over all layers) get ``g / (rho (1 - alpha))``."""
    if rho <= 0 or k <= 0:
        return torch.zeros_like(g)
    flat = g.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(min(k, flat.numel())).indices] = True
    return torch.where(keep, flat / (rho * (1.0 - alpha)), torch.zeros_like(flat)).view_as(g)


def lambdas(g: torch.Tensor, rho: float, settings: EditSettings, top_k: int) -> torch.Tensor:
    if settings.selection == "top_k":
        return top_k_lambda(g, top_k, rho, settings.alpha)
    return elastic_net_lambda(g, rho, settings.alpha)


# ------------------------------------------------------- component-level vectors (beyond)


def component_heads(
    W_O: Float[torch.Tensor, "layer head d_head d_model"],
    dz: Float[torch.Tensor, "layer head d_head"],
    v: Float[torch.Tensor, "layer d_model"],
) -> tuple[Float[torch.Tensor, "layer head d_model"], Float[torch.Tensor, "layer head"]]:
    """Each head's own write direction and importance from its own contrast.

    ``c_h = B_h dz_h`` (``dz`` = positive minus negative mean input) is the head's
    positive-minus-negative output; the attention block's vector is ``v = sum_h c_h`` (the
    bias cancels), so ``g_h = c_h . v_hat / ||v||`` is the head's share of it (the shares of a
    layer sum to 1). Returns ``u_h = c_h / ||c_h||`` and ``g_h``.
    """
    c = head_outputs(W_O, dz)
    v_norm = v.norm(dim=-1)
    share = _safe_div(torch.einsum("lhm,lm->lh", c, v), (v_norm * v_norm)[:, None])
    return unit(c), share


def component_neurons(
    W_out: Float[torch.Tensor, "layer d_mlp d_model"],
    dpost: Float[torch.Tensor, "layer d_mlp"],
    v: Float[torch.Tensor, "layer d_model"],
) -> tuple[Float[torch.Tensor, "layer d_mlp"], Float[torch.Tensor, "layer d_mlp"]]:
    """The neuron case: ``c_n = dpost_n w_n``, so its unit direction is ``sign(dpost_n) w_hat_n``
    (a neuron can only write along its own weight row); ``g_n = dpost_n (w_n . v_hat) / ||v||``.
    Returns ``sign(dpost_n)`` (the direction's sign along ``w_hat_n``) and ``g_n``."""
    v_norm = v.norm(dim=-1)
    share = _safe_div(dpost * neuron_read(W_out, v), (v_norm * v_norm)[:, None])
    return torch.sign(dpost), share


# ------------------------------------------------------------------- relative magnitude


def relative_scale_heads(
    W_O: Float[torch.Tensor, "layer head d_head d_model"],
    v_hat: Float[torch.Tensor, "layer d_model"] | Float[torch.Tensor, "layer head d_model"],
) -> Float[torch.Tensor, "layer head"]:
    """What one unit of ``magnitude='relative'`` lambda is in the paper's units, per head.

    An edit ``lam k_hat v_hat^T`` adds ``lam (z . k_hat)`` along v_hat, whose spread over the
    probe positions is ``|lam| s`` with ``s = std(z . k_hat)``. The head's own output along
    v_hat is ``z . u`` with ``u = B^T v_hat``; its spread is ``sigma = std(z . u)``. Reading
    lambda in units of that natural variation, ``lam = lam_rel sigma / s``, makes ``lam_rel = 1``
    add as much variation along v_hat as the head already has. For the method's direction
    ``k_hat = u / ||u||``, ``z . u = ||u|| (z . k_hat)``, so ``sigma / s = ||u||`` whatever the
    inputs' distribution: no second moments are needed. The rescaling ``W_O -> c W_O``,
    ``z -> z / c`` (same model) multiplies this scale by c and leaves the edit's effect unchanged.
    """
    return head_read_vectors(W_O, v_hat).norm(dim=-1)


def relative_scale_neurons(
    W_out: Float[torch.Tensor, "layer d_mlp d_model"], v_hat: Float[torch.Tensor, "layer d_model"]
) -> Float[torch.Tensor, "layer d_mlp"]:
    """The neuron case: the edit adds ``lam k a`` along v_hat (spread ``|lam| std(a)``), the
    neuron itself ``a (w . v_hat)`` (spread ``|w . v_hat| std(a)``): the scale is ``|w . v_hat|``."""
    return neuron_read(W_out, v_hat).abs()


# ------------------------------------------------------------------------------- the update


def head_deltas(
    lam: Float[torch.Tensor, "layer head"],
    k_hat: Float[torch.Tensor, "layer head d_head"],
    v_hat: Float[torch.Tensor, "layer d_model"] | Float[torch.Tensor, "layer head d_model"],
) -> Float[torch.Tensor, "layer head d_head d_model"]:
    """``Delta W_O[l, h] = lam k_hat v_hat^T`` (``v_hat`` per layer, or per head)."""
    if v_hat.ndim == 3:
        return torch.einsum("lh,lhd,lhm->lhdm", lam, k_hat, v_hat)
    return torch.einsum("lh,lhd,lm->lhdm", lam, k_hat, v_hat)


def neuron_deltas(
    lam: Float[torch.Tensor, "layer d_mlp"],
    k: Float[torch.Tensor, "layer d_mlp"],
    v_hat: Float[torch.Tensor, "layer d_model"],
) -> Float[torch.Tensor, "layer d_mlp d_model"]:
    """``Delta W_out[l, n] = lam k v_hat``."""
    return torch.einsum("ln,lm->lnm", lam * k, v_hat)


# ----------------------------------------------------------------- orthogonalisation (dense)


def orthogonalisation_heads(
    W_O: Float[torch.Tensor, "layer head d_head d_model"], r_hat: Float[torch.Tensor, "layer d_model"]
) -> tuple[Float[torch.Tensor, "layer head"], Float[torch.Tensor, "layer head d_head"]]:
    """Weight orthogonalisation against ``r_hat`` as the rank-1 form: ``lam = -||B^T r_hat||``.

    Then ``B + lam r_hat k_hat^T = (I - r_hat r_hat^T) B``: the head can no longer write r_hat.
    """
    read = head_read_vectors(W_O, r_hat)
    return -read.norm(dim=-1), unit(read)


def orthogonalisation_neurons(
    W_out: Float[torch.Tensor, "layer d_mlp d_model"], r_hat: Float[torch.Tensor, "layer d_model"]
) -> tuple[Float[torch.Tensor, "layer d_mlp"], Float[torch.Tensor, "layer d_mlp"]]:
    read = neuron_read(W_out, r_hat)
    return -read.abs(), torch.sign(read)
