"""How well a judge agrees with labels read by hand: accuracy, Cohen's kappa, confusion matrix.

Pure functions of two label sequences. Kappa corrects the observed agreement for the
agreement two raters with the same label frequencies would reach by chance:
``kappa = (p_o - p_e) / (1 - p_e)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def confusion(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Counts, rows = gold label, columns = predicted label, both in ``labels`` order.

    >>> confusion(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
    [[1, 1], [0, 1]]
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({x for x in (*gold, *predicted) if x not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among {list(labels)}")
    table = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        table[index[g]][index[p]] += 1
    return table


def cohen_kappa(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Cohen's kappa; 1.0 when both raters use a single label and agree everywhere.

    >>> round(cohen_kappa(["y"] * 20 + ["n"] * 15 + ["y"] * 5 + ["n"] * 10,
    ...                   ["y"] * 20 + ["n"] * 15 + ["n"] * 5 + ["y"] * 10, ["y", "n"]), 4)
    0.4
    """
    table = confusion(gold, predicted, labels)
    n = sum(map(sum, table))
    if n == 0:
        raise ValueError("no labels to compare")
    observed = sum(table[i][i] for i in range(len(labels))) / n
    rows = [sum(r) / n for r in table]
    cols = [sum(table[i][j] for i in range(len(labels))) / n for j in range(len(labels))]
    expected = sum(r * c for r, c in zip(rows, cols, strict=True))
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


@dataclass(frozen=True)
class Agreement:
    """A judge against the gold labels on one subset."""

    n: int
    accuracy: float
    kappa: float
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "kappa": self.kappa,
            "labels": list(self.labels),
            "confusion": [list(r) for r in self.confusion],
        }


def agreement(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> Agreement:
    table = confusion(gold, predicted, labels)
    n = len(gold)
    return Agreement(
        n=n,
        accuracy=sum(g == p for g, p in zip(gold, predicted, strict=True)) / n if n else float("nan"),
        kappa=cohen_kappa(gold, predicted, labels) if n else float("nan"),
        labels=tuple(labels),
        confusion=tuple(tuple(r) for r in table),
    )
