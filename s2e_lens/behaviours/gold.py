"""The refusal gold set: real generations of the toolkit, each labelled by a person.

A row (one JSON object a line) holds the model and intervention that wrote the text, its
prompt set (harmful, adversarial, harmless, scary_but_safe), the prompt, the generated text
and its token ids, and the label read by hand against ``docs/gold-rubric.md``: ``refusal``,
``partial``, ``compliance`` or ``degenerate``. Adversarial prompts are stored as a reference
into the AdvLLM file of the data folder (``prompt_ref``), which is read, never copied.

:func:`judge_agreement` scores a refusal judge against the labels (a judge answers
refused / not refused; the gold's ``refusal`` is refused and the other three labels are not),
on the whole set and on its cut-off and degenerate subsets, and optionally on the text's first
``n`` tokens (how verdicts change with the generation length).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2e_lens.behaviours.attacks import load_attack_set
from s2e_lens.core.agreement import Agreement, agreement
from s2e_lens.core.judges import verdicts
from s2e_lens.core.metrics import Judge
from s2e_lens.errors import DataFormatError

LABELS: tuple[str, ...] = ("refusal", "partial", "compliance", "degenerate")
SETS: tuple[str, ...] = ("harmful", "adversarial", "harmless", "scary_but_safe")
BINARY: tuple[str, ...] = ("refused", "not refused")


@dataclass(frozen=True)
class GoldRow:
    """One labelled generation."""

    id: str
    model: str
    intervention: str
    set: str
    prompt: str
    text: str
    token_ids: tuple[int, ...]
    cut_off: bool
    label: str
    prefixes: dict[int, str]  # the text after its first n tokens, for the lengths the file records

    @property
    def refused(self) -> bool:
        return self.label == "refusal"

    def text_at(self, n_tokens: int) -> str:
        """The text as it read after ``n_tokens`` new tokens (recorded lengths only)."""
        if n_tokens >= len(self.token_ids):
            return self.text
        if n_tokens not in self.prefixes:
            raise KeyError(f"{self.id}: no recorded prefix of {n_tokens} tokens (recorded: {sorted(self.prefixes)})")
        return self.prefixes[n_tokens]


def load_gold(path: str | Path, *, data_dir: str | Path | None = None) -> list[GoldRow]:
    """The labelled rows of a gold file; adversarial prompts are looked up in the data folder."""
    path = Path(path)
    attacks: tuple[str, ...] | None = None
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        raw: dict[str, Any] = json.loads(line)
        prompt = raw.get("prompt")
        if prompt is None:
            ref = raw.get("prompt_ref") or {}
            if ref.get("attack_set") != "advllm" or not isinstance(ref.get("index"), int):
                raise DataFormatError(f"{path}:{n}: a row needs its prompt or a prompt_ref into advllm")
            attacks = attacks or load_attack_set("advllm", data_dir=data_dir).prompts
            prompt = attacks[ref["index"]]
        if raw.get("label") not in LABELS or raw.get("set") not in SETS:
            raise DataFormatError(
                f"{path}:{n}: label {raw.get('label')!r} / set {raw.get('set')!r} not among {LABELS} / {SETS}"
            )
        rows.append(
            GoldRow(
                id=str(raw["id"]),
                model=str(raw["model"]),
                intervention=str(raw["intervention"]),
                set=str(raw["set"]),
                prompt=str(prompt),
                text=str(raw["text"]),
                token_ids=tuple(int(t) for t in raw["token_ids"]),
                cut_off=bool(raw["cut_off"]),
                label=str(raw["label"]),
                prefixes={int(n): str(t) for n, t in (raw.get("prefixes") or {}).items()},
            )
        )
    return rows


def truncated(rows: Sequence[GoldRow], n_tokens: int, decode: Callable[[Sequence[int]], str]) -> list[str]:
    """Each row's text as it would read after ``n_tokens`` new tokens (an exact prefix of the
    greedy generation); ``decode`` is the generating model's tokenizer's decode."""
    return [row.text if len(row.token_ids) <= n_tokens else decode(row.token_ids[:n_tokens]) for row in rows]


def judge_agreement(judge: Judge, rows: Sequence[GoldRow], texts: Sequence[str] | None = None) -> dict[str, Agreement]:
    """``judge`` against the gold labels (refused vs not) on ``all`` rows, the ``cut_off`` ones
    and those labelled ``degenerate``; ``texts`` replaces the rows' texts (e.g. truncated)."""
    texts = [r.text for r in rows] if texts is None else list(texts)
    found = verdicts(judge, [(r.prompt, t) for r, t in zip(rows, texts, strict=True)])
    return subsets(rows, ["refused" if v else "not refused" for v in found], BINARY, binary=True)


def subsets(
    rows: Sequence[GoldRow], predicted: Sequence[str], labels: Sequence[str], *, binary: bool
) -> dict[str, Agreement]:
    """Agreement of ``predicted`` with the gold on the whole set and its cut-off and degenerate
    subsets; ``binary``: the gold is refused vs not (else the four labels)."""

    def gold(row: GoldRow) -> str:
        return ("refused" if row.refused else "not refused") if binary else row.label

    groups = {
        "all": list(range(len(rows))),
        "cut_off": [i for i, r in enumerate(rows) if r.cut_off],
        "degenerate": [i for i, r in enumerate(rows) if r.label == "degenerate"],
    }
    return {
        name: agreement([gold(rows[i]) for i in idx], [predicted[i] for i in idx], labels)
        for name, idx in groups.items()
        if idx
    }
