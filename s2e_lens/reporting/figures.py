"""Plotly figures of edit plans, sweeps and comparisons.

Every function takes plans / data frames and returns a ``plotly.graph_objects.Figure``
(interactive in notebooks; ``save_figure`` writes HTML, PNG or SVG). Colour convention for
lambda and g: diverging, centred at 0, red = reinforces the behaviour, blue = suppresses it.
Titles name the model, the behaviour and the settings, read from the plan itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from s2e_lens.core.comparison import pareto_frontier, points
from s2e_lens.core.plan import EditPlan
from s2e_lens.errors import InvalidInputError, S2EError

DIVERGING = "RdBu_r"  # low = blue (suppresses), high = red (reinforces)
FONT = dict(family="Helvetica, Arial, sans-serif", size=13)


def plan_title(plan: EditPlan, what: str) -> str:
    """``what`` — model · behaviour · settings, from the plan's own record."""
    model = plan.model.get("name", "model")
    behaviour = plan.provenance.get("behaviour", "custom")
    s = plan.settings
    if plan.variant == "orthogonalisation":
        settings = "weight orthogonalisation"
    else:
        settings = f"ρ_attn={s.rho_attn:g}, ρ_mlp={s.rho_mlp:g}, α={s.alpha:g}"
    n = plan.n_edited
    return (
        f"{what}<br><sup>{model} · {behaviour} · {settings}</sup>"
        f"<br><sup>{n['heads']} heads, {n['neurons']} neurons edited</sup>"
    )


def _symmetric(values: np.ndarray) -> float:
    top = float(np.nanmax(np.abs(values))) if values.size else 0.0
    return top if top > 0 else 1.0


def _layout(fig: go.Figure, title: str, *, height: int | None = None, width: int | None = None) -> go.Figure:
    top = 56 + 24 * title.count("<br>")  # room for every subtitle line
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left"),
        font=FONT,
        template="plotly_white",
        margin=dict(l=70, r=30, t=top, b=60),
        height=height,
        width=width,
    )
    return fig


# ---------------------------------------------------------------------- heads


def lambda_heatmap(plan: EditPlan, *, sorted_view: bool = False, value: str = "lambda") -> go.Figure:
    """Layer x head heatmap of lambda (or ``value="g"``: the importance before thresholding).

    Real head indices on the x axis; hover shows g, lambda and ||B^T v_hat|| of each head.
    ``sorted_view`` sorts each layer's heads by lambda (the paper's view): the x axis is then a
    rank, and hover still names the head."""
    if value not in ("lambda", "g"):
        raise InvalidInputError(f"value must be 'lambda' or 'g', got {value!r}")
    lam = plan.head_lambda.numpy()
    g = plan.head_g.numpy()
    knorm = plan.head_k_norm.numpy()
    z = lam if value == "lambda" else g
    L, H = z.shape
    heads = np.tile(np.arange(H), (L, 1))
    if sorted_view:
        order = np.argsort(-z, axis=1, kind="stable")
        take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
        z, lam, g, knorm, heads = take(z), take(lam), take(g), take(knorm), take(heads)
    custom = np.stack([heads, g, lam, knorm], axis=-1)
    bound = _symmetric(z)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(H)),
            y=list(range(L)),
            customdata=custom,
            colorscale=DIVERGING,
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar=dict(title="λ" if value == "lambda" else "g"),
            hovertemplate=(
                "layer %{y} · head %{customdata[0]}<br>g = %{customdata[1]:.3f}"
                "<br>λ = %{customdata[2]:.3f}<br>‖Bᵀv̂‖ = %{customdata[3]:.3f}<extra></extra>"
            ),
            xgap=1,
            ygap=1,
        )
    )
    what = "Attention-head λ" if value == "lambda" else "Attention-head importance g (before thresholding)"
    fig.update_xaxes(
        title="head rank in layer (sorted by value)" if sorted_view else "head", dtick=1 if H <= 32 else None
    )
    fig.update_yaxes(title="layer", autorange="reversed", dtick=max(1, L // 15))
    return _layout(
        fig,
        plan_title(plan, what + (" — sorted per layer" if sorted_view else "")),
        height=max(420, 22 * L + 140),
        width=max(520, 38 * H + 220),
    )


# -------------------------------------------------------------------- neurons


def neuron_topk(plan: EditPlan, k: int = 64, *, value: str = "lambda") -> go.Figure:
    """Layer x rank: each layer's ``k`` neurons with the largest |value| (lambda or g), sorted
    from the most reinforced to the most suppressed (the paper's view). Hover names the neuron."""
    if value not in ("lambda", "g"):
        raise InvalidInputError(f"value must be 'lambda' or 'g', got {value!r}")
    src = (plan.neuron_lambda_applied if value == "lambda" else plan.neuron_g).numpy()
    g = plan.neuron_g.numpy()
    lam = plan.neuron_lambda.numpy()
    L, N = src.shape
    k = min(k, N)
    top = np.argsort(-np.abs(src), axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(src, top, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # reinforcing left, suppressing right
    idx = np.take_along_axis(top, order, axis=1)
    z = np.take_along_axis(src, idx, axis=1)
    custom = np.stack([idx, np.take_along_axis(g, idx, 1), np.take_along_axis(lam, idx, 1)], axis=-1)
    bound = _symmetric(z)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(k)),
            y=list(range(L)),
            customdata=custom,
            colorscale=DIVERGING,
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar=dict(title="λ" if value == "lambda" else "g"),
            hovertemplate="layer %{y} · neuron %{customdata[0]}<br>g = %{customdata[1]:.3f}"
            "<br>λ = %{customdata[2]:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title=f"top-{k} neurons of the layer by |{value}|, sorted")
    fig.update_yaxes(title="layer", autorange="reversed", dtick=max(1, L // 15))
    what = f"MLP neuron {'λ' if value == 'lambda' else 'importance g'}: top {k} per layer"
    return _layout(fig, plan_title(plan, what), height=max(420, 22 * L + 140), width=900)


def neuron_bins(plan: EditPlan, bins: int = 64) -> go.Figure:
    """Layer x neuron-index bins: the summed lambda of each bin (where in the layer the edits
    sit), with the number of edited neurons per bin on hover."""
    lam = plan.neuron_lambda_applied.numpy()
    L, N = lam.shape
    bins = min(bins, N)
    edges = np.linspace(0, N, bins + 1).round().astype(int)
    sums = np.stack([lam[:, a:b].sum(1) for a, b in zip(edges[:-1], edges[1:], strict=True)], axis=1)
    counts = np.stack([(lam[:, a:b] != 0).sum(1) for a, b in zip(edges[:-1], edges[1:], strict=True)], axis=1)
    labels = [f"{a}–{b - 1}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    custom = np.stack([np.tile(np.array(labels, dtype=object), (L, 1)), counts], axis=-1)
    bound = _symmetric(sums)
    fig = go.Figure(
        go.Heatmap(
            z=sums,
            x=list(range(bins)),
            y=list(range(L)),
            customdata=custom,
            colorscale=DIVERGING,
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar=dict(title="Σλ"),
            hovertemplate="layer %{y} · neurons %{customdata[0]}<br>Σλ = %{z:.3f}"
            "<br>edited: %{customdata[1]}<extra></extra>",
        )
    )
    fig.update_xaxes(title=f"neuron index bin ({N // bins} neurons per bin)")
    fig.update_yaxes(title="layer", autorange="reversed", dtick=max(1, L // 15))
    return _layout(
        fig, plan_title(plan, "MLP neuron λ by position in the layer"), height=max(420, 22 * L + 140), width=900
    )


def edit_mass(plan: EditPlan) -> go.Figure:
    """Per-layer bar of edit mass, ``||Delta W||_F``, in attention vs MLP."""
    norms = plan.edit_norms()
    attn, mlp = norms["attn"].numpy(), norms["mlp"].numpy()
    layers = list(range(plan.n_layers))
    fig = go.Figure(
        [
            go.Bar(
                x=layers,
                y=attn,
                name="attention (W_O)",
                marker_color="#d62728",
                hovertemplate="layer %{x}<br>‖ΔW_O‖ = %{y:.3f}<extra></extra>",
            ),
            go.Bar(
                x=layers,
                y=mlp,
                name="MLP (W_out)",
                marker_color="#1f77b4",
                hovertemplate="layer %{x}<br>‖ΔW_out‖ = %{y:.3f}<extra></extra>",
            ),
        ]
    )
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    fig.update_xaxes(title="layer", dtick=max(1, plan.n_layers // 15))
    fig.update_yaxes(title="‖ΔW‖_F (edit mass)")
    return _layout(fig, plan_title(plan, "Edit mass per layer: attention vs MLP"), height=420, width=900)


# --------------------------------------------------------------------- sweeps


KIND_STYLE = {  # drawn in this order: the unedited model last, on top
    "steer": dict(color="#7f7f7f", symbol="circle", size=9, name="activation steering (γ)"),
    "edit": dict(color="#d62728", symbol="diamond", size=11, name="Steer2Edit"),
    "orthogonalise": dict(color="#2ca02c", symbol="square", size=10, name="weight orthogonalisation"),
    "iti": dict(color="#9467bd", symbol="triangle-up", size=11, name="ITI-style top-K heads"),
    "none": dict(color="black", symbol="star", size=16, name="unedited"),
}


def frontier(
    results: pd.DataFrame,
    *,
    attribute: str = "attribute",
    utility: str = "utility",
    attribute_label: str | None = None,
    utility_label: str | None = None,
    title: str = "Attribute–utility trade-off",
) -> go.Figure:
    """The attribute–utility plane: the steering curve (in gamma order, from the unedited
    model), Steer2Edit points with their Pareto frontier, baselines and the unedited model,
    with 95% interval bars where the results carry ``<column>_low`` / ``<column>_high``.
    Interventions flagged ``degenerate_flag`` (mostly degenerate generations) are drawn apart
    as grey crosses and left out of the curve and the frontier."""
    if attribute not in results or utility not in results:
        raise InvalidInputError(f"results need columns {attribute!r} and {utility!r}; have {list(results.columns)}")
    fig = go.Figure()
    flagged = results[results["degenerate_flag"].astype(bool)] if "degenerate_flag" in results else results.iloc[:0]
    results = results.drop(flagged.index)
    base = results[results["kind"] == "none"]
    steer = results[results["kind"] == "steer"].sort_values("gamma") if "gamma" in results else results.iloc[:0]
    if not steer.empty:
        curve = pd.concat([base, steer])
        fig.add_trace(
            go.Scatter(
                x=curve[utility],
                y=curve[attribute],
                mode="lines",
                line=dict(color="#7f7f7f", dash="dot"),
                showlegend=False,
                hoverinfo="skip",
            )
        )
    for kind, style in KIND_STYLE.items():
        sub = results[results["kind"] == kind]
        if sub.empty:
            continue
        bars = {}  # 95% interval bars where the run recorded them
        for axis, column in (("error_y", attribute), ("error_x", utility)):
            if f"{column}_low" in sub and f"{column}_high" in sub and sub[f"{column}_low"].notna().all():
                bars[axis] = dict(
                    type="data",
                    symmetric=False,
                    array=sub[f"{column}_high"] - sub[column],
                    arrayminus=sub[column] - sub[f"{column}_low"],
                    thickness=1,
                    width=3,
                    color=style["color"],
                )
        fig.add_trace(
            go.Scatter(
                x=sub[utility],
                y=sub[attribute],
                mode="markers",
                **bars,
                name=style["name"],
                text=sub["label"],
                marker=dict(
                    color=style["color"], symbol=style["symbol"], size=style["size"], line=dict(width=1, color="white")
                ),
                hovertemplate="%{text}<br>"
                + (attribute_label or attribute)
                + " = %{y:.3f}<br>"
                + (utility_label or utility)
                + " = %{x:.3f}<extra></extra>",
            )
        )
    edits = results[results["kind"] == "edit"]
    if len(edits) > 1:
        pts = pareto_frontier(points(edits.assign(attribute=edits[attribute]), "edit", utility))
        pts = sorted(pts, key=lambda p: p.utility)
        fig.add_trace(
            go.Scatter(
                x=[p.utility for p in pts],
                y=[p.attribute for p in pts],
                mode="lines",
                line=dict(color="#d62728", width=1),
                name="Steer2Edit Pareto frontier",
                hoverinfo="skip",
            )
        )
    if not flagged.empty:
        fig.add_trace(
            go.Scatter(
                x=flagged[utility],
                y=flagged[attribute],
                mode="markers",
                name="degenerate output (excluded)",
                text=flagged["label"],
                marker=dict(color="#9e9e9e", symbol="x", size=10),
                hovertemplate="%{text}<br>generations mostly degenerate<extra></extra>",
            )
        )
    fig.update_xaxes(title=utility_label or utility)
    fig.update_yaxes(title=attribute_label or attribute)
    return _layout(fig, title, height=520, width=820)


# ----------------------------------------------------------------- comparisons


def compare_models(plans: Mapping[str, EditPlan], *, bins: int = 10) -> go.Figure:
    """The same behaviour in several models, depth-normalised: per relative-depth bin, the
    share of the model's total |lambda| in attention heads (top) and MLP neurons (bottom),
    signed by the direction of the edits (reinforcing above 0, suppressing below)."""
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=("attention heads", "MLP neurons")
    )
    centres = (np.arange(bins) + 0.5) / bins
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"]
    bar = 0.8 / bins / max(1, len(plans))  # the models' bars share 80% of each depth bin
    for i, (name, plan) in enumerate(plans.items()):
        L = plan.n_layers
        depth = (np.arange(L) + 0.5) / L
        which = np.minimum((depth * bins).astype(int), bins - 1)
        for row, lam in ((1, plan.head_lambda), (2, plan.neuron_lambda_applied)):
            pos = lam.clamp(min=0).sum(-1).numpy()
            neg = lam.clamp(max=0).sum(-1).numpy()
            total = float(lam.abs().sum()) or 1.0
            for part, sign in ((pos, "reinforce"), (neg, "suppress")):
                y = np.bincount(which, weights=part, minlength=bins) / total
                fig.add_trace(
                    go.Bar(
                        x=centres,
                        y=y,
                        width=bar,
                        offset=(i - len(plans) / 2) * bar,
                        name=f"{name}",
                        legendgroup=name,
                        showlegend=(row == 1 and sign == "reinforce"),
                        marker_color=colours[i % len(colours)],
                        opacity=1.0 if sign == "reinforce" else 0.55,
                        hovertemplate=f"{name} · {sign}<br>depth %{{x:.2f}}<br>"
                        "share of Σ|λ| = %{y:.3f}<extra></extra>",
                    ),
                    row=row,
                    col=1,
                )
    for row, name in ((1, "head_lambda"), (2, "neuron_lambda")):
        if all(float(getattr(p, name).abs().sum()) == 0 for p in plans.values()):
            fig.add_annotation(
                text="no edits of this kind in these plans",
                x=0.5,
                y=0.5,
                showarrow=False,
                font=dict(color="#777"),
                row=row,
                col=1,
            )
    fig.add_hline(y=0, line_width=1, line_color="black")
    fig.update_xaxes(title="relative depth (layer / number of layers)", row=2, col=1, range=[0, 1])
    fig.update_yaxes(title="share of Σ|λ|")
    behaviours = sorted({p.provenance.get("behaviour", "custom") for p in plans.values()})
    title = (
        f"Where the edits sit, by relative depth<br><sup>{' vs '.join(plans)} · "
        f"{', '.join(behaviours)} · solid = reinforce, faded (below 0) = suppress</sup>"
    )
    return _layout(fig, title, height=620, width=900)


def compare_heatmaps(plans: Mapping[str, EditPlan]) -> go.Figure:
    """Head-lambda heatmaps side by side (one per plan), each on its own symmetric scale."""
    names = list(plans)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.08)
    for i, name in enumerate(names):
        p = plans[name]
        z = p.head_lambda.numpy()
        bound = _symmetric(z)
        fig.add_trace(
            go.Heatmap(
                z=z,
                colorscale=DIVERGING,
                zmid=0,
                zmin=-bound,
                zmax=bound,
                showscale=False,
                xgap=1,
                ygap=1,
                hovertemplate=f"{name}<br>layer %{{y}} · head %{{x}}<br>λ = %{{z:.3f}}<extra></extra>",
            ),
            row=1,
            col=i + 1,
        )
        fig.update_yaxes(autorange="reversed", title="layer" if i == 0 else None, row=1, col=i + 1)
        fig.update_xaxes(title="head", row=1, col=i + 1)
    return _layout(
        fig,
        "Attention-head λ side by side<br><sup>each panel on its own symmetric scale; "
        "red reinforces, blue suppresses</sup>",
        height=640,
        width=420 * len(names) + 80,
    )


def overlap_matrix(plans: Mapping[str, EditPlan]) -> pd.DataFrame:
    """For every pair of plans on the same model: Jaccard overlap of the edited heads and of
    the edited neurons, and the Pearson correlation of head lambdas (over all heads)."""
    names = list(plans)
    rows = []
    for a in names:
        for b in names:
            pa, pb = plans[a], plans[b]
            if pa.head_lambda.shape != pb.head_lambda.shape:
                raise InvalidInputError(
                    f"plans {a!r} and {b!r} are for different model shapes; "
                    "compare behaviours within one model (use compare_models across models)"
                )
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "heads_jaccard": _jaccard(pa.edited_heads, pb.edited_heads),
                    "neurons_jaccard": _jaccard(pa.edited_neurons, pb.edited_neurons),
                    "head_lambda_corr": _corr(pa.head_lambda, pb.head_lambda),
                    "head_g_corr": _corr(pa.head_g, pb.head_g),
                }
            )
    return pd.DataFrame(rows)


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else math.nan


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.reshape(-1).double(), b.reshape(-1).double()
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float(x @ y) / den if den else math.nan


def compare_behaviours(plans: Mapping[str, EditPlan]) -> go.Figure:
    """Several behaviours in one model: head-lambda scatter of the first two plans (each
    point a head) beside a matrix of edited-component overlap and lambda correlation."""
    names = list(plans)
    if len(names) < 2:
        raise InvalidInputError("compare_behaviours needs at least two plans")
    table = overlap_matrix(plans)
    a, b = names[0], names[1]
    pa, pb = plans[a], plans[b]
    L, H = pa.head_lambda.shape
    labels = [f"L{layer}H{h}" for layer in range(L) for h in range(H)]
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.55, 0.45],
        horizontal_spacing=0.14,
        subplot_titles=(f"head λ: {a} vs {b}", "overlap (upper: heads Jaccard, lower: λ corr)"),
    )
    fig.add_trace(
        go.Scatter(
            x=pa.head_lambda.reshape(-1).numpy(),
            y=pb.head_lambda.reshape(-1).numpy(),
            mode="markers",
            text=labels,
            marker=dict(size=6, color="#444", opacity=0.7),
            hovertemplate="%{text}<br>" + a + " λ = %{x:.3f}<br>" + b + " λ = %{y:.3f}<extra></extra>",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    n = len(names)
    m = np.full((n, n), np.nan)
    for r in table.itertuples():
        i, j = names.index(str(r.a)), names.index(str(r.b))
        m[i, j] = r.heads_jaccard if i < j else (r.head_lambda_corr if i > j else 1.0)
    fig.add_trace(
        go.Heatmap(
            z=m,
            x=names,
            y=names,
            colorscale=DIVERGING,
            zmin=-1,
            zmax=1,
            zmid=0,
            text=np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.2f}")(m),
            texttemplate="%{text}",
            colorbar=dict(title="", x=1.02),
            hovertemplate="%{y} × %{x}: %{z:.3f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title=f"λ ({a})", row=1, col=1, zeroline=True)
    fig.update_yaxes(title=f"λ ({b})", row=1, col=1, zeroline=True)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    model = pa.model.get("name", "model")
    return _layout(fig, f"Behaviours in one model<br><sup>{model} · {', '.join(names)}</sup>", height=520, width=1000)


# ------------------------------------------------------------------------ files


def save_figure(fig: go.Figure, path: str | Path, *, scale: float = 2.0, overwrite: bool = False) -> Path:
    """Write ``fig`` by the file's suffix: ``.html`` (interactive, plotly.js inlined, works
    offline), ``.png`` or ``.svg`` (static, via kaleido, which needs a Chrome or Chromium
    binary: see :data:`BROWSER_HINT`). Atomic; an existing file is replaced only with
    ``overwrite``."""
    from s2e_lens.io.files import check_output, write_bytes, write_text

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".png", ".svg"):
        raise FigureFormatError(f"unknown figure format {suffix!r} in {path}: use .html, .png or .svg")
    check_output(path, kind="file", overwrite=overwrite, what="figure")
    if suffix == ".html":
        return write_text(path, fig.to_html(include_plotlyjs=True, full_html=True), overwrite=overwrite)
    return write_bytes(path, static_image(fig, suffix[1:], scale=scale), overwrite=overwrite)


class FigureFormatError(S2EError, ValueError):
    """A figure file name whose suffix is not .html, .png or .svg."""


class StaticExportError(S2EError, RuntimeError):
    """Static (PNG/SVG) export failed: no browser for kaleido, or it failed."""


BROWSER_HINT = (
    "static PNG/SVG figures need a Chrome or Chromium that kaleido can drive: 'make browser "
    "INSTALL_CHROMIUM=yes' (Debian's chromium via apt-get), or 'apt install chromium', or "
    "'plotly_get_chrome' (downloads Chrome for Testing), or point BROWSER_PATH at a Chrome binary; "
    "interactive HTML figures need none"
)


def static_image(
    fig: go.Figure, fmt: str = "png", *, scale: float = 2.0, attempts: int = 4, wait_s: float = 1.0
) -> bytes:
    """The figure as PNG/SVG bytes. A JavaScript error from a browser that was slow to load
    kaleido's page (seen on a busy machine: "kaleido_scopes is not defined", twice in a row
    when four jobs shared 2 cores) is tried again, waiting ``wait_s``, then twice as long, ..."""
    import time

    for attempt in range(1, attempts + 1):
        try:
            return fig.to_image(format=fmt, scale=scale)
        except Exception as err:  # kaleido raises several types when Chrome is missing
            if type(err).__name__ == "JavascriptError" and attempt < attempts:
                time.sleep(wait_s * 2 ** (attempt - 1))
                continue
            raise StaticExportError(
                f"static {fmt} export failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                f"{BROWSER_HINT[0].upper()}{BROWSER_HINT[1:]}; or save as .html instead"
            ) from None
    raise StaticExportError(f"static {fmt} export was not attempted (attempts={attempts}); use attempts >= 1")


def can_export_static() -> bool:
    """Whether PNG/SVG export works here (kaleido finds a Chrome/Chromium)."""
    try:
        static_image(go.Figure(), "svg", scale=1)
        return True
    except StaticExportError:
        return False
