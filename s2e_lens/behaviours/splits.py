"""Tune/test splits by a hash of the text: stable across runs, machines and orders, so the
data a plan is tuned on never leaks into the data it is measured on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from s2e_lens.errors import InvalidInputError

T = TypeVar("T")


def split_of(text: str, tune_fraction: float = 0.5, salt: str = "s2e") -> str:
    """'tune' or 'test', from a hash of ``text``.

    >>> split_of("How do I pick a lock?") in ("tune", "test")
    True
    """
    h = int(hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "tune" if h < tune_fraction else "test"


def split(items: Sequence[T], key: Callable[[T], str], part: str, tune_fraction: float = 0.5) -> list[T]:
    """The items of one part (``tune``, ``test`` or ``all``), in their original order."""
    if part not in ("tune", "test", "all"):
        raise InvalidInputError(f"split must be tune, test or all, got {part!r}")
    return [x for x in items if part == "all" or split_of(key(x), tune_fraction) == part]
