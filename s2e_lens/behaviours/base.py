"""What a behaviour is to the toolkit, and the registry the built-in ones (and yours) join.

A :class:`Behaviour` bundles a contrastive-set builder (positive = the behaviour wanted), and
optionally an evaluation suite (an attribute and a utility measure), the labels reports use,
the prompts for example generations and the run presets that suit it. ``register`` adds one;
``get`` looks one up by name, with an error that lists the known names.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2e_lens.behaviours.datasets import load_arc_easy, load_harmless_prompts, load_hellaswag, load_piqa
from s2e_lens.behaviours.splits import split
from s2e_lens.core import metrics
from s2e_lens.core.contrastive import ContrastiveSet
from s2e_lens.core.items import MathItem, MultipleChoice
from s2e_lens.engine.generation import GenerationSettings, generate
from s2e_lens.engine.scoring import KLReference, multiple_choice_correct, response_cross_entropy
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel

Measure = Callable[[LoadedModel], dict[str, Any]]
ITEMS = "_items"  # per-item scores in a measure's row (see Suite.measure)
GENERATIONS = "_generations"  # generation records in a measure's row


@dataclass
class Suite:
    """What to measure: ``attribute`` (higher = more of the behaviour) and ``utility``
    (higher = better), each a function of the model returning a dict of named figures that
    contains the key ``"attribute"`` / ``"utility"``, plus KL to the unedited model."""

    behaviour: str
    attribute: Measure
    utility: Measure
    kl_reference: KLReference | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    # the attribute alone, as cheaply as it can be had (e.g. refusal on the attack set only), for
    # selections that score every grid point on it; None: ``attribute``
    attribute_only: Measure | None = None
    # the measures reach the model only through the engine's generation and scoring (never
    # ``model.hf_model`` or the bridge directly): sweeps may then run every intervention's
    # measures together in shared batches (engine.shared_batches)
    shareable: bool = False

    def measure(self, model: LoadedModel) -> dict[str, Any]:
        """One row of named figures. A measure may also return per-item scores under
        :data:`ITEMS` (``{"attribute": rows, "utility": rows}``, one row per prompt or item,
        one entry per sample, whose overall mean is the figure) and generation records under
        :data:`GENERATIONS`; both are merged here and taken out of the row by the sweep."""
        a, u = self.attribute(model), self.utility(model)
        items = {**a.pop(ITEMS, {}), **u.pop(ITEMS, {})}
        generations = a.pop(GENERATIONS, []) + u.pop(GENERATIONS, [])
        row = {**a, **u}
        if self.kl_reference is not None:
            by_text = self.kl_reference.kl_by_text(model)
            row["kl"] = sum(sum(r) for r in by_text) / sum(len(r) for r in by_text)
            items["kl"] = by_text  # per text, per position: the KL-matched comparison's interval
        if items:
            row[ITEMS] = items
        if generations:
            row[GENERATIONS] = generations
        return row


@dataclass(frozen=True)
class SuiteSize:
    """How much and how a suite measures: held-out prompts (or questions), multiple-choice
    items per utility set, new tokens per generation; where the public data lives; the seed of
    draws; and for generated attributes, the decoding (``samples`` per prompt, ``temperature``
    0 = greedy, ``top_p``), the refusal ``judge`` (``paper``, ``strict`` or ``PATH:callable``) and
    the ``attacks`` (the first is the attribute; every one is reported) with ``prompt_field``
    naming the prompt in the user's own attack files; ``system_prompt`` for every prompt."""

    n_eval: int = 40
    n_mc: int = 70
    max_new_tokens: int = 32
    data_dir: str | Path | None = None
    seed: int = 0
    samples: int = 1
    temperature: float | None = 0.0  # None: the model's generation config
    top_p: float = 1.0
    judge: str = "strict"
    judge_timeout: float = 30.0  # a user judge's time limit per call, in seconds
    attacks: tuple[str, ...] = ("plain",)
    prompt_field: str = "prompt"
    system_prompt: str | None = None
    part: str = "test"  # the split evaluated: test (reporting) or tune (held-out selection)
    utility: str = "loglik"  # loglik (multiple choice by log-likelihood) or generated (by generated letter)
    n_gsm8k: int = 0  # also GSM8K accuracy by generation on this many problems (0: not measured)


Builder = Callable[..., ContrastiveSet]  # (model=, data=, data_dir=, part=) -> ContrastiveSet


@dataclass(frozen=True)
class Behaviour:
    name: str
    summary: str
    build: Builder
    needs_model: bool = False  # the builder samples the model's own generations
    needs_data_file: bool = False  # the builder reads the user's --data file
    needs_data_dir: bool = False  # the builder reads public data from --data-dir / $S2E_DATA
    suite: Callable[[LoadedModel, SuiteSize], Suite] | None = None  # None: no evaluation yet
    labels: dict[str, str] = field(default_factory=dict)  # "attribute" / "utility" axis names
    examples: Callable[[SuiteSize], list[tuple[str, str]]] | None = None  # (set, prompt) to show
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # RunConfig overrides: base, quick, full


_REGISTRY: dict[str, Behaviour] = {}


def register(behaviour: Behaviour) -> Behaviour:
    """Add ``behaviour`` (its name must be new)."""
    if behaviour.name in _REGISTRY:
        raise InvalidInputError(f"a behaviour named {behaviour.name!r} is already registered")
    _REGISTRY[behaviour.name] = behaviour
    return behaviour


def get(name: str) -> Behaviour:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInputError(f"unknown behaviour {name!r}: use one of {', '.join(_REGISTRY)}") from None


def names(*, evaluated: bool = False) -> tuple[str, ...]:
    """Registered behaviour names (``evaluated``: only those with an evaluation suite)."""
    return tuple(n for n, b in _REGISTRY.items() if b.suite is not None or not evaluated)


# ------------------------------------------------------------ shared utility measures


def utility_items(size: SuiteSize) -> list[MultipleChoice]:
    """A fixed, seeded draw of multiple-choice items (ARC-Easy, PIQA, HellaSwag), ``n_mc`` each.
    The tune part draws, with another seed, from the items the test part does not use."""
    rng = random.Random(size.seed)
    tune_rng = random.Random(size.seed + 1)
    items: list[MultipleChoice] = []
    for loader in (load_arc_easy, load_piqa, load_hellaswag):
        pool = loader(size.data_dir)
        test = rng.sample(pool, min(size.n_mc, len(pool)))
        if size.part == "tune":
            rest = [item for item in pool if item not in test]
            items += tune_rng.sample(rest, min(size.n_mc, len(rest)))
        else:
            items += test
    return items


def gsm8k_items(size: SuiteSize) -> list[MathItem]:
    """The first ``n_gsm8k`` GSM8K problems (none unless asked for)."""
    from s2e_lens.behaviours.datasets import load_gsm8k

    return load_gsm8k(size.data_dir)[: size.n_gsm8k] if size.n_gsm8k else []


def benign_pairs(n: int = 24) -> list[tuple[str, str]]:
    """Benign (prompt, reference response) pairs for cross-entropy and KL: the first ``n``
    harmless rows of the project's prompt set in the tune split, the same for every behaviour
    (the safety evaluation draws its harmless prompts from the test split)."""
    rows = split(load_harmless_prompts(), lambda r: r["prompt"], "tune")
    return [(r["prompt"], r["response"]) for r in rows[:n]]


def held_out_harmless(n: int) -> list[str]:
    """The first ``n`` harmless prompts of the test split (benign generations)."""
    rows = split(load_harmless_prompts(), lambda r: r["prompt"], "test")
    return [r["prompt"] for r in rows[:n]]


# ------------------------------------------------------------- utility by generation


def generated_choice_correct(
    model: LoadedModel, items: Sequence[MultipleChoice], settings: GenerationSettings | None = None
) -> tuple[list[bool], list[dict[str, Any]]]:
    """Multiple choice answered by generation, as the paper measures utility: each item asked
    as a lettered question (chat-formatted where the model has a template), the first choice
    letter of the answer compared with the right one (no letter: wrong). Returns per-item
    correctness and a record per generation."""
    settings = settings or GenerationSettings(max_new_tokens=8, batch_size=48)
    prompts = [metrics.lettered_question(item.context, item.choices) for item in items]
    gens = generate(model, prompts, settings)
    correct, records = [], []
    for i, (item, g) in enumerate(zip(items, gens, strict=True)):
        picked = metrics.extract_choice(g.text, len(item.choices))
        correct.append(picked == item.answer)
        records.append({"set": "mc_generated", "prompt_index": i, "sample": 0, "prompt": g.prompt, "text": g.text,
                        "n_tokens": g.n_tokens, "picked": picked, "correct": picked == item.answer})  # fmt: skip
    return correct, records


def gsm8k_correct(
    model: LoadedModel, items: Sequence[MathItem], settings: GenerationSettings | None = None
) -> tuple[list[bool], list[dict[str, Any]]]:
    """GSM8K by generation: the final number of each answer (after '####' or 'answer is', else
    the last number) against the reference answer."""
    settings = settings or GenerationSettings(max_new_tokens=256, batch_size=16)
    gens = generate(model, [item.question for item in items], settings)
    correct = [metrics.answer_correct(g.text, item.answer) for item, g in zip(items, gens, strict=True)]
    records = [
        {
            "set": "gsm8k",
            "prompt_index": i,
            "sample": 0,
            "prompt": g.prompt,
            "text": g.text,
            "n_tokens": g.n_tokens,
            "correct": ok,
        }  # fmt: skip
        for i, (g, ok) in enumerate(zip(gens, correct, strict=True))
    ]
    return correct, records


def utility_measure(
    mc_items: Sequence[MultipleChoice] = (),
    benign_pairs: Sequence[tuple[str, str]] = (),
    *,
    by_generation: bool = False,
    gsm8k_items: Sequence[MathItem] = (),
) -> Measure:
    """The utility side of a suite: benign cross-entropy, multiple-choice accuracy by
    log-likelihood (``mc_accuracy``) and, with ``by_generation``, by generated letter
    (``mc_generated``, then the utility), and GSM8K accuracy by generation if items are given.
    Per-item scores and generation records go with the row."""

    def utility(m: LoadedModel) -> dict[str, Any]:
        row: dict[str, Any] = {}
        items: dict[str, list[list[float]]] = {}
        records: list[dict[str, Any]] = []
        if benign_pairs:
            row["benign_ce"] = response_cross_entropy(m, benign_pairs)
        if mc_items:
            correct = multiple_choice_correct(m, mc_items)
            row["mc_accuracy"] = row["utility"] = sum(correct) / len(correct)
            if by_generation:
                correct, recs = generated_choice_correct(m, mc_items)
                row["mc_generated"] = row["utility"] = sum(correct) / len(correct)
                records += recs
            items["utility"] = [[float(c)] for c in correct]
        if gsm8k_items:
            solved, recs = gsm8k_correct(m, gsm8k_items)
            row["gsm8k_accuracy"] = sum(solved) / len(solved)
            records += recs
        if items:
            row[ITEMS] = items
        if records:
            row[GENERATIONS] = records
        return row

    return utility
