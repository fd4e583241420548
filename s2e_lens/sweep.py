"""Sweeps: evaluate interventions on an attribute and a utility, prune cheaply first, and
compare Steer2Edit with activation steering at matched utility."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from s2e_lens import metrics
from s2e_lens.files import write_all
from s2e_lens.datasets import MultipleChoice, TruthfulQAItem
from s2e_lens.evaluation import (
    KLReference,
    multiple_choice_accuracy,
    refusal_eval,
    response_cross_entropy,
    truthfulqa_eval,
)
from s2e_lens.generation import GenerationSettings, generate
from s2e_lens.interventions import Intervention
from s2e_lens.loading import LoadedModel

Measure = Callable[[LoadedModel], dict[str, Any]]

# An intervention with more than this share of degenerate generations (metrics.is_degenerate)
# produces broken output, not a trade-off: it is kept out of the comparison, the best-edit
# choice and the headline, and reports list it separately.
DEGENERATE_LIMIT = 0.5


@dataclass
class Suite:
    """What to measure: ``attribute`` (higher = more of the behaviour) and ``utility``
    (higher = better), each a function of the model returning a dict of named figures that
    contains the key ``"attribute"`` / ``"utility"``."""

    behaviour: str
    attribute: Measure
    utility: Measure
    kl_reference: KLReference | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def measure(self, model: LoadedModel) -> dict[str, Any]:
        row = {**self.attribute(model), **self.utility(model)}
        if self.kl_reference is not None:
            row["kl"] = self.kl_reference.kl(model)
        return row


def safety_suite(
    model: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    mc_items: Sequence[MultipleChoice] = (),
    benign_pairs: Sequence[tuple[str, str]] = (),
    scary_but_safe: Sequence[str] = (),
    max_new_tokens: int = 32,
    judge: metrics.Judge | None = None,
) -> Suite:
    """Attribute: refusal rate on ``harmful``. Utility: multiple-choice accuracy on
    ``mc_items`` if given, else ``1 - over-refusal`` on ``harmless``. Also reported:
    over-refusal (harmless, scary-but-safe), degeneracy, benign cross-entropy and KL."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=48)

    def attribute(m: LoadedModel) -> dict[str, Any]:
        r = refusal_eval(m, harmful, settings, judge)
        b = refusal_eval(m, harmless, settings, judge)
        row = {"attribute": r.rate, "refusal_harmful": r.rate, "over_refusal_harmless": b.rate,
               "harmless_answered": 1.0 - b.rate,
               "degenerate_harmful": r.degenerate, "degenerate_harmless": b.degenerate,
               "example_harmful": r.responses[0], "example_harmless": b.responses[0]}
        texts = r.responses + b.responses
        if scary_but_safe:
            s = refusal_eval(m, scary_but_safe, settings, judge)
            row["over_refusal_scary"] = s.rate
            texts += s.responses
        row["degenerate"] = metrics.degenerate_fraction(texts)
        if not mc_items:  # utility = share of harmless prompts answered
            row["utility"] = row["harmless_answered"]
        return row

    def utility(m: LoadedModel) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if benign_pairs:
            row["benign_ce"] = response_cross_entropy(m, benign_pairs)
        if mc_items:
            row["mc_accuracy"] = multiple_choice_accuracy(m, mc_items)
            row["utility"] = row["mc_accuracy"]
        return row

    return Suite("safety", attribute, utility,
                 KLReference(model, benign_pairs[:16]) if benign_pairs else None,
                 {"n_harmful": len(harmful), "n_harmless": len(harmless), "n_mc": len(mc_items)})


def truthfulness_suite(
    model: LoadedModel,
    test_items: Sequence[TruthfulQAItem],
    *,
    mc_items: Sequence[MultipleChoice] = (),
    benign_pairs: Sequence[tuple[str, str]] = (),
    probe_prompts: Sequence[str] = (),
    max_new_tokens: int = 32,
) -> Suite:
    """Attribute: TruthfulQA binary preference on held-out ``test_items`` (MC1 also
    reported). Utility: multiple-choice accuracy on ``mc_items``. The scores are
    log-likelihoods, so greedy answers to ``probe_prompts`` measure whether the intervention
    still produces sane text (``degenerate``)."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=48)

    def attribute(m: LoadedModel) -> dict[str, Any]:
        r = truthfulqa_eval(m, test_items)
        row: dict[str, Any] = {"attribute": r.binary_preference, "binary_preference": r.binary_preference,
                               "mc1": r.mc1}
        if probe_prompts:
            texts = [g.text for g in generate(m, probe_prompts, settings)]
            row["degenerate"] = metrics.degenerate_fraction(texts)
            row["example_probe"] = texts[0]
        return row

    def utility(m: LoadedModel) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if mc_items:
            row["mc_accuracy"] = row["utility"] = multiple_choice_accuracy(m, mc_items)
        if benign_pairs:
            row["benign_ce"] = response_cross_entropy(m, benign_pairs)
        return row

    return Suite("truthfulness", attribute, utility,
                 KLReference(model, benign_pairs[:16]) if benign_pairs else None,
                 {"n_test": len(test_items), "n_mc": len(mc_items), "n_probe": len(probe_prompts)})


def prune(
    model: LoadedModel, candidates: Sequence[Intervention], reference: KLReference, *, max_kl: float, keep: int
) -> tuple[list[Intervention], pd.DataFrame]:
    """Cheap screening before any generation: KL on a few benign texts for each candidate.
    Drops candidates whose KL exceeds ``max_kl`` (they break the model), then keeps ``keep``
    of the survivors spread evenly over their KL range (mild to strong), so the frontier is
    sampled across its length. Returns the kept candidates and the screening table."""
    rows = []
    for c in candidates:
        with c.active(model):
            kl = reference.kl(model)
        rows.append({**c.describe(), "screen_kl": kl, "kept": False})
    frame = pd.DataFrame(rows)
    ok = [i for i, r in enumerate(rows) if r["screen_kl"] <= max_kl]
    # spread the survivors over their KL range, so the frontier is sampled from mild to strong
    ok.sort(key=lambda i: rows[i]["screen_kl"])
    if len(ok) > keep:
        step = (len(ok) - 1) / (keep - 1) if keep > 1 else 0
        ok = sorted({ok[round(j * step)] for j in range(keep)})
    for i in ok:
        frame.loc[i, "kept"] = True
    return [candidates[i] for i in ok], frame


def run(
    model: LoadedModel,
    suite: Suite,
    interventions: Sequence[Intervention],
    *,
    progress: bool = True,
    max_degenerate: float = DEGENERATE_LIMIT,
) -> pd.DataFrame:
    """Measure every intervention (the unedited model is always included). A row whose
    ``degenerate`` share exceeds ``max_degenerate`` gets ``degenerate_flag`` (see :func:`sane`)."""
    from s2e_lens.interventions import unedited

    todo = list(interventions)
    if not any(i.kind == "none" for i in todo):
        todo.insert(0, unedited())
    rows = []
    for item in tqdm(todo, desc=f"{suite.behaviour} sweep", disable=not progress):
        started = time.perf_counter()
        with item.active(model):
            figures = suite.measure(model)
        row = {**item.describe(), **figures}
        row["degenerate_flag"] = bool(row.get("degenerate", 0.0) > max_degenerate)
        rows.append({**row, "seconds": round(time.perf_counter() - started, 1)})
    return pd.DataFrame(rows)


def sane(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows not flagged for degenerate generations (see :data:`DEGENERATE_LIMIT`)."""
    if "degenerate_flag" not in frame:
        return frame
    return frame[~frame["degenerate_flag"].astype(bool)]


def degenerate_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows kept out of comparisons because their generations are mostly degenerate."""
    if "degenerate_flag" not in frame:
        return frame.iloc[:0]
    return frame[frame["degenerate_flag"].astype(bool)]


def points(frame: pd.DataFrame, kind: str, utility: str = "utility") -> list[metrics.Point]:
    sub = frame[frame["kind"] == kind]
    return [metrics.Point(float(a), float(u), str(lab))
            for a, u, lab in zip(sub["attribute"], sub[utility], sub["label"])]


@dataclass
class Comparison:
    """Steer2Edit vs steering on one sweep's results (degenerate interventions excluded and
    named in ``excluded``)."""

    frame: pd.DataFrame
    matches: list[metrics.MatchedGain]
    mean_gain: float
    frontier_edit: list[metrics.Point]
    frontier_steer: list[metrics.Point]
    excluded: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{
            "utility_level": m.utility, "steering": m.steering.label, "steering_attribute": m.steering.attribute,
            "best_edit": m.edit.label if m.edit else None,
            "edit_attribute": m.edit.attribute if m.edit else math.nan,
            "edit_utility": m.edit.utility if m.edit else math.nan, "gain": m.gain,
        } for m in self.matches])


def compare(frame: pd.DataFrame, utility: str = "utility") -> Comparison:
    """Gain at matched utility: steering's points (the unedited model counts as gamma = 0)
    against the Steer2Edit points. ``utility`` names the column to match on. Interventions
    whose generations are mostly degenerate take no part (their labels are in ``excluded``)."""
    ok = sane(frame)
    steer = points(ok, "steer", utility) + points(ok, "none", utility)
    edit = points(ok, "edit", utility)
    matches = metrics.gains_at_matched_utility(steer, edit)
    return Comparison(frame, matches, metrics.mean_gain(matches),
                      metrics.pareto_frontier(edit), metrics.pareto_frontier(steer),
                      [str(x) for x in degenerate_rows(frame)["label"]])


def save(frame: pd.DataFrame, path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a sweep as CSV and JSON (records), as one output."""
    path = Path(path)
    csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
    records = json.dumps(json.loads(frame.to_json(orient="records")), indent=1) + "\n"
    write_all({csv_path: frame.to_csv(index=False), json_path: records}, overwrite=overwrite)
    return csv_path, json_path
