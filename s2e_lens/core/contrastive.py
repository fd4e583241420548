"""Contrastive sets: the positive (wanted) and negative (prompt, response) pairs of a behaviour.
Their encoding into token ids lives with the tokenizer (:mod:`s2e_lens.models.tokens`)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from s2e_lens.errors import S2EError


class ContrastiveSetError(S2EError, ValueError):
    """A contrastive set that cannot be used (empty, blank responses, ...)."""


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str


@dataclass(frozen=True)
class ContrastiveSet:
    """Positive pairs show the behaviour we want; negative pairs show its opposite."""

    positive: tuple[Pair, ...]
    negative: tuple[Pair, ...]
    provenance: dict[str, Any] = field(default_factory=dict)  # where the data came from

    @classmethod
    def from_pairs(
        cls,
        positive: Iterable[Pair | tuple[str, str]],
        negative: Iterable[Pair | tuple[str, str]],
        provenance: dict[str, Any] | None = None,
    ) -> ContrastiveSet:
        def norm(rows: Iterable[Pair | tuple[str, str]], side: str) -> tuple[Pair, ...]:
            out = []
            for i, row in enumerate(rows):
                pair = row if isinstance(row, Pair) else Pair(*row)
                if not isinstance(pair.prompt, str) or not isinstance(pair.response, str):
                    raise ContrastiveSetError(f"{side} pair {i}: prompt and response must be strings")
                out.append(pair)
            if not out:
                raise ContrastiveSetError(
                    f"the {side} set is empty: a steering vector is a difference of two means, "
                    "so both sets need at least one (prompt, response) pair"
                )
            return tuple(out)

        return cls(norm(positive, "positive"), norm(negative, "negative"), dict(provenance or {}))

    def sample(self, n: int, seed: int = 0) -> ContrastiveSet:
        """At most ``n`` pairs of each side, drawn without replacement (a seeded draw, kept in
        the set's order); a side with ``n`` pairs or fewer is kept whole.

        >>> s = ContrastiveSet.from_pairs([("p", str(i)) for i in range(5)], [("q", "x")])
        >>> [p.response for p in s.sample(3, seed=1).positive] == [p.response for p in s.sample(3, seed=1).positive]
        True
        >>> len(s.sample(3).positive), len(s.sample(3).negative)
        (3, 1)
        """
        if n < 1:
            raise ContrastiveSetError(f"n must be at least 1, got {n}")
        rng = random.Random(seed)

        def draw(side: tuple[Pair, ...]) -> tuple[Pair, ...]:
            if len(side) <= n:
                return side
            return tuple(side[i] for i in sorted(rng.sample(range(len(side)), n)))

        return ContrastiveSet(draw(self.positive), draw(self.negative), {**self.provenance, "sample": [n, seed]})

    def head(self, n: int) -> ContrastiveSet:
        """The first ``n`` pairs of each side (for quick looks and small CI runs)."""
        if n < 1:
            raise ContrastiveSetError(f"n must be at least 1, got {n}")
        return ContrastiveSet(self.positive[:n], self.negative[:n], {**self.provenance, "head": n})
