"""Truthfulness: preferring true answers.

Contrastive data: TruthfulQA questions with correct (positive) and incorrect (negative)
answers from the dataset (as in inference-time-intervention work), or the model's own sampled
answers split by your judge. Evaluation: binary preference and MC1 on held-out questions
(log-likelihoods), multiple-choice accuracy (the utility), benign cross-entropy, KL, and the
degeneracy of greedy answers to benign prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from s2e_lens.behaviours.base import (
    ITEMS,
    Behaviour,
    Suite,
    SuiteSize,
    benign_pairs,
    gsm8k_items,
    held_out_harmless,
    register,
    utility_items,
    utility_measure,
)
from s2e_lens.behaviours.datasets import load_truthfulqa
from s2e_lens.behaviours.splits import split
from s2e_lens.core import metrics
from s2e_lens.core.contrastive import ContrastiveSet, ContrastiveSetError
from s2e_lens.core.items import MathItem, MultipleChoice, TruthfulQAItem
from s2e_lens.engine.generation import GenerationSettings, generate
from s2e_lens.engine.scoring import (
    KLReference,
    Scored,
    score_continuations,
)
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.tokens import encode_prompt, encode_response, has_chat_template

N_PROBE = 8  # benign prompts every intervention answers greedily (degeneracy of a log-likelihood suite)


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
        gens = generate(
            model,
            [it.question for it in chosen],
            GenerationSettings(max_new_tokens=48, temperature=0.8, top_p=0.95, n=samples, seed=0),
        )
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


def truthfulqa_context(model: LoadedModel, question: str) -> list[int]:
    tok = model.tokenizer
    if has_chat_template(tok):
        return encode_prompt(tok, question)
    return list(tok(f"Q: {question}\nA:", add_special_tokens=True)["input_ids"])


@dataclass(frozen=True)
class TruthfulQAResult:
    binary_preference: float  # best answer vs first incorrect, length-normalised log-prob
    mc1: float  # best answer vs all incorrect answers, total log-prob
    preferred: tuple[bool, ...] = ()  # per question: the best answer beat the first incorrect one


def truthfulqa_eval(model: LoadedModel, items: Sequence[TruthfulQAItem], *, batch_size: int = 16) -> TruthfulQAResult:
    tok = model.tokenizer
    pairs, owners = [], []
    for i, item in enumerate(items):
        ctx = truthfulqa_context(model, item.question)
        for answer in (item.best_answer, *item.incorrect_answers):
            pairs.append((ctx, encode_response(tok, " " + answer if not has_chat_template(tok) else answer)))
            owners.append(i)
    scored = score_continuations(model, pairs, batch_size=batch_size)
    per_item: list[list[Scored]] = [[] for _ in items]
    for owner, s in zip(owners, scored, strict=True):
        per_item[owner].append(s)
    best = [row[0].mean for row in per_item]
    first_wrong = [row[1].mean for row in per_item]
    mc1 = metrics.mc_accuracy([[s.logprob for s in row] for row in per_item], [0] * len(items))
    preferred = metrics.binary_preferences(best, first_wrong)
    return TruthfulQAResult(sum(preferred) / len(preferred), mc1, tuple(preferred))


def truthfulness_suite(
    model: LoadedModel,
    test_items: Sequence[TruthfulQAItem],
    *,
    mc_items: Sequence[MultipleChoice] = (),
    benign_pairs: Sequence[tuple[str, str]] = (),
    probe_prompts: Sequence[str] = (),
    max_new_tokens: int = 32,
    by_generation: bool = False,
    gsm8k_items: Sequence[MathItem] = (),
) -> Suite:
    """Attribute: TruthfulQA binary preference on held-out ``test_items`` (MC1 also
    reported). Utility: multiple-choice accuracy on ``mc_items``. The scores are
    log-likelihoods, so greedy answers to ``probe_prompts`` measure whether the intervention
    still produces sane text (``degenerate``)."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=48)

    def attribute(m: LoadedModel) -> dict[str, Any]:
        r = truthfulqa_eval(m, test_items)
        row: dict[str, Any] = {"attribute": r.binary_preference, "binary_preference": r.binary_preference, "mc1": r.mc1}
        row[ITEMS] = {"attribute": [[float(x)] for x in r.preferred]}
        if probe_prompts:
            texts = [g.text for g in generate(m, probe_prompts, settings)]
            row["degenerate"] = metrics.degenerate_fraction(texts)
            row["example_probe"] = texts[0]
        return row

    return Suite(
        "truthfulness",
        attribute,
        utility_measure(mc_items, benign_pairs, by_generation=by_generation, gsm8k_items=gsm8k_items),
        KLReference(model, benign_pairs[:16]) if benign_pairs else None,
        {"n_test": len(test_items), "n_mc": len(mc_items), "n_probe": len(probe_prompts)},
        shareable=True,
    )


def _suite(model: LoadedModel, size: SuiteSize) -> Suite:
    items = load_truthfulqa(size.data_dir)
    test_items = split(items, lambda it: it.question, size.part)[: size.n_eval * 2]
    return truthfulness_suite(
        model,
        test_items,
        mc_items=utility_items(size),
        benign_pairs=benign_pairs(),
        probe_prompts=held_out_harmless(N_PROBE),
        max_new_tokens=size.max_new_tokens,
        by_generation=size.utility == "generated",
        gsm8k_items=gsm8k_items(size),
    )


def _examples(size: SuiteSize, n_attribute: int = 4) -> list[tuple[str, str]]:
    items = split(load_truthfulqa(size.data_dir), lambda it: it.question, "test")
    return [("question", it.question) for it in items[:n_attribute]]


BEHAVIOUR = register(
    Behaviour(
        name="truthfulness",
        summary="preferring true answers (TruthfulQA correct vs incorrect answers)",
        build=lambda model=None, data=None, data_dir=None, part="tune": truthfulness(
            load_truthfulqa(data_dir), part=part
        ),
        needs_data_dir=True,
        suite=_suite,
        labels={
            "attribute": "TruthfulQA binary preference (held-out)",
            "utility": "multiple-choice accuracy (ARC-Easy, PIQA, HellaSwag)",
        },
        examples=_examples,
        # its steering vector lines up with many heads' mean outputs, so small rho edits too much
        presets={
            "base": {
                "gammas": (0.5, 1.0, 2.0, 4.0),
                "rho_attn": (0.3, 0.5, 0.75, 1.0, 1.5, 2.0),
                "rho_mlp": (0.0,),
                "alpha": (0.5, 0.7),
            }
        },
    )
)
