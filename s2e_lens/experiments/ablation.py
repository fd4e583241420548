"""The ablation table: Steer2Edit's edit rule with one part changed at a time, each variant
at its best budget on a grid, against activation steering on the same prompts.

One model load, one probe data set and one statistics pass serve every variant; the unedited
model and steering are measured once. Each variant then gets its own candidates, selection
and evaluation (:func:`s2e_lens.experiments.pipelines.run`). Per variant the table gives the
paper's score (attribute x utility of its best edit, with a bootstrap interval over prompts
and items) and the comparison with steering: the frontier gap at matched utility and at
matched KL, each with its paired bootstrap interval (same prompts for both methods).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from s2e_lens.core.comparison import MATCH_AXES, frontier_gap, frontier_gap_with_interval, points, sane
from s2e_lens.core.intervals import BOOTSTRAP_SAMPLES, Interval, pooled, rate_interval
from s2e_lens.core.judges import NamedJudge, check_records, judged_records, verdicts_by_prompt
from s2e_lens.core.run import save_table
from s2e_lens.errors import InvalidInputError
from s2e_lens.experiments import pipelines
from s2e_lens.experiments.config import RunConfig
from s2e_lens.io import files
from s2e_lens.io.serialization import finite_json
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.loading import load_model

# The paper's ablation (its Table: attribute x utility on safety), then ours (issue 15). Each
# variant is a set of RunConfig fields applied on top of the run's settings.
PAPER_SCORES = {
    "full": 0.427,
    "k=svd": 0.349,
    "k=mu": 0.309,
    "top-K (l0)": 0.271,
    "l2 (alpha=0)": 0.076,
    "g=dot": 0.039,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "k=mu": {"direction": "mu"},
    "k=svd": {"direction": "svd"},
    "g=dot": {"importance": "dot"},
    "top-K (l0)": {"edit_selection": "top_k"},  # top_k: RunConfig.top_k, or TOP_K by default
    "l2 (alpha=0)": {"alpha": (0.0,)},
    "relative": {"magnitude": "relative"},
    "component": {"vectors": "component"},
    "sequential": {"sequential": 8},  # blocks of 8 layers: 3 extra statistics passes on SmolLM2 (30 layers)
    # the paper's rule with each plan's budget bisected to KL targets (RunConfig.target_kl, or
    # CALIBRATION_TARGETS), one plan per target and alpha; steering stays on its gamma grid
    "calibrated": {"target_kl": ()},
    "calibrated relative": {"magnitude": "relative", "target_kl": ()},
}
CALIBRATION_TARGETS = (0.05, 0.1, 0.2)
PAPER_VARIANTS = tuple(PAPER_SCORES)
ALIASES = {
    "mu": "k=mu",
    "svd": "k=svd",
    "dot": "g=dot",
    "l0": "top-K (l0)",
    "top-k": "top-K (l0)",
    "l2": "l2 (alpha=0)",
    "calibrated-relative": "calibrated relative",
}


def variant_names(text: str) -> tuple[str, ...]:
    """Variant names from comma-separated text; short aliases (mu, svd, dot, l0, l2) allowed.

    >>> variant_names("full, l0,l2,relative")
    ('full', 'top-K (l0)', 'l2 (alpha=0)', 'relative')
    """
    names = tuple(ALIASES.get(v.strip().lower(), v.strip()) for v in text.split(",") if v.strip())
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise InvalidInputError(
            f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)} (aliases: {', '.join(ALIASES)})"
        )
    return names


TOP_K = 20  # components per block type for the l0 variant when the run sets none


def paper_score(items: dict[str, Any], *, n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> Interval:
    """The paper's figure of merit, attribute x utility, with a percentile bootstrap interval
    (attack prompts and utility items resampled independently: they are different sets)."""
    a, u = pooled(items["attribute"]), pooled(items["utility"])
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a[0]), size=(n_boot, len(a[0])))
    iu = rng.integers(0, len(u[0]), size=(n_boot, len(u[0])))
    draws = (a[0][ia].sum(1) / a[1][ia].sum(1)) * (u[0][iu].sum(1) / u[1][iu].sum(1))
    estimate = float(a[0].sum() / a[1].sum() * u[0].sum() / u[1].sum())
    return Interval(estimate, float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975)))


@dataclass
class Ablation:
    """Every variant's evaluated results beside steering's, and the table."""

    config: dict[str, Any]
    results: pd.DataFrame  # one row per evaluated intervention, with its variant
    items: dict[str, dict[str, Any]]
    table: pd.DataFrame  # one row per variant
    timings: dict[str, float] = field(default_factory=dict)
    generations: list[dict[str, Any]] = field(default_factory=list)  # every evaluated generation, judged
    tune_results: pd.DataFrame = field(default_factory=pd.DataFrame)  # held-out selection: the tune split's rows

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """ablation.csv/json (the table), results.csv/json, items.json, generations.jsonl (each
        judge's verdict on every evaluated text, for re-scoring), config.json and ablation.md,
        written as one output."""

        out = Path(out)
        with files.atomic_directory(out, overwrite=overwrite, record=files.ABLATION_RECORD) as scratch:
            save_table(self.table, scratch / "ablation")
            save_table(self.results, scratch / "results")
            if not self.tune_results.empty:
                save_table(self.tune_results, scratch / "tune_results")
            (scratch / "items.json").write_text(finite_json(self.items))
            (scratch / "generations.jsonl").write_text("".join(finite_json(g) + "\n" for g in self.generations))
            (scratch / "config.json").write_text(finite_json({**self.config, "timings_s": self.timings}, indent=1))
            (scratch / "ablation.md").write_text(self.markdown())
        return out

    @classmethod
    def load(cls, path: str | Path) -> Ablation:
        """An ablation directory written by :meth:`save` (JSON only: nothing executable is read)."""
        import json

        path = Path(path)
        needed = ("ablation.json", "results.json", "items.json", "config.json")
        missing = [n for n in needed if not (path / n).is_file()]
        if missing:
            raise InvalidInputError(
                f"{path} is not an ablation directory (missing {', '.join(missing)}); give the --out of s2e ablate"
            )
        config = json.loads((path / "config.json").read_text())
        generations, tune = path / "generations.jsonl", path / "tune_results.json"
        results = pd.read_json(path / "results.json", orient="records")
        records = (
            [json.loads(line) for line in generations.read_text().splitlines() if line.strip()]
            if generations.is_file()
            else []
        )
        labels = set(results["label"].astype(str)) if "label" in results.columns else None
        check_records(records, str(generations), labels=labels)
        return cls(
            config=config,
            results=results,
            items=json.loads((path / "items.json").read_text()),
            table=pd.read_json(path / "ablation.json", orient="records"),
            timings=config.pop("timings_s", {}),
            generations=records,
            tune_results=pd.read_json(tune, orient="records") if tune.is_file() else pd.DataFrame(),
        )

    def rejudged(self, judge: NamedJudge) -> Ablation:
        """The same ablation with every generated attribute re-judged by ``judge`` from the
        recorded texts (no model): each row's attribute and its interval, the per-prompt items,
        and the table (best edits, scores and both gaps) rebuilt from them. Utility, KL and the
        degeneracy flags do not depend on the judge and are kept. The tune split's gains stay the
        run judge's: its texts are not recorded."""
        attacks = self.config.get("attacks") or []
        if not self.generations or not attacks:
            raise InvalidInputError(
                "this ablation recorded no generated attribute (generations.jsonl is missing or empty, or the "
                "behaviour is not judged by generation): there is nothing to re-judge"
            )
        judged = judged_records([g for g in self.generations if g["set"] == attacks[0]], judge)
        items = {label: dict(scores) for label, scores in self.items.items()}
        results = self.results.copy()
        for column in ("attribute", "attribute_low", "attribute_high"):
            if column in results:
                results[column] = results[column].astype(float)
        for (label, _), rows in verdicts_by_prompt(judged, judge.name).items():
            items.setdefault(label, {})["attribute"] = rows
            sums, counts = pooled(rows)
            ci = rate_interval(rows)
            at = results["label"] == label
            results.loc[at, "attribute"] = float(sums.sum() / counts.sum())
            results.loc[at, ["attribute_low", "attribute_high"]] = (ci.low, ci.high)
        variants = tuple(self.table["variant"])
        table = pd.DataFrame([_row(name, results, items, self.tune_results) for name in variants])
        return dataclasses.replace(
            self, config={**self.config, "judge": judge.name}, results=results, items=items, table=table
        )

    def markdown(self) -> str:
        """The table as Markdown, beside the paper's numbers."""
        lines = [
            "| variant | best edit | attribute | utility | attribute x utility [95%] | paper | "
            "gain at matched utility [95%] | gain at matched KL [95%] | tune split: gain at utility / KL |",
            "|---|---|---|---|---|---|---|---|---|",
        ]

        def tune(row: pd.Series) -> str:
            values = [row.get(f"tune_{key}_mean", np.nan) for key in ("gap", "kl_gap")]
            return " / ".join("-" if pd.isna(v) else f"{v:+.3f}" for v in values)

        def gap(row: pd.Series, key: str) -> str:
            if pd.isna(row[f"{key}_mean"]):
                return "no shared range"
            return f"{row[f'{key}_mean']:+.3f} [{row[f'{key}_low']:+.3f}, {row[f'{key}_high']:+.3f}]"

        for _, r in self.table.iterrows():
            paper = f"{PAPER_SCORES[r['variant']]:.3f}" if r["variant"] in PAPER_SCORES else "-"
            if pd.isna(r["score"]):
                why = "none: no candidate passed the KL screen" if not r["n_evaluated"] else "none sane"
                lines.append(f"| {r['variant']} | {why} | | | | {paper} | | | {tune(r)} |")
                continue
            lines.append(
                f"| {r['variant']} | {r['best']} | {r['attribute']:.3f} | {r['utility']:.3f} | "
                f"{r['score']:.3f} [{r['score_low']:.3f}, {r['score_high']:.3f}] | {paper} | "
                f"{gap(r, 'gap')} | {gap(r, 'kl_gap')} | {tune(r)} |"
            )
        lines.append("")
        for key, what in (("gap", "matched utility"), ("kl_gap", "matched KL")):
            column = f"tune_{key}_mean"
            if column in self.table and self.table[column].notna().any():
                best = self.table.iloc[int(np.nanargmax(self.table[column].to_numpy(dtype=float)))]
                lines.append(
                    f"On the tune split at {what}, {best['variant']} gains most over steering ({best[column]:+.3f}); "
                    f"on the test split: {gap(best, key)}."
                )
                lines.append("")
        for key, what in (("gap", "matched utility"), ("kl_gap", "matched KL")):
            if f"{key}_low" not in self.table:
                continue
            ahead = [str(r["variant"]) for _, r in self.table.iterrows() if r[f"{key}_low"] > 0]
            behind = [str(r["variant"]) for _, r in self.table.iterrows() if r[f"{key}_high"] < 0]
            lines.append(
                f"At {what}: ahead of steering with a 95% interval above 0: {', '.join(ahead) or 'none'}; "
                f"behind it with an interval below 0: {', '.join(behind) or 'none'}; the rest cannot be told apart."
            )
            lines.append("")
        scored = self.table.dropna(subset=["score"]).sort_values("score", ascending=False)
        order = [v for v in scored["variant"] if v in PAPER_SCORES]
        lines += [f"Observed order (paper's variants): {' > '.join(order)}."]
        lines.append(f"The paper's order: {' > '.join(PAPER_VARIANTS)}.")
        return "\n".join(lines) + "\n"


def ablate(
    config: RunConfig,
    variants: tuple[str, ...] = PAPER_VARIANTS,
    *,
    model: LoadedModel | None = None,
    progress: bool = True,
) -> Ablation:
    """Evaluate each of ``variants`` (names in :data:`VARIANTS`) with ``config``'s data,
    grid, selection and suite, and steering once; build the table."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise InvalidInputError(f"unknown ablation variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    settings = {name: _variant_config(config, name) for name in variants}  # all checked before any model work
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model = model or load_model(config.model, progress=progress, **config.placement())
    prepared = pipelines.prepare(config, model, progress=progress)
    timings["checks, data and statistics"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    baseline = pipelines.run(
        dataclasses.replace(config, rho_attn=(0.0,), rho_mlp=(0.0,), baselines=False),
        model=model,
        progress=progress,
        prepared=prepared,
    )  # the unedited model and steering (calibrated too with target_kl; no edits on an all-off grid)
    timings["steering"] = round(time.perf_counter() - started, 1)
    frames = [baseline.results.assign(variant="steering")]
    tunes = [baseline.tune_results.assign(variant="steering")] if not baseline.tune_results.empty else []
    items: dict[str, dict[str, Any]] = dict(baseline.items)
    generations = [{**g, "variant": "steering"} for g in baseline.generations]
    for name in tqdm(variants, desc="ablation", disable=not progress):
        started = time.perf_counter()
        part = pipelines.run(settings[name], model=model, progress=progress, prepared=prepared, include_unedited=False)
        rename = {label: f"[{name}] {label}" for label in part.results["label"]}
        frames.append(part.results.assign(variant=name, label=part.results["label"].map(rename)))
        if not part.tune_results.empty:
            named = part.tune_results.assign(variant=name)
            tunes.append(named.assign(label=[f"[{name}] {label}" for label in named["label"]]))
        items.update({rename[label]: scores for label, scores in part.items.items()})
        generations += [{**g, "label": rename.get(g["label"], g["label"]), "variant": name} for g in part.generations]
        timings[name] = round(time.perf_counter() - started, 1)
    results = pd.concat(frames, ignore_index=True)
    tune_results = pd.concat(tunes, ignore_index=True) if tunes else pd.DataFrame()
    table = pd.DataFrame([_row(name, results, items, tune_results) for name in variants])
    return Ablation(
        config=config.to_dict() | {"variants": list(variants)},
        results=results,
        items=items,
        table=table,
        timings=timings,
        generations=generations,
        tune_results=tune_results,
    )


def _variant_config(config: RunConfig, name: str) -> RunConfig:
    fields = dict(VARIANTS[name])
    if fields.get("edit_selection") == "top_k" and not config.top_k:
        fields["top_k"] = TOP_K
    if "target_kl" in fields:
        fields["target_kl"] = config.target_kl or CALIBRATION_TARGETS
    return dataclasses.replace(config, gammas=(), baselines=False, **fields)


def tune_gap(tune: pd.DataFrame, name: str, match: str = "utility") -> float:
    """The mean frontier gap of variant ``name`` over steering on the tune split (held-out
    selection's rows; no interval: the tune split's per-item scores are not kept), NaN when
    there are no such rows or the frontiers share no range."""
    if tune.empty or "variant" not in tune:
        return np.nan
    key, sign, _ = MATCH_AXES[match]
    ok = sane(tune[tune["variant"].isin(["steering", name])])
    gap = frontier_gap(points(ok, ("steer", "none"), key, sign), points(ok, "edit", key, sign), 101)
    return np.nan if gap is None else gap.mean


def _row(
    name: str, results: pd.DataFrame, items: dict[str, dict[str, Any]], tune: pd.DataFrame | None = None
) -> dict[str, Any]:
    mine = results[(results["variant"] == name) & (results["kind"] == "edit")]
    ok = sane(mine)
    row: dict[str, Any] = {"variant": name, "n_evaluated": len(mine), "n_sane": len(ok)}
    if tune is not None and not tune.empty:
        row |= {"tune_gap_mean": tune_gap(tune, name, "utility"), "tune_kl_gap_mean": tune_gap(tune, name, "kl")}
    if ok.empty:
        return row | {"best": None, "score": np.nan}
    scored = ok.assign(score=ok["attribute"] * ok["utility"]).sort_values(["score", "attribute"], ascending=False)
    best = scored.iloc[0]
    row |= {"best": best["label"], "attribute": best["attribute"], "utility": best["utility"], "kl": best.get("kl")}
    if best["label"] in items and {"attribute", "utility"} <= set(items[best["label"]]):
        ci = paper_score(items[best["label"]])
        row |= {"score": ci.estimate, "score_low": ci.low, "score_high": ci.high}
    else:
        row |= {"score": float(best["score"]), "score_low": np.nan, "score_high": np.nan}
    versus = results[(results["variant"].isin(["steering", name]))]
    for key, match in (("gap", "utility"), ("kl_gap", "kl")):
        est = frontier_gap_with_interval(versus, items, match=match)
        if est is None:
            row |= {f"{key}_mean": np.nan, f"{key}_low": np.nan, f"{key}_high": np.nan, f"{key}_verdict": None}
        else:
            row |= {
                f"{key}_mean": est.gap.mean,
                f"{key}_low": est.interval.low,
                f"{key}_high": est.interval.high,
                f"{key}_verdict": est.verdict(),
            }
    return row
