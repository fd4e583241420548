"""Comparing Steer2Edit with activation steering: Pareto frontiers, the attribute gain at
matched utility, and which results take part (pure functions of result tables).

A results table has one row per evaluated intervention with at least the columns ``kind``
(``none`` / ``steer`` / ``edit`` / baselines), ``label``, ``attribute`` and ``utility``
(higher is better on both), and optionally ``degenerate_flag``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from s2e_lens.core.intervals import BOOTSTRAP_SAMPLES, Interval, pooled
from s2e_lens.errors import InvalidInputError


@dataclass(frozen=True)
class Point:
    """One configuration's result: higher ``attribute`` and higher ``utility`` are better."""

    attribute: float
    utility: float
    label: str = ""


def pareto_frontier(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes (ties kept), sorted by utility.

    >>> pts = [Point(0.2, 0.9, "a"), Point(0.5, 0.5, "b"), Point(0.1, 0.4, "c")]
    >>> [p.label for p in pareto_frontier(pts)]
    ['b', 'a']
    """
    frontier = [
        p
        for p in points
        if not any(
            q.attribute >= p.attribute
            and q.utility >= p.utility
            and (q.attribute > p.attribute or q.utility > p.utility)
            for q in points
        )
    ]
    return sorted(frontier, key=lambda p: (p.utility, p.attribute))


@dataclass(frozen=True)
class MatchedGain:
    utility: float  # the steering point's utility level
    steering: Point
    edit: Point | None  # best Steer2Edit point with utility >= the level (None if none)

    @property
    def gain(self) -> float:
        return math.nan if self.edit is None else self.edit.attribute - self.steering.attribute


def gains_at_matched_utility(steering: Sequence[Point], edits: Sequence[Point]) -> list[MatchedGain]:
    """For each utility level reached by steering, the best edit attribute at equal or better
    utility, and the difference (the paper's headline comparison).

    >>> steer = [Point(0.1, 0.5, "unedited"), Point(0.6, 0.3, "gamma=2")]
    >>> edits = [Point(0.4, 0.45, "e1")]
    >>> matches = gains_at_matched_utility(steer, edits)
    >>> [(m.steering.label, m.edit.label if m.edit else None, round(m.gain, 2)) for m in matches]
    [('gamma=2', 'e1', -0.2), ('unedited', None, nan)]
    """
    out = []
    for s in sorted(steering, key=lambda p: p.utility):
        eligible = [e for e in edits if e.utility >= s.utility]
        best = max(eligible, key=lambda e: (e.attribute, e.utility)) if eligible else None
        out.append(MatchedGain(s.utility, s, best))
    return out


def mean_gain(matches: Sequence[MatchedGain]) -> float:
    """Mean gain over the utility levels where an edit matched (nan if none did)."""
    gains = [m.gain for m in matches if m.edit is not None]
    return sum(gains) / len(gains) if gains else math.nan


def frontier_attribute(frontier: Sequence[Point], utility: float) -> float:
    """The attribute along a Pareto frontier at ``utility``, linearly interpolated between its
    points (nan outside the utility range the frontier spans).

    >>> f = [Point(0.8, 0.2), Point(0.4, 0.6)]
    >>> frontier_attribute(f, 0.4), frontier_attribute(f, 0.7)
    (0.6, nan)
    """
    pts = sorted(frontier, key=lambda p: (p.utility, -p.attribute))
    if not pts or not pts[0].utility <= utility <= pts[-1].utility:
        return math.nan
    for lo, hi in zip(pts, pts[1:], strict=False):
        if lo.utility <= utility <= hi.utility:
            if hi.utility == lo.utility:
                return max(lo.attribute, hi.attribute)
            t = (utility - lo.utility) / (hi.utility - lo.utility)
            return lo.attribute + t * (hi.attribute - lo.attribute)
    return max(p.attribute for p in pts if p.utility == utility)


@dataclass(frozen=True)
class FrontierGap:
    """Steer2Edit's frontier minus steering's, over the utility range both reach."""

    low: float  # the shared utility range
    high: float
    mean: float  # the mean attribute difference over that range
    largest: float  # the largest difference (by absolute value) and the utility where it occurs
    at: float
    edit_mean: float = math.nan  # each frontier's mean attribute over the range (mean = their difference)
    steering_mean: float = math.nan

    def to_dict(self) -> dict[str, float]:
        return {
            "low": self.low,
            "high": self.high,
            "mean": self.mean,
            "largest": self.largest,
            "at": self.at,
            "edit_mean": self.edit_mean,
            "steering_mean": self.steering_mean,
        }


def frontier_gap(steering: Sequence[Point], edits: Sequence[Point], n_grid: int = 201) -> FrontierGap | None:
    """Compare the two Pareto frontiers where both exist: on ``n_grid`` evenly spaced
    utilities over the range both frontiers span, the edit frontier's attribute minus the
    steering frontier's (each linearly interpolated). None when the ranges do not overlap.

    >>> steer = [Point(0.9, 0.2), Point(0.5, 0.6)]
    >>> edit = [Point(0.7, 0.4), Point(0.6, 0.8)]
    >>> g = frontier_gap(steer, edit)  # shared range [0.4, 0.6]: 0.7 - 0.7 up to 0.65 - 0.5
    >>> round(g.low, 2), round(g.high, 2), round(g.mean, 3), round(g.largest, 3), round(g.at, 2)
    (0.4, 0.6, 0.075, 0.15, 0.6)
    >>> round(g.edit_mean, 3), round(g.steering_mean, 3)  # edit 0.7 -> 0.65, steering 0.7 -> 0.5
    (0.675, 0.6)
    """
    fs, fe = pareto_frontier(steering), pareto_frontier(edits)
    if not fs or not fe:
        return None
    low = max(fs[0].utility, fe[0].utility)
    high = min(fs[-1].utility, fe[-1].utility)
    if low > high:
        return None
    # both ends exactly (a rounded end just past a frontier's last point would read as nan)
    grid = [low] if high == low else [low + (high - low) * i / (n_grid - 1) for i in range(n_grid - 1)] + [high]
    edit = [frontier_attribute(fe, u) for u in grid]
    steer = [frontier_attribute(fs, u) for u in grid]
    diffs = [e - s for e, s in zip(edit, steer, strict=True)]
    k = max(range(len(diffs)), key=lambda i: abs(diffs[i]))
    n = len(grid)
    return FrontierGap(low, high, sum(diffs) / n, diffs[k], grid[k], sum(edit) / n, sum(steer) / n)


# label -> {"attribute" | "utility" | "kl": per-item rows (per text and position for "kl")}
Items = dict[str, dict[str, "np.ndarray | list[list[float]]"]]


@dataclass(frozen=True)
class GapEstimate:
    """The frontier gap on the run's prompts, with a paired bootstrap interval of its mean
    (prompts and items resampled once per draw, the same for every intervention). ``axis``
    names what the frontiers were matched on ("utility", or "closeness" for -KL)."""

    gap: FrontierGap
    interval: Interval
    draws_without_overlap: int  # bootstrap draws where the frontiers shared no utility range
    n_boot: int
    axis: str = "utility"

    def verdict(self) -> str:
        """In words: which method is ahead over the shared range, and whether the interval
        excludes 0."""
        iv, where = self.interval, f"over the {self.axis} range both reach"
        if iv.low > 0:
            return f"Steer2Edit is ahead of steering {where} (the 95% interval excludes 0)"
        if iv.high < 0:
            return f"steering is ahead of Steer2Edit {where} (the 95% interval excludes 0)"
        return "no difference can be claimed: the 95% interval includes 0"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.gap.to_dict(),
            "axis": self.axis,
            "interval": self.interval.to_dict(),
            "draws_without_overlap": self.draws_without_overlap,
            "n_boot": self.n_boot,
            "verdict": self.verdict(),
        }


# what a frontier can be matched on: the item key, its sign (higher must mean better) and its name
MATCH_AXES: dict[str, tuple[str, float, str]] = {
    "utility": ("utility", 1.0, "utility"),
    "kl": ("kl", -1.0, "closeness"),  # -KL to the unedited model on benign text
}


def frontier_gap_with_interval(
    frame: pd.DataFrame,
    items: Items,
    *,
    match: str = "utility",
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    n_grid: int = 101,
) -> GapEstimate | None:
    """:func:`frontier_gap` of the sane rows (steering and the unedited model against the
    edits), with a paired bootstrap interval of its mean over prompts and items. ``match``:
    ``"utility"`` (the suite's utility) or ``"kl"`` (closeness to the unedited model, -KL on
    benign text, resampled over its texts; a text's positions stay together). None when the
    frontiers share no range or a sane row lacks per-item scores."""
    if match not in MATCH_AXES:
        raise InvalidInputError(f"match must be one of {', '.join(MATCH_AXES)}, got {match!r}")
    key, sign, axis = MATCH_AXES[match]
    ok = sane(frame)
    rows = ok[ok["kind"].isin(["steer", "none", "edit"])]
    labels = [str(x) for x in rows["label"]]
    if any(lab not in items or not {"attribute", key} <= set(items[lab]) for lab in labels):
        return None
    kinds = dict(zip(labels, rows["kind"], strict=True))
    A = {lab: pooled(items[lab]["attribute"]) for lab in labels}
    U = {lab: pooled(items[lab][key]) for lab in labels}
    n_a, n_u = {len(a[0]) for a in A.values()}, {len(u[0]) for u in U.values()}
    if len(n_a) != 1 or len(n_u) != 1:
        return None  # not the same prompts for every intervention: no paired interval

    def mean(table: tuple[np.ndarray, np.ndarray], i: np.ndarray | slice) -> float:
        return float(table[0][i].sum() / table[1][i].sum())

    def gap_of(ia: np.ndarray | slice, iu: np.ndarray | slice) -> FrontierGap | None:
        pts = {lab: Point(mean(A[lab], ia), sign * mean(U[lab], iu), lab) for lab in labels}
        steer = [p for lab, p in pts.items() if kinds[lab] in ("steer", "none")]
        edit = [p for lab, p in pts.items() if kinds[lab] == "edit"]
        return frontier_gap(steer, edit, n_grid)

    observed = gap_of(slice(None), slice(None))
    if observed is None:
        return None
    rng = np.random.default_rng(seed)
    na, nu = n_a.pop(), n_u.pop()
    means, missing = [], 0
    for _ in range(n_boot):
        g = gap_of(rng.integers(0, na, na), rng.integers(0, nu, nu))
        if g is None:
            missing += 1
        else:
            means.append(g.mean)
    if not means:
        return None
    low, high = (float(np.quantile(means, q)) for q in (0.025, 0.975))
    return GapEstimate(observed, Interval(observed.mean, low, high), missing, n_boot, axis)


# An intervention with more than this share of degenerate generations (metrics.is_degenerate)
# produces broken output, not a trade-off: it is kept out of the comparison, the best-edit
# choice and the headline, and reports list it separately.
DEGENERATE_LIMIT = 0.5


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


def points(
    frame: pd.DataFrame, kind: str | tuple[str, ...], utility: str = "utility", sign: float = 1.0
) -> list[Point]:
    """The rows of ``kind`` (one kind or several) as frontier points: (attribute, sign x the
    ``utility`` column). ``sign=-1`` turns a lower-is-better column (KL) into higher-is-better.

    >>> frame = pd.DataFrame({"kind": ["edit", "steer"], "attribute": [0.5, 0.2], "kl": [0.1, 0.3]})
    >>> frame["label"] = ["e", "s"]
    >>> points(frame, ("edit", "steer"), "kl", sign=-1.0)
    [Point(attribute=0.5, utility=-0.1, label='e'), Point(attribute=0.2, utility=-0.3, label='s')]
    """
    sub = frame[frame["kind"].isin((kind,) if isinstance(kind, str) else kind)]
    rows = zip(sub["attribute"], sub[utility], sub["label"], strict=True)
    return [Point(float(a), sign * float(u), str(lab)) for a, u, lab in rows]


@dataclass
class Comparison:
    """Steer2Edit vs steering on one sweep's results (degenerate interventions excluded and
    named in ``excluded``)."""

    frame: pd.DataFrame
    matches: list[MatchedGain]
    mean_gain: float
    frontier_edit: list[Point]
    frontier_steer: list[Point]
    excluded: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "utility_level": m.utility,
                    "steering": m.steering.label,
                    "steering_attribute": m.steering.attribute,
                    "best_edit": m.edit.label if m.edit else None,
                    "edit_attribute": m.edit.attribute if m.edit else math.nan,
                    "edit_utility": m.edit.utility if m.edit else math.nan,
                    "gain": m.gain,
                }
                for m in self.matches
            ]
        )


def compare(frame: pd.DataFrame, utility: str = "utility") -> Comparison:
    """Gain at matched utility: steering's points (the unedited model counts as gamma = 0)
    against the Steer2Edit points. ``utility`` names the column to match on. Interventions
    whose generations are mostly degenerate take no part (their labels are in ``excluded``)."""
    ok = sane(frame)
    steer = points(ok, "steer", utility) + points(ok, "none", utility)
    edit = points(ok, "edit", utility)
    matches = gains_at_matched_utility(steer, edit)
    return Comparison(
        frame,
        matches,
        mean_gain(matches),
        pareto_frontier(edit),
        pareto_frontier(steer),
        [str(x) for x in degenerate_rows(frame)["label"]],
    )
