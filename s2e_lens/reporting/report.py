"""The report of a run: figures, and the same content as Markdown (``report.md``, static
PNGs) and HTML (``report.html``, interactive, self-contained and offline: plotly.js inlined
once). The pages are jinja2 templates (``reporting/templates``); this module only computes
what goes into them."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup

from s2e_lens.behaviours.base import get, names
from s2e_lens.core.comparison import GapEstimate, compare, degenerate_rows
from s2e_lens.core.judges import judge_summary
from s2e_lens.core.plan import EditPlan
from s2e_lens.core.run import Run
from s2e_lens.io.files import write_text
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.reporting import figures
from s2e_lens.version import __version__

COLUMNS = [
    "label",
    "attribute",
    "utility",
    "kl",
    "benign_ce",
    "over_refusal_harmless",
    "over_refusal_scary",
    "degenerate",
    "mc1",
    "heads_edited",
    "neurons_edited",
]
SETTINGS = [
    "model",
    "behaviour",
    "gammas",
    "rho_attn",
    "rho_mlp",
    "alpha",
    "keep_edits",
    "max_kl",
    "n_eval",
    "n_mc",
    "max_new_tokens",
    "baselines",
    "max_degenerate",
    "seed",
]


def labels(behaviour: str) -> dict[str, str]:
    """The attribute and utility axis names of a behaviour."""
    own = get(behaviour).labels if behaviour in names() else {}
    return {"attribute": own.get("attribute", "attribute"), "utility": own.get("utility", "utility")}


def run_figures(run: Run) -> dict[str, go.Figure]:
    """Every figure of a run, by file stem."""
    results = run.results
    axis = labels(run.behaviour)
    best_label, best_plan = run.best_plan()
    sub = f"<br><sup>{run.model['name']} · {run.behaviour} · held-out test split · best edit: {best_label}</sup>"
    figs: dict[str, go.Figure] = {}
    figs["frontier"] = figures.frontier(
        results,
        attribute_label=axis["attribute"],
        utility_label=axis["utility"],
        title="Attribute vs utility: Steer2Edit and activation steering" + sub,
    )
    if "kl" in results:
        with_kl = results.assign(neg_kl=-results["kl"])
        figs["frontier_kl"] = figures.frontier(
            with_kl,
            utility="neg_kl",
            attribute_label=axis["attribute"],
            utility_label="−KL(unedited ‖ intervened) on benign text (higher = closer to unedited)",
            title="Attribute vs closeness to the unedited model" + sub,
        )
    return {**figs, **plan_figures(best_plan)}


def plan_figures(plan: EditPlan) -> dict[str, go.Figure]:
    """Every figure of one plan, by file stem (neuron lambda views only if it edits neurons)."""
    figs = {
        "lambda_heads": figures.lambda_heatmap(plan),
        "lambda_heads_sorted": figures.lambda_heatmap(plan, sorted_view=True),
        "importance_heads": figures.lambda_heatmap(plan, value="g"),
        "importance_neurons": figures.neuron_topk(plan, value="g"),
    }
    if plan.n_edited["neurons"]:
        figs["lambda_neurons"] = figures.neuron_topk(plan)
        figs["lambda_neuron_bins"] = figures.neuron_bins(plan)
    figs["edit_mass"] = figures.edit_mass(plan)
    return figs


def _fmt(v: Any) -> str:
    if v is pd.NA:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _table(frame: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in COLUMNS if c in frame.columns]
    out = frame[cols].copy()
    for c in ("heads_edited", "neurons_edited"):
        if c in out:
            out[c] = out[c].astype("Int64")
    return out.astype(object).map(_fmt)


SUMMARY_COLUMNS = ("compared", "Steer2Edit", "steering", "difference [95% interval]", "verdict")


def _short_verdict(low: float, high: float) -> str:
    if low > 0:
        return "Steer2Edit ahead"
    if high < 0:
        return "steering ahead"
    return "no difference can be claimed"


def summary_table(run: Run) -> pd.DataFrame:
    """The answer in one small table: Steer2Edit against steering at matched utility, at
    matched KL (each over the range both frontiers reach: the frontiers' mean attributes there
    and their paired difference), and at the paper's operating point (its best edit against
    the strongest steering with at least its utility). A comparison the run cannot make says
    why."""
    rows: list[tuple[str, str, str, str, str]] = []
    for name, estimate, key in (("matched utility", run.frontier_gap(), "utility"), ("matched KL", run.kl_gap(), "kl")):
        if estimate is None:
            recorded = bool(run.items) and all(key in scores for scores in run.items.values())
            why = "the frontiers share no range: not compared" if recorded else "not recorded per item: not compared"
            rows.append((name, "", "", "", why))
            continue
        g, iv = estimate.gap, estimate.interval
        where = f"{g.low:.3f}-{g.high:.3f}" if key == "utility" else f"{-g.high:.3f}-{-g.low:.3f} nats/token"
        rows.append(
            (
                f"{name} ({where})",
                f"{g.edit_mean:.3f}",
                f"{g.steering_mean:.3f}",
                f"{g.mean:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]",
                _short_verdict(iv.low, iv.high),
            )
        )
    point = run.operating_point()
    if point is not None:
        by_label = run.results.set_index("label")["attribute"]
        d = point["difference"]
        rows.append(
            (
                f"paper's operating point: {point['edit']} vs {point['steering']}",
                f"{by_label[point['edit']]:.3f}",
                f"{by_label[point['steering']]:.3f}",
                f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]",
                _short_verdict(d["low"], d["high"]),
            )
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def headline(run: Run) -> tuple[pd.DataFrame, list[str]]:
    """The rows to set side by side (unedited, best edit, matched steering) and the result
    sentences (Markdown bold marks the names and the gains)."""
    results = run.results
    best_label, _ = run.best_plan()
    steer_label = run.matched_steering(best_label)
    rows = pd.concat([results[results["label"] == p] for p in ("unedited", best_label, steer_label)])
    base = results[results["kind"] == "none"].iloc[0]
    best = results[results["label"] == best_label].iloc[0]
    lines = [
        f"Best Steer2Edit edit (highest attribute among the kept edits): **{best['label']}** — "
        f"attribute {base['attribute']:.3f} → {best['attribute']:.3f}, utility {base['utility']:.3f} → "
        f"{best['utility']:.3f}" + (f", KL {best['kl']:.3f}" if "kl" in best else "") + ".",
    ]
    st = results[results["label"] == steer_label].iloc[0]
    lines.append(
        f"Steering at matched utility (strongest steering with utility ≥ the edit's): "
        f"**{st['label']}** — attribute {st['attribute']:.3f}, utility {st['utility']:.3f}"
        + (f", KL {st['kl']:.3f}" if "kl" in st else "")
        + "."
    )
    point = run.operating_point()
    if point is not None:
        d = point["difference"]
        lines.append(
            f"At this operating point (the paper's way: its best edit against steering at matched utility), the "
            f"attribute difference is {d['estimate']:+.3f} (95% paired bootstrap interval {d['low']:+.3f} to "
            f"{d['high']:+.3f}; {'excludes' if point['excludes_zero'] else 'includes'} 0)."
        )
    flagged = degenerate_rows(results)
    if len(flagged):
        names = ", ".join(f"{r['label']} ({r['degenerate']:.0%} degenerate)" for _, r in flagged.iterrows())
        lines.append(
            f"Kept out of the comparison because their generations are mostly degenerate "
            f"(loops, repeated tokens, runs of punctuation): **{names}**."
        )
    estimate = run.frontier_gap()
    if estimate is not None:
        g = estimate.gap
        lines.append(
            f"Frontiers compared over the utility range both reach ({g.low:.3f} to {g.high:.3f}): "
            + _gap_words(estimate, f"at utility {g.at:.3f}")
        )
    elif run.items:
        lines.append("The two frontiers share no utility range on this run: no matched comparison can be made.")
    judged: dict[str, Any] = judge_summary(run.generations) if run.generations else {"n": 0}
    if judged["n"]:
        paper, strict = judged["paper"], judged["strict"]
        broken = ""
        for key, what in (("degenerate", "degenerate"), ("cut_off", "cut off at the token limit")):
            if judged[f"n_{key}"]:
                broken += (
                    f" Of the {judged[f'n_{key}']} {what}, the paper's judge calls "
                    f"{paper[f'when_{key}']:.0%} refusals and ours {strict[f'when_{key}']:.0%}."
                )
        lines.append(
            f"Judges on this run's {judged['n']} generations: the paper's substring judge calls "
            f"{paper['refusal']:.1%} refusals, ours {strict['refusal']:.1%}; they disagree on "
            f"{judged['disagreement']:.1%}.{broken} The attribute uses the {run.suite.get('judge', 'strict')} judge "
            f"(`s2e rescore` re-scores without generating)."
        )
    gain = run.comparison().mean_gain
    if not math.isnan(gain):
        lines.append(
            f"Mean of the gains at each utility level steering reaches (the unedited model included; "
            f"no interval, kept for comparison with earlier runs): {gain:+.3f}."
        )
    kl_estimate = run.kl_gap()
    if kl_estimate is not None:
        g = kl_estimate.gap
        lines.append(
            f"Matched instead on closeness to the unedited model (KL on benign text, {-g.high:.3f} to "
            f"{-g.low:.3f} nats per token, reached by both): " + _gap_words(kl_estimate, f"at KL {-g.at:.3f}")
        )
    elif any("kl" in scores for scores in run.items.values()):
        lines.append("The two frontiers share no range of KL to the unedited model: no KL-matched comparison.")
    elif "kl" in results and (results["kind"] == "edit").any() and (results["kind"] == "steer").any():
        kl_gain = compare(results.assign(neg_kl=-results["kl"]), utility="neg_kl").mean_gain
        if not math.isnan(kl_gain):
            lines.append(
                f"Matched instead on closeness to the unedited model (−KL on benign text; mean of the gains, "
                f"no interval: this run recorded no per-text KL): {kl_gain:+.3f}."
            )
    return rows, lines


def build(
    out: str | Path, *, run: Run | None = None, model: LoadedModel | None = None, attention_prompt: str | None = None
) -> dict[str, Path]:
    """Write ``figures/`` and ``report.md`` / ``report.html`` into the run directory ``out``
    (its own files: they are replaced). ``run`` defaults to :meth:`Run.load` of ``out``. With
    ``model`` (the model the run used), also an attention view of the most-edited heads."""
    out = Path(out)
    run = run if run is not None else Run.load(out)
    figs = run_figures(run)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    pngs: list[tuple[str, str]] = []
    if figures.can_export_static():
        for stem, fig in figs.items():
            figures.save_figure(fig, fig_dir / f"{stem}.png", overwrite=True)
            pngs.append((stem, f"figures/{stem}.png"))
    attention = False
    if model is not None:
        from s2e_lens.reporting.attention_view import attention_view, top_heads

        _, plan = run.best_plan()
        prompt = attention_prompt or (run.examples[0]["prompt"] if run.examples else "Hello!")
        if top_heads(plan, 1):
            attention_view(model, prompt, plan=plan, n=6).save(fig_dir / "attention_top_heads.html", overwrite=True)
            attention = True
    rows, lines = headline(run)
    context = _context(run, rows, lines, attention)
    md = (
        _environment(autoescape=False)
        .get_template("report.md.j2")
        .render(
            **context,
            pngs=pngs,
            browser_hint=figures.BROWSER_HINT,
            summary_table=summary_table(run).to_markdown(index=False, disable_numparse=True),
            headline_table=_table(rows).to_markdown(index=False, disable_numparse=True),
            results_table=_table(run.results).to_markdown(index=False, disable_numparse=True),
            matched_table=_matched(run).to_markdown(index=False, disable_numparse=True) if len(_matched(run)) else "",
            settings_table=_settings(run).to_markdown(index=False, disable_numparse=True),
        )
    )
    page = (
        _environment(autoescape=True)
        .get_template("report.html.j2")
        .render(
            **(context | {"lines": [Markup(_bold(line)) for line in lines]}),
            figures=[
                Markup(fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{stem}"))
                for i, (stem, fig) in enumerate(figs.items())
            ],
            summary_table=Markup(summary_table(run).to_html(index=False)),
            headline_table=Markup(_table(rows).to_html(index=False)),
            results_table=Markup(_table(run.results).to_html(index=False)),
            matched_table=Markup(_matched(run).to_html(index=False)) if len(_matched(run)) else "",
            settings_table=Markup(_settings(run).to_html(index=False)),
        )
    )
    return {"md": write_text(out / "report.md", md), "html": write_text(out / "report.html", page)}


def _environment(*, autoescape: bool) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("s2e_lens.reporting", "templates"),
        autoescape=autoescape,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def _context(run: Run, rows: pd.DataFrame, lines: list[str], attention: bool) -> dict[str, Any]:
    return {
        "behaviour": run.behaviour,
        "model": run.model["name"],
        "config_model": run.config["model"],
        "version": __version__,
        "data_json": json.dumps(run.data),
        "lines": lines,
        "examples": run.examples,
        "attention": attention,
        "timings_json": json.dumps(run.timings),
    }


def _bold(line: str) -> str:
    """Markdown **bold** as HTML, the rest escaped."""
    parts = html.escape(line).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _matched(run: Run) -> pd.DataFrame:
    table = run.comparison().table()
    return table.map(_fmt) if not table.empty else table


def _settings(run: Run) -> pd.DataFrame:
    return pd.DataFrame([(k, str(run.config[k])) for k in SETTINGS if k in run.config], columns=["setting", "value"])


def _gap_words(estimate: GapEstimate, where_largest: str) -> str:
    """A frontier gap in words: its mean, paired interval, largest difference and verdict."""
    g, iv = estimate.gap, estimate.interval
    return (
        f"Steer2Edit's attribute minus steering's, mean **{g.mean:+.3f}** (95% paired bootstrap interval "
        f"{iv.low:+.3f} to {iv.high:+.3f}; largest difference {g.largest:+.3f} {where_largest}): "
        f"**{estimate.verdict()}**."
    )
