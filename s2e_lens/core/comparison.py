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

import pandas as pd


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


def points(frame: pd.DataFrame, kind: str, utility: str = "utility") -> list[Point]:
    sub = frame[frame["kind"] == kind]
    rows = zip(sub["attribute"], sub[utility], sub["label"], strict=True)
    return [Point(float(a), float(u), str(lab)) for a, u, lab in rows]


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
