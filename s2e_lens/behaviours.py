"""Built-in behaviours: contrastive-set builders with documented knobs.

Each builder returns a :class:`ContrastiveSet` (positive = the behaviour we want) whose
``provenance`` records the data source, the mode and the split. Splits are deterministic
(hash of the text), so the tuning data never leaks into the test data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from s2e_lens.errors import InvalidInputError
from s2e_lens import metrics
from s2e_lens.contrastive import ContrastiveSet, ContrastiveSetError, Pair
from s2e_lens.datasets import (
    DataFormatError,
    MathItem,
    TruthfulQAItem,
    load_gsm8k,
    load_harmful_prompts,
    load_safety_prompts,
    load_truthfulqa,
    read_jsonl,
    read_jsonl_lines,
)
from s2e_lens.generation import GenerationSettings, generate
from s2e_lens.loading import LoadedModel

T = TypeVar("T")


def split_of(text: str, tune_fraction: float = 0.5, salt: str = "s2e") -> str:
    """'tune' or 'test', from a hash of ``text``: stable across runs, machines and orders."""
    h = int(hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "tune" if h < tune_fraction else "test"


def split(items: Sequence[T], key: Callable[[T], str], part: str, tune_fraction: float = 0.5) -> list[T]:
    if part not in ("tune", "test", "all"):
        raise InvalidInputError(f"split must be tune, test or all, got {part!r}")
    return [x for x in items if part == "all" or split_of(key(x), tune_fraction) == part]


# ----------------------------------------------------------------------------------- safety


def safety_prompts(part: str = "test") -> dict[str, list[str]]:
    """The project's harmful and harmless prompts of one split (for evaluation)."""
    data = load_safety_prompts()
    return {
        "harmful": [r["prompt"] for r in split(data["harmful"], lambda r: r["prompt"], part)],
        "harmless": [r["prompt"] for r in split(data["harmless"], lambda r: r["prompt"], part)],
        "scary_but_safe": [r["prompt"] for r in split(data["harmless"], lambda r: r["prompt"], part)
                           if r["scary_but_safe"]],
    }


def safety(
    model: LoadedModel | None = None,
    *,
    mode: str = "teacher_forced",
    part: str = "tune",
    limit: int | None = None,
    samples: int = 4,
    judge: metrics.Judge | None = None,
    settings: GenerationSettings | None = None,
) -> ContrastiveSet:
    """Refusal. Positive: harmful prompts with refusing responses; negative: the same prompts
    with compliant responses.

    ``mode="teacher_forced"`` (default) uses the project's written refusal and compliance texts
    (for models that never refuse on their own). ``mode="own"`` samples ``samples`` responses
    per prompt from ``model`` and splits them with ``judge`` (substring refusal judge unless
    given); it fails if the model never (or always) refuses.
    """
    rows = split(load_harmful_prompts(), lambda r: r["prompt"], part)[:limit]
    provenance: dict[str, Any] = {"behaviour": "safety", "mode": mode, "split": part,
                                  "source": "s2e_lens/data/safety/harmful.jsonl", "n_prompts": len(rows)}
    if mode == "teacher_forced":
        return ContrastiveSet.from_pairs(
            [(r["prompt"], r["refusal"]) for r in rows], [(r["prompt"], r["compliance"]) for r in rows], provenance
        )
    if mode != "own":
        raise InvalidInputError(f"mode must be teacher_forced or own, got {mode!r}")
    if model is None:
        raise InvalidInputError("mode='own' needs the model whose responses to use")
    settings = settings or GenerationSettings(max_new_tokens=48, temperature=0.8, top_p=0.95, n=samples, seed=0)
    gens = generate(model, [r["prompt"] for r in rows], settings)
    judge = judge or (lambda _p, r: metrics.is_refusal(r))
    pos = [(g.prompt, g.text) for g in gens if g.text.strip() and judge(g.prompt, g.text)]
    neg = [(g.prompt, g.text) for g in gens if g.text.strip() and not judge(g.prompt, g.text)]
    if not pos or not neg:
        rate = len(pos) / max(1, len(pos) + len(neg))
        raise ContrastiveSetError(
            f"the model refused {rate:.0%} of {len(gens)} sampled responses to harmful prompts, so "
            "its own responses cannot form both sets; use mode='teacher_forced'"
        )
    provenance["refusal_rate_of_own_samples"] = len(pos) / (len(pos) + len(neg))
    return ContrastiveSet.from_pairs(pos, neg, provenance)


# ---------------------------------------------------------------------------- truthfulness


def truthfulness(
    items: Sequence[TruthfulQAItem],
    *,
    part: str = "tune",
    all_answers: bool = True,
    model: LoadedModel | None = None,
    judge: Callable[[TruthfulQAItem, str], bool] | None = None,
    samples: int = 4,
) -> ContrastiveSet:
    """Truthfulness. Default (as in inference-time intervention work): positive = questions with
    correct answers, negative = the same questions with incorrect answers (all of them, or only
    the best / first incorrect with ``all_answers=False``). With ``model`` and ``judge``, the
    model's own sampled answers are split by the judge instead."""
    chosen = split(items, lambda it: it.question, part)
    if not chosen:
        raise ContrastiveSetError(f"no TruthfulQA items in split {part!r}")
    provenance: dict[str, Any] = {"behaviour": "truthfulness", "split": part, "n_questions": len(chosen)}
    if model is not None:
        if judge is None:
            raise InvalidInputError("the model's own answers need a judge(item, answer) -> bool")
        gens = generate(model, [it.question for it in chosen],
                        GenerationSettings(max_new_tokens=48, temperature=0.8, top_p=0.95, n=samples, seed=0))
        owner = {it.question: it for it in chosen}
        pos = [(g.prompt, g.text) for g in gens if g.text.strip() and judge(owner[g.prompt], g.text)]
        neg = [(g.prompt, g.text) for g in gens if g.text.strip() and not judge(owner[g.prompt], g.text)]
        provenance["mode"] = "own"
        return ContrastiveSet.from_pairs(pos, neg, provenance)
    pos, neg = [], []
    for it in chosen:
        correct = it.correct_answers if all_answers else (it.best_answer,)
        wrong = it.incorrect_answers if all_answers else it.incorrect_answers[:1]
        pos += [(it.question, a) for a in correct]
        neg += [(it.question, a) for a in wrong]
    provenance["mode"] = "dataset answers (all)" if all_answers else "dataset answers (best vs first incorrect)"
    return ContrastiveSet.from_pairs(pos, neg, provenance)


# ------------------------------------------------------------------------ concise reasoning


def concise(
    model: LoadedModel,
    items: Sequence[MathItem],
    *,
    part: str = "tune",
    samples: int = 4,
    fraction: float = 0.05,
    max_new_tokens: int = 256,
    prompt_template: str = "{question}\nSolve step by step and end with 'The answer is N.'",
) -> ContrastiveSet:
    """Reasoning length. The model's own sampled solutions: the shortest ``fraction``
    (positive) vs the longest ``fraction`` (negative), by generated tokens (at least one each)."""
    if not 0 < fraction <= 0.5:
        raise InvalidInputError(f"fraction must be in (0, 0.5], got {fraction}")
    chosen = split(items, lambda it: it.question, part)
    prompts = [prompt_template.format(question=it.question) for it in chosen]
    gens = generate(model, prompts, GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.8,
                                                       top_p=0.95, n=samples, seed=0, batch_size=8))
    gens = [g for g in gens if g.text.strip()]
    ranked = sorted(gens, key=lambda g: g.n_tokens)
    k = max(1, int(len(ranked) * fraction))
    provenance = {"behaviour": "concise", "split": part, "fraction": fraction, "n_solutions": len(ranked),
                  "shortest_tokens": [g.n_tokens for g in ranked[:k]][:5],
                  "longest_tokens": [g.n_tokens for g in ranked[-k:]][-5:]}
    return ContrastiveSet.from_pairs(
        [(g.prompt, g.text) for g in ranked[:k]], [(g.prompt, g.text) for g in ranked[-k:]], provenance
    )


# ----------------------------------------------------------------------------------- custom

_LABELS = {"positive": True, "pos": True, "1": True, "true": True,
           "negative": False, "neg": False, "0": False, "false": False}


def custom_jsonl(path: str | Path) -> ContrastiveSet:
    """Your own behaviour: a JSONL of ``{"prompt", "response", "label"}`` rows, label one of
    positive/negative (or 1/0, true/false)."""
    rows = read_jsonl_lines(path, {"prompt": "str", "response": "str"})
    pos, neg = [], []
    for lineno, row in rows:
        label = str(row.get("label", "")).strip().lower()
        if label not in _LABELS:
            raise DataFormatError(f"{path}:{lineno}: label {row.get('label')!r} is not positive/negative (or 1/0)")
        (pos if _LABELS[label] else neg).append(Pair(row["prompt"], row["response"]))
    return ContrastiveSet.from_pairs(pos, neg, {"behaviour": "custom", "source": str(path)})


def custom_generated(
    model: LoadedModel,
    prompts: Sequence[str],
    judge: Callable[[str, str], bool],
    settings: GenerationSettings | None = None,
) -> ContrastiveSet:
    """Your own behaviour from the model's generations: ``judge(prompt, response)`` says which
    responses show the wanted behaviour."""
    settings = settings or GenerationSettings(max_new_tokens=64, temperature=0.8, top_p=0.95, n=4, seed=0)
    gens = [g for g in generate(model, prompts, settings) if g.text.strip()]
    pos = [(g.prompt, g.text) for g in gens if judge(g.prompt, g.text)]
    neg = [(g.prompt, g.text) for g in gens if not judge(g.prompt, g.text)]
    return ContrastiveSet.from_pairs(pos, neg, {"behaviour": "custom", "mode": "generated+judge",
                                                "n_generations": len(gens)})


def save_jsonl(data: ContrastiveSet, path: str | Path, *, overwrite: bool = False) -> None:
    """Write a contrastive set in the custom JSONL format (round-trips with custom_jsonl)."""
    from s2e_lens.files import write_text

    rows = [json.dumps({"prompt": p.prompt, "response": p.response, "label": label}) + "\n"
            for label, pairs in (("positive", data.positive), ("negative", data.negative)) for p in pairs]
    write_text(path, "".join(rows), overwrite=overwrite)


# ------------------------------------------------------------------------------- by name

NAMES = ("safety", "truthfulness", "concise", "custom")


def by_name(
    name: str,
    *,
    model: LoadedModel | None = None,
    data: str | Path | None = None,
    data_dir: str | Path | None = None,
    part: str = "tune",
) -> ContrastiveSet:
    """A built-in behaviour's contrastive set with its defaults: ``safety`` (teacher-forced),
    ``truthfulness`` (TruthfulQA from ``data_dir``), ``concise`` (needs ``model``; GSM8K from
    ``data_dir``) or ``custom`` (the JSONL file ``data``)."""
    if name == "safety":
        return safety(part=part)
    if name == "truthfulness":
        return truthfulness(load_truthfulqa(data_dir), part=part)
    if name == "concise":
        if model is None:
            raise InvalidInputError("behaviour 'concise' samples the model's own solutions: pass model=...")
        return concise(model, load_gsm8k(data_dir), part=part)
    if name == "custom":
        if not data:
            raise ContrastiveSetError("behaviour 'custom' needs --data FILE.jsonl with prompt, response, label rows")
        return custom_jsonl(data)
    raise ContrastiveSetError(f"unknown behaviour {name!r}: use safety, truthfulness, concise or custom (with --data)")
