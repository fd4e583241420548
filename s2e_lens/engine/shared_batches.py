"""Shared batches: the measures of several interventions run together, and every model call
they make runs once for all of them.

A behaviour's suite measures one model at a time: it generates for its prompts, scores its
multiple-choice items and its KL texts. :class:`SharedBatches` runs one suite measure per
intervention, each in its own thread, on a *view* of the model that knows its slot (a
:class:`~s2e_lens.models.loaded.LoadedModel` whose ``shared`` is set). When the engine's
generation or scoring is called on a view, the call waits until every view still measuring has
made its call; the calls are then run as one, in mixed batches (:mod:`s2e_lens.engine.mixed`:
each row under its own intervention), and each view gets its own part of the result. Measures
make the same calls in the same order (same prompts, same settings), so each wait gathers one
call per intervention; calls that differ are run one group at a time.

Only one thread computes at a time (the last one to arrive runs the merged call while the
others wait), so the threads add no contention for the cores: they only let the measures stay
plain functions of a model.

What changes against one intervention at a time: edits are added per row instead of folded
into the weights, and rows share batches with other rows; greedy tokens are the same unless two
logits tie within float rounding (tests hold it to exact tokens on the tiny models and 99% on
the default one). Sampled generations draw from the same distributions but from one random
stream for the whole batch, so their draws differ from one-at-a-time runs (they are still
reproducible from the seed).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from s2e_lens.engine.mixed import MixedHooks, RowEffect, RowSlots
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel

T = TypeVar("T")
MIXED_BATCH_SIZE = 64  # sequences per batch of shared calls that set no batch size, on the CPU
Runner = Callable[[Any, list[tuple[int, Any]]], list[Any]]  # (key, [(slot, payload)]) -> one result per slot


class _Abandoned(Exception):
    """Another slot's measure failed: the others stop at their next call."""


@dataclass(frozen=True)
class SharedSlot:
    """What a view of the model carries: its batches and its slot. The engine calls these
    instead of running alone (see :func:`s2e_lens.engine.generation.generate`)."""

    batches: SharedBatches
    slot: int

    def generate(self, prompts: Sequence[str], settings: Any) -> list[Any]:
        return self.batches.call(self.slot, ("generate", settings), list(prompts), self.batches.run_generate)

    def score(self, pairs: Sequence[tuple[list[int], list[int]]], batch_size: Any) -> list[Any]:
        return self.batches.call(self.slot, ("score", batch_size), list(pairs), self.batches.run_score)

    def kl_by_text(self, reference: Any) -> list[list[float]]:
        return self.batches.call(self.slot, ("kl", id(reference)), reference, self.batches.run_kl)


class SharedBatches:
    """Measure several interventions of one model in shared batches (module docstring).

    ``batch_size``: sequences per batch of the merged calls whose caller set none
    (``MIXED_BATCH_SIZE`` on the CPU; unset, i.e. "auto", on accelerators). ``timings`` (if
    given) receives the seconds the merged calls took, by kind (generate, score, kl)."""

    def __init__(
        self,
        model: LoadedModel,
        effects: Sequence[RowEffect],
        *,
        batch_size: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        if model.shared is not None:
            raise InvalidInputError("shared batches cannot be nested")
        self.model = model
        self.hooks = MixedHooks(model, effects)
        self.batch_size = batch_size or (MIXED_BATCH_SIZE if model.device.type == "cpu" else None)
        self._cond = threading.Condition()
        self._live: set[int] = set()
        self._pending: dict[int, tuple[Hashable, Any, Runner]] = {}
        self._results: dict[int, Any] = {}
        self._failed = False
        self.timings = timings

    def view(self, slot: int) -> LoadedModel:
        """The model as slot ``slot`` sees it (shares everything with the model but ``shared``)."""
        return dataclasses.replace(self.model, shared=SharedSlot(self, slot))

    # ------------------------------------------------------------------------- measuring

    def measure(self, fn: Callable[[LoadedModel], T]) -> list[T]:
        """``fn(view)`` for every slot, in shared batches; the results in slot order. If any
        slot's ``fn`` raises, the others stop at their next call and the first error is raised
        (with ``slot`` attached as ``error.slot``)."""
        n = self.hooks.n_slots
        results: list[Any] = [None] * n
        errors: dict[int, BaseException] = {}
        self._live = set(range(n))

        def work(slot: int) -> None:
            try:
                results[slot] = fn(self.view(slot))
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                errors[slot] = e
                with self._cond:
                    self._failed = True
            finally:
                self._finished(slot)

        with self.hooks.active():
            threads = [threading.Thread(target=work, args=(s,), daemon=True, name=f"s2e-slot-{s}") for s in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        failed = next((s for s in sorted(errors) if not isinstance(errors[s], _Abandoned)), None)
        if failed is not None:
            errors[failed].slot = failed  # type: ignore[attr-defined]
            raise errors[failed]
        return results

    def call(self, slot: int, key: Hashable, payload: Any, runner: Runner) -> Any:
        """Slot ``slot``'s part of the merged call ``key``: waits for the other live slots."""
        with self._cond:
            if self._failed:
                raise _Abandoned
            self._pending[slot] = (key, payload, runner)
            self._flush_if_ready()
            while slot not in self._results:
                self._cond.wait()
            result = self._results.pop(slot)
        if isinstance(result, BaseException):
            raise result
        return result

    def _finished(self, slot: int) -> None:
        with self._cond:
            self._live.discard(slot)
            self._flush_if_ready()

    def _flush_if_ready(self) -> None:
        """Under the lock: once every live slot waits, run their calls (grouped by key)."""
        if not self._pending or set(self._pending) != self._live:
            return
        pending, self._pending = self._pending, {}
        groups: dict[Hashable, list[int]] = {}
        for slot, (key, _, _) in sorted(pending.items()):
            groups.setdefault(key, []).append(slot)
        for slots in groups.values():
            runner = pending[slots[0]][2]
            try:
                if self._failed:
                    raise _Abandoned
                began = time.perf_counter()
                outs = runner(pending[slots[0]][0], [(s, pending[s][1]) for s in slots])
                if self.timings is not None:
                    kind = str(pending[slots[0]][0][0])  # type: ignore[index]
                    self.timings[kind] = self.timings.get(kind, 0.0) + time.perf_counter() - began
                self._results.update(zip(slots, outs, strict=True))
            except BaseException as e:  # noqa: BLE001 - each waiting slot re-raises it
                self._results.update({s: e for s in slots})
        self._cond.notify_all()

    # ------------------------------------------------------------------------- merged calls

    def _size(self, asked: Any) -> Any:
        return asked if asked is not None else self.batch_size

    def run_generate(self, key: Any, parts: list[tuple[int, Any]]) -> list[Any]:
        """One generation for every slot's prompts, longest prompts together (less padding)."""
        from s2e_lens.engine.generation import generate

        settings = key[1]
        flat = [(slot, j, p) for slot, prompts in parts for j, p in enumerate(prompts)]
        order = sorted(range(len(flat)), key=lambda i: len(self.model.prompt_ids(flat[i][2], settings.system)))
        merged = dataclasses.replace(settings, batch_size=self._size(settings.batch_size))
        rows = RowSlots(self.hooks, [flat[i][0] for i in order])
        gens = generate(self.model, [flat[i][2] for i in order], merged, rows=rows)
        n = settings.n
        out: dict[int, list[Any]] = {slot: [None] * (len(prompts) * n) for slot, prompts in parts}
        for rank, i in enumerate(order):
            slot, j, _ = flat[i]
            out[slot][j * n : (j + 1) * n] = gens[rank * n : (rank + 1) * n]
        return [out[slot] for slot, _ in parts]

    def run_score(self, key: Any, parts: list[tuple[int, Any]]) -> list[Any]:
        """One scoring pass over every slot's (context, continuation) pairs."""
        from s2e_lens.engine.scoring import score_continuations

        flat = [(slot, pair) for slot, pairs in parts for pair in pairs]
        rows = RowSlots(self.hooks, [slot for slot, _ in flat])
        scored = score_continuations(self.model, [pair for _, pair in flat], batch_size=self._size(key[1]), rows=rows)
        out, at = [], 0
        for _, pairs in parts:
            out.append(scored[at : at + len(pairs)])
            at += len(pairs)
        return out

    def run_kl(self, key: Any, parts: list[tuple[int, Any]]) -> list[Any]:
        """KL to the reference on its texts, for every slot, in one mixed pass."""
        reference = parts[0][1]
        return reference.kl_by_text_mixed(self.model, self.hooks, [slot for slot, _ in parts])
