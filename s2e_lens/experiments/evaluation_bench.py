"""``s2e bench evaluate``: where the main job's evaluation spends its time, measured side by side
in one run on one model.

1. The main job's evaluation (the quick preset's unedited model, steering strengths and kept
   edits on the behaviour's suite) one intervention at a time and in shared batches: generated
   tokens per second of evaluation (scoring included), and the seconds in generation, scoring,
   KL and the rest (judging, bookkeeping). Both must give the same table.
2. Plain transformers ``generate`` of the unedited model on the same prompts at the shared
   batches' batch size: the ceiling for the generation part.
3. The batch-size curve: s2e_lens generation (the bridge-wrapped model) and plain transformers
   ``generate`` at each batch size.
4. Edits in one batch two ways: the kept edits as PEFT adapters in PEFT's mixed-adapter batches
   (``adapter_names``, one per row) against this toolkit's per-row low-rank hooks, on the same
   prompts, with the share of identical greedy tokens.

Every figure is a ratio of two numbers measured in this run; run it on quiet cores
(``OMP_WAIT_POLICY=PASSIVE``), since timings that share the cores are not timings.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch

from s2e_lens.behaviours.base import Suite
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine import interventions
from s2e_lens.engine.generation import GenerationSettings, generate
from s2e_lens.engine.shared_batches import MIXED_BATCH_SIZE
from s2e_lens.errors import InvalidInputError
from s2e_lens.experiments import sweep
from s2e_lens.experiments.config import RunConfig
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.progress import transformers_progress

PARTS = ("generate", "score", "kl")  # the engine calls whose seconds are reported


@dataclass(frozen=True)
class _TimedCalls:
    """What a view of the model carries in the one-at-a-time run: the engine's generation,
    scoring and KL calls (which go to ``model.shared`` when it is set) run directly on
    ``model``, each timed into ``timings`` (the shared run's batches time theirs the same way)."""

    model: LoadedModel
    timings: dict[str, float]

    def _timed(self, kind: str, fn: Callable[[], Any]) -> Any:
        out, took = _timed(fn)
        self.timings[kind] = self.timings.get(kind, 0.0) + took
        return out

    def generate(self, prompts: Sequence[str], settings: Any) -> list[Any]:
        return cast(list[Any], self._timed("generate", lambda: generate(self.model, prompts, settings)))

    def score(self, pairs: Sequence[tuple[list[int], list[int]]], batch_size: Any) -> list[Any]:
        from s2e_lens.engine.scoring import score_continuations

        return cast(
            list[Any], self._timed("score", lambda: score_continuations(self.model, pairs, batch_size=batch_size))
        )

    def kl_by_text(self, reference: Any) -> list[list[float]]:
        return cast(list[list[float]], self._timed("kl", lambda: reference.kl_by_text(self.model)))


@dataclass
class _TimedSuite(Suite):
    """A suite whose measures (KL included) see the model through :class:`_TimedCalls`."""

    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, suite: Suite, timings: dict[str, float]) -> _TimedSuite:
        return cls(**{f.name: getattr(suite, f.name) for f in dataclasses.fields(suite)}, timings=timings)

    def measure(self, model: LoadedModel) -> dict[str, Any]:
        return super().measure(dataclasses.replace(model, shared=_TimedCalls(model, self.timings)))


@dataclass
class EvaluationBench:
    """What :func:`bench_evaluate` measured; :meth:`lines` prints it."""

    model: str
    behaviour: str
    interventions: list[str]
    modes: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> seconds, tokens, parts
    same_table: bool = False
    plain: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    adapters: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"model {self.model}, behaviour {self.behaviour}: the main job's evaluation of "
            f"{len(self.interventions)} interventions ({', '.join(self.interventions)})"
        ]
        for mode, m in self.modes.items():
            parts = ", ".join(f"{k} {m[k]:.1f} s ({m[k] / m['seconds']:.0%})" for k in (*PARTS, "other") if k in m)
            out.append(
                f"  {mode:22s} {m['seconds']:7.1f} s, {int(m['tokens']):,} tokens = "
                f"{m['tokens'] / m['seconds']:6.1f} tokens/s of evaluation; {parts}"
            )
        if len(self.modes) == 2:
            a, b = (m["tokens"] / m["seconds"] for m in self.modes.values())
            out.append(f"  shared / one at a time = {b / a:.2f}x; the same table: {'yes' if self.same_table else 'NO'}")
        if self.plain:
            p = self.plain
            out.append(
                f"generation alone, the shared run's {int(p['sequences'])} sequences at batch {int(p['batch'])}: "
                f"shared batches {p['shared_tokens_per_s']:.1f} tokens/s of generation, plain transformers "
                f"generate (unedited) {p['plain_tokens_per_s']:.1f}; plain / shared = "
                f"{p['plain_tokens_per_s'] / p['shared_tokens_per_s']:.2f}x"
            )
        if self.curve:
            out.append("batch-size curve (tokens/s, greedy): batch, s2e_lens generate, transformers generate, ratio")
            for c in self.curve:
                out.append(f"  {int(c['batch']):4d} {c['ours']:8.1f} {c['plain']:8.1f} {c['ours'] / c['plain']:6.2f}")
        if self.adapters:
            e = self.adapters
            out.append(
                f"edits in one batch ({int(e['rows'])} rows: the unedited model and {int(e['edits'])} edits, "
                f"batch {int(e['batch'])}): per-row hooks {e['hooks_tokens_per_s']:.1f} tokens/s, PEFT "
                f"mixed-adapter batches {e['peft_tokens_per_s']:.1f}; hooks / PEFT = "
                f"{e['hooks_tokens_per_s'] / e['peft_tokens_per_s']:.2f}x; identical greedy tokens "
                f"{e['same_tokens']:.1%}"
            )
        return out


def _same_table(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """The same labels and the same attribute and utility (KL within float rounding)."""
    if list(a["label"]) != list(b["label"]):
        return False
    cols = [c for c in ("attribute", "utility") if c in a and c in b]
    same = all((a[c] - b[c]).abs().max() <= 1e-9 for c in cols)
    kl = "kl" not in a or bool((a["kl"] - b["kl"]).abs().max() <= 1e-5)
    return bool(same and kl)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def _plain_generate(
    plain: Any, model: LoadedModel, prompts: Sequence[str], batch: int, max_new: int, **extra: Any
) -> list[list[int]]:
    """Greedy transformers ``generate`` on ``plain`` (an unwrapped copy, or PEFT's wrapper with
    ``extra`` such as ``adapter_names``, sliced per batch): each prompt's new tokens up to its
    first end-of-turn token (excluded), as this toolkit's generation counts them."""
    from s2e_lens.engine.generation import eos_token_ids
    from s2e_lens.models.tokens import pad, pad_token_id

    pad_id = pad_token_id(model.tokenizer)
    eos = set(eos_token_ids(model))
    out: list[list[int]] = []
    for lo in range(0, len(prompts), batch):
        padded = pad([model.prompt_ids(p, None) for p in prompts[lo : lo + batch]], pad_id, "left")
        part = {k: v[lo : lo + batch] for k, v in extra.items()}
        with torch.inference_mode():
            ids = plain.generate(
                input_ids=padded.input_ids.to(model.device),
                attention_mask=padded.attention_mask.to(model.device),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=sorted(eos),
                pad_token_id=pad_id,
                **part,
            )
        for row in ids[:, padded.input_ids.shape[1] :].tolist():
            stop = next((k for k, t in enumerate(row) if t in eos), len(row))
            out.append(row[:stop])
    return out


def _count(rows: Sequence[Sequence[int]]) -> int:
    return sum(len(r) for r in rows)


def bench_evaluate(
    model_name: str,
    behaviour: str = "safety",
    *,
    overrides: dict[str, Any] | None = None,
    batch_sizes: Sequence[int] = (1, 8, 24, 64),
    curve_new_tokens: int = 32,
    progress: bool = False,
) -> EvaluationBench:
    """Measure the main job's evaluation and its parts side by side (module docstring).
    ``overrides`` are RunConfig fields over the quick preset (smaller sizes make a faster bench
    that no longer describes the main job)."""
    from transformers import AutoModelForCausalLM

    from s2e_lens.experiments.pipelines import prepare
    from s2e_lens.models.loading import load_model

    if any(b < 1 for b in batch_sizes):
        raise InvalidInputError(f"batch sizes must be positive, got {list(batch_sizes)}")
    config = RunConfig.preset(behaviour, "quick", **{"model": model_name, **(overrides or {})})
    model = load_model(config.model, progress=progress, **config.placement())
    if model.card.checkpoint is None:
        raise InvalidInputError("the evaluation benchmark needs a model with a local checkpoint (plain transformers)")
    prepared = prepare(config, model, progress=progress)
    suite, stats = prepared.suite, prepared.stats
    assert suite.kl_reference is not None
    if not suite.shareable:  # before the screening and the evaluations
        raise InvalidInputError(f"{behaviour}'s suite does not run in shared batches: nothing to compare")
    vectors = SteeringVectors.from_statistics(stats)
    settings = interventions.grid(config.rho_attn, config.rho_mlp, config.alpha, **config.edit_variant())
    candidates = interventions.edit_candidates(model, stats, settings)
    kept, _ = sweep.prune(model, candidates, suite.kl_reference, max_kl=config.max_kl, keep=config.keep_edits)
    evaluated = interventions.steering_sweep(vectors, config.gammas) + kept
    result = EvaluationBench(model.card.name, behaviour, ["unedited"] + [i.label for i in evaluated])

    # 1. the main job's evaluation, one intervention at a time and in shared batches
    parts: dict[str, float] = {}
    timed_suite = _TimedSuite.of(suite, parts)
    alone, seconds = _timed(lambda: sweep.run(model, timed_suite, evaluated, progress=progress, shared=False))
    result.modes["one at a time"] = {"seconds": seconds, "tokens": float(alone["generated_tokens"].sum()), **parts}
    timings: dict[str, float] = {}
    records: sweep.Records = {}
    together, seconds = _timed(
        lambda: sweep.run(model, suite, evaluated, progress=progress, shared=True, timings=timings, records=records)
    )
    result.modes["shared batches"] = {
        "seconds": seconds,
        "tokens": float(together["generated_tokens"].sum()),
        **timings,
    }
    for m in result.modes.values():
        m["other"] = m["seconds"] - sum(m.get(k, 0.0) for k in PARTS)
    result.same_table = _same_table(alone, together)

    # 2. plain generate of the unedited model on the shared run's prompts, at its batch size
    dtype = next(model.hf_model.parameters()).dtype
    with transformers_progress(progress):
        plain: Any = AutoModelForCausalLM.from_pretrained(
            model.card.checkpoint, attn_implementation="eager", dtype=dtype
        )
    plain = plain.to(model.device).eval()
    prompts = [g["prompt"] for r in records.values() for g in r["generations"]]
    if prompts and "generate" in timings:
        new = config.max_new_tokens
        made, took = _timed(lambda: _plain_generate(plain, model, prompts, MIXED_BATCH_SIZE, new))
        result.plain = {
            "sequences": len(prompts),
            "batch": MIXED_BATCH_SIZE,
            "shared_tokens_per_s": result.modes["shared batches"]["tokens"] / timings["generate"],
            "plain_tokens_per_s": _count(made) / took,
        }

    # 3. the batch-size curve: the same prompts at each batch size
    pool = prompts or [f"Tell me about topic {i}." for i in range(64)]
    for b in batch_sizes:
        some = [pool[i % len(pool)] for i in range(max(8, 2 * b))]
        fixed = GenerationSettings(max_new_tokens=curve_new_tokens, batch_size=b)
        gens, ours = _timed(functools.partial(generate, model, some, fixed))
        made, theirs = _timed(functools.partial(_plain_generate, plain, model, some, b, curve_new_tokens))
        result.curve.append({"batch": b, "ours": sum(g.n_tokens for g in gens) / ours, "plain": _count(made) / theirs})

    # 4. the kept edits in one batch: PEFT's mixed-adapter batches against per-row hooks
    if kept:
        result.adapters = _adapters_vs_hooks(model, plain, kept, pool[:32], curve_new_tokens)
    return result


def _adapters_vs_hooks(
    model: LoadedModel, plain: Any, kept: Sequence[interventions.Intervention], prompts: list[str], max_new: int
) -> dict[str, float]:
    """Greedy generation of ``prompts`` under the unedited model and each kept edit in one
    batch: PEFT LoRA adapters selected per row (``adapter_names``) against this toolkit's
    shared batches (per-row low-rank hooks). ``plain`` is left without adapters."""
    import peft

    from s2e_lens.engine.adapters import export_adapter

    settings = GenerationSettings(max_new_tokens=max_new, batch_size=MIXED_BATCH_SIZE)
    todo = [interventions.unedited(), *kept]
    ours, hooks_s = _timed(lambda: sweep.measure_each(model, todo, lambda m: generate(m, prompts, settings)))
    names = ["__base__"] + [f"edit{k}" for k in range(len(kept))]
    with tempfile.TemporaryDirectory() as tmp:
        wrapped: Any = None
        for k, item in enumerate(kept):
            assert item.plan is not None
            path = export_adapter(model, [item.plan], Path(tmp) / names[k + 1])
            if wrapped is None:
                wrapped = peft.PeftModel.from_pretrained(plain, path, adapter_name=names[k + 1])
            else:
                wrapped.load_adapter(path, adapter_name=names[k + 1])
        wrapped.eval()
        rows = [(name, p) for name in names for p in prompts]
        theirs, peft_s = _timed(
            lambda: _plain_generate(
                wrapped, model, [p for _, p in rows], MIXED_BATCH_SIZE, max_new, adapter_names=[n for n, _ in rows]
            )
        )
        wrapped.unload()  # the plain model without its adapters, as it came
    mine = [list(g.token_ids) for gens in ours for g in gens]
    same = sum(a == b for x, y in zip(mine, theirs, strict=True) for a, b in zip(x, y, strict=False))
    total = _count(mine)
    return {
        "rows": len(rows),
        "edits": len(kept),
        "batch": MIXED_BATCH_SIZE,
        "hooks_tokens_per_s": total / hooks_s,
        "peft_tokens_per_s": _count(theirs) / peft_s,
        "same_tokens": same / max(total, 1),
    }
