"""Evaluation items as plain types: multiple-choice questions, TruthfulQA questions, math
problems (the loaders in :mod:`s2e_lens.behaviours.datasets` make them from files)."""

from __future__ import annotations

from dataclasses import dataclass

from s2e_lens.errors import DataFormatError


@dataclass(frozen=True)
class MultipleChoice:
    """A question with choices scored by log-likelihood; ``context`` + one of ``choices``."""

    context: str
    choices: tuple[str, ...]
    answer: int
    source: str

    def __post_init__(self) -> None:
        if not 0 <= self.answer < len(self.choices):
            raise DataFormatError(f"{self.source}: answer index {self.answer} out of range")


@dataclass(frozen=True)
class TruthfulQAItem:
    question: str
    best_answer: str
    correct_answers: tuple[str, ...]
    incorrect_answers: tuple[str, ...]
    category: str


@dataclass(frozen=True)
class MathItem:
    question: str
    answer: str  # the final number, as text
