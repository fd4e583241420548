"""Behaviours: what to steer and edit towards, and how to measure it.

Built in: ``safety``, ``truthfulness``, ``concise`` and ``custom`` (one module each, holding
its data builder and, where it has one, its evaluation suite, labels and presets). Add your
own with :func:`register` and a :class:`Behaviour`, or build a :class:`ContrastiveSet`
directly (``s2e.ContrastiveSet.from_pairs``).
"""

from __future__ import annotations

from pathlib import Path

from s2e_lens.behaviours.base import Behaviour, Suite, SuiteSize, get, names, register
from s2e_lens.behaviours.concise import concise
from s2e_lens.behaviours.custom import custom_generated, custom_jsonl, save_jsonl
from s2e_lens.behaviours.safety import safety, safety_prompts
from s2e_lens.behaviours.splits import split, split_of
from s2e_lens.behaviours.truthfulness import truthfulness
from s2e_lens.core.contrastive import ContrastiveSet
from s2e_lens.models.loaded import LoadedModel

__all__ = [
    "Behaviour",
    "Suite",
    "SuiteSize",
    "by_name",
    "concise",
    "custom_generated",
    "custom_jsonl",
    "get",
    "names",
    "register",
    "safety",
    "safety_prompts",
    "save_jsonl",
    "split",
    "split_of",
    "truthfulness",
]


def by_name(
    name: str,
    *,
    model: LoadedModel | None = None,
    data: str | Path | None = None,
    data_dir: str | Path | None = None,
    part: str = "tune",
) -> ContrastiveSet:
    """A registered behaviour's contrastive set with its defaults (``safety``: teacher-forced;
    ``truthfulness``: TruthfulQA from ``data_dir``; ``concise``: needs ``model``, GSM8K from
    ``data_dir``; ``custom``: the JSONL file ``data``)."""
    return get(name).build(model=model, data=data, data_dir=data_dir, part=part)
