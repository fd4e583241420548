"""Concise reasoning: shorter solutions.

Contrastive data: the model's own sampled GSM8K solutions, the shortest fraction (positive)
against the longest (negative), by generated tokens. No evaluation suite yet (``s2e run`` and
``s2e sweep`` do not cover it; ``s2e extract concise`` and the Python API do).
"""

from __future__ import annotations

from collections.abc import Sequence

from s2e_lens.behaviours.base import Behaviour, register
from s2e_lens.behaviours.datasets import load_gsm8k
from s2e_lens.behaviours.splits import split
from s2e_lens.core.contrastive import ContrastiveSet
from s2e_lens.core.items import MathItem
from s2e_lens.engine.generation import GenerationSettings, generate
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel


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
    gens = generate(
        model,
        prompts,
        GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.95, n=samples, seed=0, batch_size=8),
    )
    gens = [g for g in gens if g.text.strip()]
    ranked = sorted(gens, key=lambda g: g.n_tokens)
    k = max(1, int(len(ranked) * fraction))
    provenance = {
        "behaviour": "concise",
        "split": part,
        "fraction": fraction,
        "n_solutions": len(ranked),
        "shortest_tokens": [g.n_tokens for g in ranked[:k]][:5],
        "longest_tokens": [g.n_tokens for g in ranked[-k:]][-5:],
    }
    return ContrastiveSet.from_pairs(
        [(g.prompt, g.text) for g in ranked[:k]], [(g.prompt, g.text) for g in ranked[-k:]], provenance
    )


def _build(
    model: LoadedModel | None = None, data: object = None, data_dir: object = None, part: str = "tune"
) -> ContrastiveSet:
    if model is None:
        raise InvalidInputError("behaviour 'concise' samples the model's own solutions: pass model=...")
    return concise(model, load_gsm8k(data_dir), part=part)  # type: ignore[arg-type]


BEHAVIOUR = register(
    Behaviour(
        name="concise",
        summary="shorter reasoning (the model's own shortest vs longest GSM8K solutions)",
        build=_build,
        needs_model=True,
        needs_data_dir=True,
    )
)
