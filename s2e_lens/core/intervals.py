"""Confidence intervals as pure functions: Wilson intervals for proportions over prompts, a
percentile bootstrap over prompts for rates with several samples per prompt, and a paired
bootstrap for differences between two methods scored on the same prompts."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from s2e_lens.errors import InvalidInputError

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """An estimate and its two-sided interval (95% unless stated)."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval for a proportion of ``successes`` out of ``n``.

    >>> str(wilson(0, 10)), str(wilson(10, 10))
    ('0.000 [0.000, 0.278]', '1.000 [0.722, 1.000]')
    """
    if n < 1:
        raise InvalidInputError("a proportion of no trials has no interval")
    if not 0 <= successes <= n:
        raise InvalidInputError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, not 1 - 1e-16
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high)


def _rows(values: Sequence[Sequence[float]] | np.ndarray, what: str) -> np.ndarray:
    table = np.asarray(values, dtype=float)
    if table.ndim == 1:
        table = table[:, None]
    if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < 1:
        raise InvalidInputError(f"{what}: give one row of scores per prompt")
    return table


def bootstrap(
    per_prompt: Sequence[Sequence[float]] | np.ndarray,
    *,
    statistic: Callable[[np.ndarray], float] | None = None,
    n_boot: int = BOOTSTRAP_SAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap over prompts: ``per_prompt`` has one row per prompt (e.g. its n
    samples' 0/1 verdicts); prompts are resampled with replacement, each keeping its row. The
    statistic defaults to the mean of all entries."""
    table = _rows(per_prompt, "bootstrap")
    stat = statistic or (lambda t: float(t.mean()))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, table.shape[0], size=(n_boot, table.shape[0]))
    draws = np.array([stat(table[i]) for i in idx])
    tail = (1 - level) / 2
    return Interval(stat(table), float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail)))


def paired_bootstrap(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray,
    *,
    statistic: Callable[[np.ndarray, np.ndarray], float] | None = None,
    n_boot: int = BOOTSTRAP_SAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval of ``statistic(a, b)`` (default: mean(a) - mean(b)) when both methods were
    scored on the same prompts: each draw resamples prompt indices once and uses them for both,
    so the prompts' shared difficulty cancels."""
    ta, tb = _rows(a, "paired bootstrap (a)"), _rows(b, "paired bootstrap (b)")
    if ta.shape[0] != tb.shape[0]:
        raise InvalidInputError(f"paired bootstrap needs the same prompts: {ta.shape[0]} vs {tb.shape[0]} rows")
    stat = statistic or (lambda x, y: float(x.mean() - y.mean()))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ta.shape[0], size=(n_boot, ta.shape[0]))
    draws = np.array([stat(ta[i], tb[i]) for i in idx])
    tail = (1 - level) / 2
    return Interval(stat(ta, tb), float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail)))


def pooled(rows: Sequence[Sequence[float]] | np.ndarray, what: str = "pooled mean") -> tuple[np.ndarray, np.ndarray]:
    """Each row's sum and length, for rows of any lengths (e.g. a text's KL at each of its
    positions): the pooled mean of any resampling of rows is ``sums[i].sum() / counts[i].sum()``.

    >>> sums, counts = pooled([[1.0, 3.0], [2.0]])
    >>> sums.tolist(), counts.tolist(), float(sums.sum() / counts.sum())
    ([4.0, 2.0], [2.0, 1.0], 2.0)
    """
    if len(rows) < 1 or any(len(r) < 1 for r in rows):
        raise InvalidInputError(f"{what}: give one non-empty row of scores per prompt or text")
    sums = np.array([float(np.sum(np.asarray(r, dtype=float))) for r in rows])
    counts = np.array([float(len(r)) for r in rows])
    return sums, counts


def pooled_bootstrap(
    rows: Sequence[Sequence[float]], *, n_boot: int = BOOTSTRAP_SAMPLES, level: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile bootstrap of the mean of all entries when rows differ in length: rows are
    resampled with replacement, each keeping all its entries, so a long text weighs as much in
    a draw as it does in the estimate."""
    sums, counts = pooled(rows, "pooled bootstrap")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    draws = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    tail = (1 - level) / 2
    return Interval(
        float(sums.sum() / counts.sum()), float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))
    )


def rate_interval(per_prompt: Sequence[Sequence[float]]) -> Interval:
    """A rate's (or mean's) 95% interval: Wilson when each prompt has one 0/1 score, the
    bootstrap over prompts for several samples per prompt or scores that are not 0/1, and the
    pooled bootstrap when rows differ in length (per-position scores of texts).

    >>> str(rate_interval([[1.0], [0.0], [1.0], [1.0]]))
    '0.750 [0.301, 0.954]'
    """
    if len({len(r) for r in per_prompt}) > 1:
        return pooled_bootstrap(per_prompt)
    table = _rows(per_prompt, "rate interval")
    if table.shape[1] == 1 and np.isin(table, (0.0, 1.0)).all():
        return wilson(int(table.sum()), table.shape[0])
    return bootstrap(table)
