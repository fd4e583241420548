"""Mixed batches: every row of a forward pass under its own intervention.

An intervention that is a set of fixed shifts of block outputs (steering, ITI) or a plan of
low-rank updates of the output projections (Steer2Edit, orthogonalisation) can act on some
rows of a batch and not on others. :class:`MixedHooks` holds several such interventions, one
per *slot*, and hooks the model so that each row gets its slot's effect:

- a shift ``s`` at a block output: ``out[r] + s``, exactly what the intervention's own hook adds;
- an update ``Delta W = B @ A`` of an output projection: ``out[r] + (x[r] @ A^T) @ B^T``, with
  ``x`` the projection's input (each head's ``z`` side by side, or the MLP's post-activation).
  Folding the plan into the weights computes ``x @ (W + B A)^T`` instead: the same up to float
  rounding (about 1e-7 relative in float32).

The unedited slot gets nothing added at all, so its rows compute exactly what the unedited
model computes. While the hooks are on, every forward pass must say which slot each row is
(:meth:`MixedHooks.rows`); a pass that does not is refused rather than run without its
interventions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int

from s2e_lens.core.low_rank import LowRankUpdate, low_rank_updates
from s2e_lens.core.plan import EditPlan
from s2e_lens.engine.hooks import Hook, hook_name
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel

INPUT_POINT = {"attn": "z", "mlp": "post"}  # the output projection's input, by kind
OUTPUT_POINT = {"attn": "attn_out", "mlp": "mlp_out"}


@dataclass(frozen=True)
class RowEffect:
    """What one intervention does, in a form that can act on some rows only: shifts of block
    outputs by ``(point, layer)`` and low-rank updates of output projections by ``(kind, layer)``.
    The empty effect is the unedited model."""

    shifts: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    updates: dict[tuple[str, int], LowRankUpdate] = field(default_factory=dict)

    @classmethod
    def of_plans(cls, plans: Sequence[EditPlan]) -> RowEffect:
        """The plans' low-rank updates (:func:`s2e_lens.core.low_rank.low_rank_updates`)."""
        return cls(updates={(u.kind, u.layer): u for u in low_rank_updates(plans)})


def shifted(
    out: Float[torch.Tensor, "batch pos d_model"],
    table: Float[torch.Tensor, "slot d_model"],
    slots: Int[torch.Tensor, " batch"],
) -> Float[torch.Tensor, "batch pos d_model"]:
    """``out`` with each row shifted by its slot's row of ``table``."""
    return out + table[slots][:, None, :]


def updated(
    out: Float[torch.Tensor, "batch pos d_model"],
    x: Float[torch.Tensor, "batch pos inputs"],
    A: Float[torch.Tensor, "slot rank inputs"],
    B: Float[torch.Tensor, "slot d_model rank"],
    slots: Int[torch.Tensor, " batch"],
) -> Float[torch.Tensor, "batch pos d_model"]:
    """``out + (x @ A_s^T) @ B_s^T`` per row, ``s`` the row's slot (slots without an update
    have zero factors)."""
    coefficients = torch.bmm(x, A[slots].transpose(1, 2))  # [batch, pos, rank]
    return out + torch.bmm(coefficients, B[slots].transpose(1, 2))


class MixedHooks:
    """Hooks that give each row of a batch the effect of its slot (see the module docstring).

    Usage::

        mixed = MixedHooks(model, [RowEffect(), steering_effect, RowEffect.of_plans([plan])])
        with mixed.active():
            with mixed.rows([0, 0, 1, 2]):  # four rows: unedited, unedited, steered, edited
                model.hf_model(input_ids=...)
    """

    def __init__(self, model: LoadedModel, effects: Sequence[RowEffect]) -> None:
        if not effects:
            raise InvalidInputError("a mixed batch needs at least one slot")
        self.model = model
        self.n_slots = len(effects)
        self._slots: torch.Tensor | None = None
        self._inputs: dict[tuple[str, int], torch.Tensor] = {}
        device, dtype = model.device, next(model.hf_model.parameters()).dtype
        d_model = model.bridge.cfg.d_model
        self.shift_tables: dict[tuple[str, int], torch.Tensor] = {}
        for key in sorted({k for e in effects for k in e.shifts}):
            table = torch.zeros(self.n_slots, d_model, dtype=torch.float32)
            for s, e in enumerate(effects):
                if key in e.shifts:
                    table[s] = e.shifts[key].float()
            self.shift_tables[key] = table.to(device=device, dtype=dtype)
        self.factors: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for key in sorted({k for e in effects for k in e.updates}):
            present = [e.updates[key] for e in effects if key in e.updates]
            rank, n_in = max(u.rank for u in present), present[0].A.shape[1]
            A = torch.zeros(self.n_slots, rank, n_in, dtype=torch.float32)
            B = torch.zeros(self.n_slots, d_model, rank, dtype=torch.float32)
            for s, e in enumerate(effects):
                if key in e.updates:
                    u = e.updates[key]
                    A[s, : u.rank], B[s, :, : u.rank] = u.A.float(), u.B.float()
            self.factors[key] = (A.to(device=device, dtype=dtype), B.to(device=device, dtype=dtype))

    # ------------------------------------------------------------------------------ rows

    @contextlib.contextmanager
    def rows(self, slots: Sequence[int]) -> Iterator[None]:
        """Within the block, row ``i`` of every forward pass is slot ``slots[i]``."""
        if any(not 0 <= s < self.n_slots for s in slots):
            raise InvalidInputError(f"slots must be in 0..{self.n_slots - 1}, got {sorted(set(slots))}")
        previous = self._slots
        self._slots = torch.tensor(list(slots), dtype=torch.long, device=self.model.device)
        try:
            yield
        finally:
            self._slots, self._inputs = previous, {}

    def _current(self, batch: int) -> torch.Tensor:
        if self._slots is None:
            raise InvalidInputError(
                "a forward pass ran inside a mixed batch without saying which intervention each row "
                "is, so it would have run without them: a measure in shared batches must reach the "
                "model through s2e_lens's generate and scoring functions only (else build its Suite "
                "with shareable=False, or run with --set shared_batches=false)"
            )
        if self._slots.shape[0] != batch:
            raise InvalidInputError(f"the batch has {batch} rows but {self._slots.shape[0]} slots were given")
        return self._slots

    # ------------------------------------------------------------------------------ hooks

    def hooks(self) -> list[Hook]:
        hooks: list[Hook] = []
        for kind, layer in self.factors:
            hooks.append((hook_name(INPUT_POINT[kind], layer), self._keep_input(kind, layer)))  # type: ignore[arg-type]
        outputs = sorted(set(self.shift_tables) | {(OUTPUT_POINT[k], layer) for k, layer in self.factors})
        for point, layer in outputs:
            hooks.append((hook_name(point, layer), self._add(point, layer)))  # type: ignore[arg-type]
        return hooks

    def _keep_input(self, kind: str, layer: int) -> Callable[..., None]:
        def keep(x: torch.Tensor, hook: object) -> None:
            self._current(x.shape[0])
            self._inputs[(kind, layer)] = x.reshape(x.shape[0], x.shape[1], -1)  # z: heads side by side

        return keep

    def _add(self, point: str, layer: int) -> Callable[..., torch.Tensor]:
        kind = next((k for k, p in OUTPUT_POINT.items() if p == point), None)

        def add(out: torch.Tensor, hook: object) -> torch.Tensor:
            slots = self._current(out.shape[0])
            if (point, layer) in self.shift_tables:
                out = shifted(out, self.shift_tables[(point, layer)], slots)
            if kind is not None and (kind, layer) in self.factors:
                A, B = self.factors[(kind, layer)]
                out = updated(out, self._inputs.pop((kind, layer)), A, B, slots)
            return out

        return add

    @contextlib.contextmanager
    def active(self) -> Iterator[MixedHooks]:
        """The hooks on ``model`` within the block, removed on exit (exceptions included)."""
        with self.model.bridge.hooks(fwd_hooks=self.hooks()):
            yield self


@dataclass(frozen=True)
class RowSlots:
    """The slot of each input of a call (a prompt, a scored text) in a mixed batch: what the
    engine's batched functions need to tell ``hooks`` which row is which."""

    hooks: MixedHooks
    slots: Sequence[int]

    def of(self, inputs: Sequence[int], *, repeat: int = 1) -> contextlib.AbstractContextManager[None]:
        """The rows of a batch made of ``inputs`` (indices into :attr:`slots`), each ``repeat``
        times in a row (a prompt's samples)."""
        return self.hooks.rows([self.slots[i] for i in inputs for _ in range(repeat)])
