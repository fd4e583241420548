"""Your own behaviour: a JSONL file of labelled (prompt, response) rows, or the model's own
generations split by your judge."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from s2e_lens.behaviours.base import Behaviour, register
from s2e_lens.behaviours.datasets import read_jsonl_lines
from s2e_lens.core.contrastive import ContrastiveSet, ContrastiveSetError, Pair
from s2e_lens.engine.generation import GenerationSettings, generate
from s2e_lens.errors import DataFormatError
from s2e_lens.io.files import write_text
from s2e_lens.models.loaded import LoadedModel

_LABELS = {
    "positive": True,
    "pos": True,
    "1": True,
    "true": True,
    "negative": False,
    "neg": False,
    "0": False,
    "false": False,
}


def custom_jsonl(path: str | Path) -> ContrastiveSet:
    """Your own behaviour: a JSONL of ``{"prompt", "response", "label"}`` rows, label one of
    positive/negative (or 1/0, true/false)."""
    rows = read_jsonl_lines(path, {"prompt": "str", "response": "str"})
    pos: list[Pair] = []
    neg: list[Pair] = []
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
    return ContrastiveSet.from_pairs(
        pos, neg, {"behaviour": "custom", "mode": "generated+judge", "n_generations": len(gens)}
    )


def save_jsonl(data: ContrastiveSet, path: str | Path, *, overwrite: bool = False) -> None:
    """Write a contrastive set in the custom JSONL format (round-trips with custom_jsonl)."""
    rows = [
        json.dumps({"prompt": p.prompt, "response": p.response, "label": label}) + "\n"
        for label, pairs in (("positive", data.positive), ("negative", data.negative))
        for p in pairs
    ]
    write_text(path, "".join(rows), overwrite=overwrite)


def _build(
    model: object = None, data: str | Path | None = None, data_dir: object = None, part: str = "tune"
) -> ContrastiveSet:
    if not data:
        raise ContrastiveSetError("behaviour 'custom' needs --data FILE.jsonl with prompt, response, label rows")
    return custom_jsonl(data)


BEHAVIOUR = register(
    Behaviour(
        name="custom",
        summary="your own: a JSONL of prompt, response, label rows (--data)",
        build=_build,
        needs_data_file=True,
    )
)
