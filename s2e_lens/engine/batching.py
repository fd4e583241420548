"""Batch sizes: fixed on the CPU, "auto" on accelerators (the largest that fits, found by
halving on out-of-memory)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Literal, TypeVar

import torch

from s2e_lens.errors import InvalidInputError, S2EError

T = TypeVar("T")
R = TypeVar("R")
BatchSize = int | Literal["auto"] | None  # None: "auto" on accelerators, the fixed default on the CPU
AUTO_START = 256  # the first size "auto" tries


class OutOfMemoryError(S2EError):
    """Even one sample at a time does not fit."""


def _nothing_fits(what: str) -> OutOfMemoryError:
    return OutOfMemoryError(
        f"{what} runs out of memory even one sample at a time; use a smaller model, a lower "
        "precision (dtype=torch.bfloat16), or spread it over devices (device_map='auto')"
    )


def resolve(batch_size: BatchSize, device: torch.device, default: int) -> int | Literal["auto"]:
    """``None`` becomes "auto" on accelerators and ``default`` on the CPU.

    >>> cpu, cuda = torch.device("cpu"), torch.device("cuda")
    >>> resolve(None, cpu, 8), resolve(None, cuda, 8), resolve(4, cuda, 8)
    (8, 'auto', 4)
    """
    if batch_size is None:
        return default if device.type == "cpu" else "auto"
    if batch_size == "auto":
        return "auto"
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    return batch_size


def largest_that_fits(run: Callable[[int], T], start: int, *, what: str) -> tuple[T, int]:
    """``run(size)`` with ``size = start``, halved after each out-of-memory error; returns the
    result and the size that worked. ``run`` must start over each time (no partial state)."""
    size = max(1, start)
    while True:
        try:
            return run(size), size
        except torch.OutOfMemoryError:
            if size == 1:
                raise _nothing_fits(what) from None
            size //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def in_chunks(
    items: Sequence[T],
    batch_size: int | Literal["auto"],
    run: Callable[[Sequence[T]], R],
    *,
    what: str,
) -> Iterator[tuple[Sequence[T], R]]:
    """``run`` over consecutive chunks of ``items``, yielding ``(chunk, result)``. A fixed
    size is used as given. With "auto" the first chunk has ``min(AUTO_START, len(items))``
    items; a chunk that runs out of memory is retried in halves, and the smaller size is kept
    for the rest (each chunk is independent, so nothing is computed twice that was kept).

    >>> [r for _, r in in_chunks([1, 2, 3, 4, 5], 2, sum, what="sums")]
    [3, 7, 5]
    """
    size = min(AUTO_START, max(1, len(items))) if batch_size == "auto" else batch_size
    lo = 0
    while lo < len(items):
        chunk = items[lo : lo + size]
        try:
            result = run(chunk)
        except torch.OutOfMemoryError:
            if batch_size != "auto":
                raise OutOfMemoryError(
                    f"{what} ran out of memory at batch size {size}; give a smaller batch size or 'auto'"
                ) from None
            if size == 1:
                raise _nothing_fits(what) from None
            size //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        yield chunk, result
        lo += len(chunk)
