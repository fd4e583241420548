"""The report of a run directory (what ``s2e run`` / ``s2e sweep`` wrote): figures, and the
same content as Markdown (``report.md``, static PNGs) and HTML (``report.html``, interactive,
self-contained and offline: plotly.js inlined once)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from s2e_lens import __version__, figures
from s2e_lens.files import write_text
from s2e_lens.errors import S2EError
from s2e_lens.loading import LoadedModel
from s2e_lens.plan import EditPlan
from s2e_lens.sweep import degenerate_rows

LABELS = {
    "safety": {"attribute": "refusal rate on held-out harmful prompts",
               "utility": "multiple-choice accuracy (ARC-Easy, PIQA, HellaSwag)"},
    "truthfulness": {"attribute": "TruthfulQA binary preference (held-out)",
                     "utility": "multiple-choice accuracy (ARC-Easy, PIQA, HellaSwag)"},
}
COLUMNS = ["label", "attribute", "utility", "kl", "benign_ce", "over_refusal_harmless", "over_refusal_scary",
           "degenerate", "mc1", "heads_edited", "neurons_edited"]


class RunDirectoryError(S2EError):
    pass


def load_run(out: str | Path) -> dict[str, Any]:
    """Read a run directory's summary, results, matched-utility table, best plan and examples."""
    out = Path(out)
    if not (out / "summary.json").is_file() or not (out / "results.csv").is_file():
        raise RunDirectoryError(f"{out} is not a run directory (no summary.json / results.csv); "
                                "make one with 's2e run' or 's2e sweep'")
    try:
        summary = json.loads((out / "summary.json").read_text())
        results = pd.read_csv(out / "results.csv")
        matched = pd.read_csv(out / "matched_utility.csv") if (out / "matched_utility.csv").is_file() else None
        examples = json.loads((out / "examples.json").read_text()) if (out / "examples.json").is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise RunDirectoryError(f"{out} holds a damaged run file ({type(err).__name__}: {err}); rerun it") from None
    missing = [k for k in ("config", "model", "best_plan") if not isinstance(summary, dict) or k not in summary]
    if missing or not {"label", "kind", "attribute", "utility"} <= set(results.columns):
        raise RunDirectoryError(f"{out}: summary.json or results.csv lacks what a run writes ({missing or 'columns'}); "
                                "rerun it with 's2e run' or 's2e sweep'")
    return {"dir": out, "summary": summary, "results": results, "matched": matched,
            "best_plan": EditPlan.load(out / "best_plan"), "examples": examples}


def run_figures(run: dict[str, Any]) -> dict[str, go.Figure]:
    """Every figure of a run, by file stem."""
    summary, results, plan = run["summary"], run["results"], run["best_plan"]
    behaviour = summary["config"]["behaviour"]
    model = summary["model"]["name"]
    labels = LABELS.get(behaviour, {"attribute": "attribute", "utility": "utility"})
    figs: dict[str, go.Figure] = {}
    sub = f"<br><sup>{model} · {behaviour} · held-out test split · best edit: {summary['best_plan']}</sup>"
    figs["frontier"] = figures.frontier(results, attribute_label=labels["attribute"], utility_label=labels["utility"],
                                        title="Attribute vs utility: Steer2Edit and activation steering" + sub)
    if "kl" in results:
        with_kl = results.assign(neg_kl=-results["kl"])
        figs["frontier_kl"] = figures.frontier(
            with_kl, utility="neg_kl", attribute_label=labels["attribute"],
            utility_label="−KL(unedited ‖ intervened) on benign text (higher = closer to unedited)",
            title="Attribute vs closeness to the unedited model" + sub)
    return {**figs, **plan_figures(plan)}


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


def headline(run: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """The rows to set side by side (unedited, best edit, matched steering) and the result
    sentences (Markdown bold marks the names and the gains)."""
    summary, results = run["summary"], run["results"]
    pick = ["unedited", summary["best_plan"], summary.get("matched_steering")]
    rows = pd.concat([results[results["label"] == p] for p in pick if p])
    base = results[results["kind"] == "none"].iloc[0]
    best = results[results["label"] == summary["best_plan"]].iloc[0]
    lines = [
        f"Best Steer2Edit edit (highest attribute among the kept edits): **{best['label']}** — "
        f"attribute {base['attribute']:.3f} → {best['attribute']:.3f}, utility {base['utility']:.3f} → "
        f"{best['utility']:.3f}" + (f", KL {best['kl']:.3f}" if "kl" in best else "") + ".",
    ]
    if summary.get("matched_steering"):
        st = results[results["label"] == summary["matched_steering"]].iloc[0]
        lines.append(f"Steering at matched utility (strongest steering with utility ≥ the edit's): "
                     f"**{st['label']}** — attribute {st['attribute']:.3f}, utility {st['utility']:.3f}"
                     + (f", KL {st['kl']:.3f}" if "kl" in st else "") + ".")
    flagged = degenerate_rows(results)
    if len(flagged):
        names = ", ".join(f"{r['label']} ({r['degenerate']:.0%} degenerate)" for _, r in flagged.iterrows())
        lines.append(f"Kept out of the comparison because their generations are mostly degenerate "
                     f"(loops, repeated tokens, runs of punctuation): **{names}**.")
    gain = summary.get("mean_gain_at_matched_utility")
    if gain is not None and not (isinstance(gain, float) and math.isnan(gain)):
        verdict = "Steer2Edit is ahead" if gain > 0 else "steering is ahead" if gain < 0 else "they tie"
        lines.append(f"Mean attribute gain of Steer2Edit over steering at matched utility: **{gain:+.3f}** "
                     f"({verdict} on this run).")
    if "kl" in results and (results["kind"] == "edit").any() and (results["kind"] == "steer").any():
        from s2e_lens.sweep import compare

        kl_gain = compare(results.assign(neg_kl=-results["kl"]), utility="neg_kl").mean_gain
        if not math.isnan(kl_gain):
            lines.append(f"Matched instead on closeness to the unedited model (−KL on benign text): "
                         f"**{kl_gain:+.3f}**.")
    return rows, lines


def build(out: str | Path, *, model: LoadedModel | None = None, timings: dict[str, float] | None = None,
          attention_prompt: str | None = None) -> dict[str, Path]:
    """Write ``figures/`` and ``report.md`` / ``report.html`` into the run directory ``out``.
    With ``model`` (the model the run used), also an attention view of the most-edited heads."""
    run = load_run(out)
    out = Path(out)
    summary = run["summary"]
    if timings:
        summary["timings_s"] = timings
    figs = run_figures(run)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    static = figures.can_export_static()
    pngs: dict[str, str] = {}
    if static:
        for stem, fig in figs.items():
            figures.save_figure(fig, fig_dir / f"{stem}.png", overwrite=True)  # the report's own files
            pngs[stem] = f"figures/{stem}.png"
    attention = None
    if model is not None:
        from s2e_lens.attention_view import attention_view, top_heads

        prompt = attention_prompt or (run["examples"][0]["prompt"] if run["examples"] else "Hello!")
        if top_heads(run["best_plan"], 1):
            attention = attention_view(model, prompt, plan=run["best_plan"], n=6)
            attention.save(fig_dir / "attention_top_heads.html", overwrite=True)
    rows, lines = headline(run)
    paths = {
        "md": _markdown(out, run, summary, rows, lines, pngs, attention is not None),
        "html": _html(out, run, summary, rows, lines, figs, attention is not None),
    }
    return paths


def _settings_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    c = summary["config"]
    keys = ["model", "behaviour", "gammas", "rho_attn", "rho_mlp", "alpha", "keep_edits", "max_kl", "n_eval",
            "n_mc", "max_new_tokens", "baselines", "seed"]
    return [(k, str(c[k])) for k in keys if k in c]


def _markdown(out: Path, run: dict[str, Any], summary: dict[str, Any], headline: pd.DataFrame,
              lines: list[str], pngs: dict[str, str], attention: bool) -> Path:
    c = summary["config"]
    md = [f"# Steer2Edit report: {c['behaviour']} on {summary['model']['name']}", "",
          f"s2e_lens {__version__} · data: {json.dumps(summary.get('data', {}))}", ""]
    md += ["## Result", "", *[f"- {x}" for x in lines], "",
           _table(headline).to_markdown(index=False, disable_numparse=True), "",
           "Attribute and utility are measured on held-out data (the test split); the edits and "
           "steering vectors come from the tune split. KL is to the unedited model on benign text.", ""]
    md += ["## All evaluated interventions", "", _table(run["results"]).to_markdown(index=False, disable_numparse=True), ""]
    if run["matched"] is not None and not run["matched"].empty:
        md += ["## Gain at matched utility", "", run["matched"].map(_fmt).to_markdown(index=False, disable_numparse=True), ""]
    md += ["## Figures", ""]
    if pngs:
        md += [f"![{stem}]({path})" for stem, path in pngs.items()]
    else:
        md += [f"No static images here: {figures.BROWSER_HINT}. The interactive figures are in report.html."]
    if attention:
        md += ["", "Attention patterns of the most-edited heads: figures/attention_top_heads.html"]
    if run["examples"]:
        md += ["", "## Example generations (greedy, held-out prompts)", ""]
        ex0 = run["examples"][0]
        md += [f"Columns: unedited · edit = {ex0['edit_label']} · steering = {ex0['steering_label']}", ""]
        for ex in run["examples"]:
            md += [f"**[{ex['set']}] {ex['prompt']}**", ""]
            for col in ("unedited", "edit", "steering"):
                md += [f"- *{col}*: {ex[col].strip() or '(empty)'}"]
            md += [""]
    md += ["## Settings", "", pd.DataFrame(_settings_rows(summary), columns=["setting", "value"]).to_markdown(index=False, disable_numparse=True),
           "", f"Stage timings (s): {json.dumps(summary.get('timings_s', {}))}", "",
           "Reproduce: `s2e run " + f"{c['behaviour']} --model {c['model']}` (same settings: see summary.json).", ""]
    return write_text(out / "report.md", "\n".join(md))


CSS = """body{font-family:Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}h1{font-size:26px}h2{margin-top:36px;border-bottom:1px solid #eee}.ex td{max-width:330px}
.note{color:#555;font-size:14px}"""


def _html(out: Path, run: dict[str, Any], summary: dict[str, Any], headline: pd.DataFrame, lines: list[str],
          figs: dict[str, go.Figure], attention: bool) -> Path:
    c = summary["config"]
    esc = html.escape

    def md_bold(s: str) -> str:
        parts = esc(s).split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    body = [f"<h1>Steer2Edit report: {esc(c['behaviour'])} on {esc(summary['model']['name'])}</h1>",
            f"<p class='note'>s2e_lens {__version__} · data: {esc(json.dumps(summary.get('data', {})))}</p>",
            "<h2>Result</h2><ul>" + "".join(f"<li>{md_bold(x)}</li>" for x in lines) + "</ul>",
            _table(headline).to_html(index=False),
            "<p class='note'>Held-out test split; edits and vectors come from the tune split. "
            "KL is to the unedited model on benign text.</p>",
            "<h2>Figures</h2>"]
    first = True
    for stem, fig in figs.items():
        body.append(fig.to_html(full_html=False, include_plotlyjs=first, div_id=f"fig-{stem}"))
        first = False
    if attention:
        body.append("<h3>Attention patterns of the most-edited heads</h3>"
                    "<iframe src='figures/attention_top_heads.html' style='width:100%;height:900px;border:0'></iframe>")
    if run["examples"]:
        ex0 = run["examples"][0]
        rows = "".join(
            f"<tr><td>{esc(ex['set'])}</td><td>{esc(ex['prompt'])}</td><td>{esc(ex['unedited'])}</td>"
            f"<td>{esc(ex['edit'])}</td><td>{esc(ex['steering'])}</td></tr>" for ex in run["examples"])
        body.append("<h2>Example generations (greedy, held-out prompts)</h2><table class='ex'><tr><th>set</th>"
                    f"<th>prompt</th><th>unedited</th><th>edit: {esc(ex0['edit_label'])}</th>"
                    f"<th>steering: {esc(ex0['steering_label'])}</th></tr>{rows}</table>")
    body.append("<h2>All evaluated interventions</h2>" + _table(run["results"]).to_html(index=False))
    if run["matched"] is not None and not run["matched"].empty:
        body.append("<h2>Gain at matched utility</h2>" + run["matched"].map(_fmt).to_html(index=False))
    body.append("<h2>Settings</h2>" + pd.DataFrame(_settings_rows(summary), columns=["setting", "value"]).to_html(index=False))
    body.append(f"<p class='note'>Stage timings (s): {esc(json.dumps(summary.get('timings_s', {})))}</p>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>s2e report: {esc(c['behaviour'])} on "
            f"{esc(summary['model']['name'])}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    return write_text(out / "report.html", page)
