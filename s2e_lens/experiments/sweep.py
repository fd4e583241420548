"""Sweeps: screen candidate edits cheaply (KL on benign text), then measure every
intervention with a behaviour's suite. The comparison of the results is pure
(:mod:`s2e_lens.core.comparison`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pandas as pd
from tqdm.auto import tqdm

from s2e_lens.behaviours.base import GENERATIONS, ITEMS, Suite
from s2e_lens.core.comparison import DEGENERATE_LIMIT
from s2e_lens.core.intervals import rate_interval
from s2e_lens.engine.interventions import Intervention, unedited
from s2e_lens.engine.scoring import KLReference
from s2e_lens.engine.shared_batches import SharedBatches
from s2e_lens.models.loaded import LoadedModel

Records = dict[str, dict[str, Any]]  # label -> {"items": per-item scores, "generations": records}
T = TypeVar("T")


def sharing(interventions: Sequence[Intervention], shared: bool = True) -> bool:
    """Whether :func:`measure_each` runs these in shared batches: asked for, more than one, and
    each one able to act on some rows of a batch only."""
    return shared and len(interventions) > 1 and all(i.can_share for i in interventions)


def _shares(suite: Suite, shared: bool | None) -> bool:
    """``shared`` as asked (None: yes), and only where the suite is ``shareable``."""
    return suite.shareable and shared is not False


def measure_each(
    model: LoadedModel,
    interventions: Sequence[Intervention],
    fn: Callable[[LoadedModel], T],
    *,
    shared: bool = True,
    progress: bool = False,
    desc: str = "interventions",
    timings: dict[str, float] | None = None,
) -> list[T]:
    """``fn(model)`` under each intervention, in order. With ``shared`` (and where every
    intervention can act on some rows of a batch: steering, edits, ITI, the unedited model) the
    calls run together in shared batches (:mod:`s2e_lens.engine.shared_batches`; ``timings``
    receives the seconds of their merged calls by kind); otherwise one intervention at a time,
    each applied and removed around its call."""
    if sharing(interventions, shared):
        effects = []
        for i in interventions:
            i.check(model)
            effect = i.row_effect()
            assert effect is not None  # sharing() asked can_share
            effects.append(effect)
        batches = SharedBatches(model, effects, timings=timings)
        try:
            return batches.measure(fn)
        except Exception as e:
            slot = getattr(e, "slot", None)
            if slot is not None:
                e.add_note(f"while measuring {interventions[slot].label!r} (in shared batches)")
            raise
    out = []
    for item in tqdm(interventions, desc=desc, disable=not progress):
        with item.active(model):
            out.append(fn(model))
    return out


def prune(
    model: LoadedModel,
    candidates: Sequence[Intervention],
    reference: KLReference,
    *,
    max_kl: float,
    keep: int,
    shared: bool = True,
) -> tuple[list[Intervention], pd.DataFrame]:
    """Cheap screening before any generation: KL on a few benign texts for each candidate.
    Drops candidates whose KL exceeds ``max_kl`` (they break the model), then keeps ``keep``
    of the survivors spread evenly over their KL range (mild to strong), so the frontier is
    sampled across its length. Returns the kept candidates and the screening table."""
    kls = measure_each(model, candidates, reference.kl, shared=shared)
    rows = [{**c.describe(), "screen_kl": kl, "kept": False} for c, kl in zip(candidates, kls, strict=True)]
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
    records: Records | None = None,
    include_unedited: bool = True,
    shared: bool | None = None,
    timings: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Measure every intervention (the unedited model is always included). A row whose
    ``degenerate`` share exceeds ``max_degenerate`` gets ``degenerate_flag`` (see
    :func:`s2e_lens.core.comparison.sane`). Where the suite gives per-item scores, the row
    gets 95% intervals (``attribute_low/high``, ``utility_low/high``: Wilson over prompts, or
    the bootstrap over prompts with several samples each); ``records`` (if given) receives
    each label's per-item scores and generation records. ``include_unedited=False`` leaves the
    unedited model out (when another sweep of the same suite measured it). ``shared``: every
    intervention in shared batches (:func:`measure_each`; None: where the suite is
    ``shareable``); each row's ``seconds`` is then its share of the whole evaluation's time, and
    ``timings`` (if given) receives the seconds of the merged calls by kind."""
    shared = _shares(suite, shared)
    todo = list(interventions)
    if include_unedited and not any(i.kind == "none" for i in todo):
        todo.insert(0, unedited())
    rows = []
    took: list[float] = []

    def timed(m: LoadedModel) -> dict[str, Any]:
        began = time.perf_counter()
        figures = suite.measure(m)
        took.append(time.perf_counter() - began)
        return figures

    started = time.perf_counter()
    measured = measure_each(
        model, todo, timed, shared=shared, progress=progress, desc=f"{suite.behaviour} sweep", timings=timings
    )
    together = sharing(todo, shared)
    each = [(time.perf_counter() - started) / len(todo)] * len(todo) if together else took
    for item, figures, seconds in zip(todo, measured, each, strict=True):
        items = figures.pop(ITEMS, {})
        generations = figures.pop(GENERATIONS, [])
        row = {**item.describe(), **figures}
        for axis, scores in items.items():
            ci = rate_interval(scores)
            if abs(ci.estimate - float(row[axis])) > 1e-9:  # the items must be what the figure averages
                raise AssertionError(f"{item.label}: per-item {axis} {ci.estimate} != {row[axis]}")
            row[f"{axis}_low"], row[f"{axis}_high"] = ci.low, ci.high
        row["degenerate_flag"] = bool(row.get("degenerate", 0.0) > max_degenerate)
        if generations:
            row["generated_tokens"] = sum(int(g.get("n_tokens", 0)) for g in generations)
        rows.append({**row, "seconds": round(seconds, 1)})
        if records is not None:
            records[item.label] = {"items": items, "generations": generations}
    # nothing to measure (e.g. every candidate failed the screen): an empty table, same columns
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["kind", "label", "attribute", "utility", "seconds"])


def paper_selection(
    model: LoadedModel,
    suite: Suite,
    candidates: Sequence[Intervention],
    *,
    top: int,
    progress: bool = True,
    shared: bool | None = None,
) -> tuple[list[Intervention], pd.DataFrame]:
    """The reference's selection: every candidate scored on the attribute alone (no KL
    screen), the ``top`` by attribute kept for the full evaluation (attribute and utility).
    Returns the kept candidates and the table of every candidate's attribute."""
    measure = suite.attribute_only or suite.attribute
    shared = _shares(suite, shared)
    figures = measure_each(
        model, candidates, measure, shared=shared, progress=progress, desc="attribute of every candidate"
    )
    rows = [
        {**c.describe(), "attribute": f["attribute"], "kept": False} for c, f in zip(candidates, figures, strict=True)
    ]
    frame = pd.DataFrame(rows)
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["attribute"])[:top]  # stable: grid order breaks ties
    for i in order:
        frame.loc[i, "kept"] = True
    return [candidates[i] for i in sorted(order)], frame


def heldout_selection(results: pd.DataFrame, candidates: Sequence[Intervention], *, keep: int) -> list[Intervention]:
    """Held-out selection: from the candidates measured on the tune split, the Steer2Edit
    points on the tune split's Pareto frontier (degenerate ones excluded), at most ``keep``
    of them spread along it; they are then measured on the test split."""
    from s2e_lens.core.comparison import pareto_frontier, points, sane

    frontier = pareto_frontier(points(sane(results), "edit"))
    if len(frontier) > keep:
        step = (len(frontier) - 1) / (keep - 1) if keep > 1 else 0
        frontier = [frontier[round(j * step)] for j in range(keep)]
    labels = {p.label for p in frontier}
    return [c for c in candidates if c.label in labels]
