"""Attack sets: the prompts whose refusal rate is a safety run's attribute.

``advllm``: the 420 adversarial (jailbreak) prompts in ``$S2E_DATA/advllm_adversarial_100-519.jsonl``
(AdvBench goals with an AdvLLM suffix, the kind the paper evaluates on; read from the data
folder, never copied); ``plain``: the project's held-out plain harmful prompts; or the user's
own JSONL or CSV file with the prompt in a named field.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from s2e_lens.behaviours.datasets import data_file, load_harmful_prompts, read_jsonl_lines
from s2e_lens.behaviours.splits import split
from s2e_lens.errors import DataFormatError, InvalidInputError

ADVLLM_FILE = "advllm_adversarial_100-519.jsonl"
BUILT_IN = ("advllm", "plain")


@dataclass(frozen=True)
class AttackSet:
    """Named prompts to attack the model with; ``source`` says where they came from."""

    name: str
    prompts: tuple[str, ...]
    source: str

    def part(self, which: str) -> AttackSet:
        """The tune or test half (a stable hash of each prompt decides; see ``splits``)."""
        return AttackSet(self.name, tuple(split(self.prompts, lambda p: p, which)), f"{self.source} ({which} split)")


def load_attack_set(spec: str, *, prompt_field: str = "prompt", data_dir: str | Path | None = None) -> AttackSet:
    """``advllm``, ``plain`` or a path to a ``.jsonl`` / ``.csv`` file whose ``prompt_field``
    holds the prompts. Errors name the file, the line and the fix before any model work."""
    if spec == "advllm":
        path = data_file(ADVLLM_FILE, data_dir)
        return AttackSet("advllm", tuple(read_prompts(path, "prompt")), f"{ADVLLM_FILE} from the data folder")
    if spec == "plain":
        rows = load_harmful_prompts()
        return AttackSet("plain", tuple(r["prompt"] for r in rows), "s2e_lens/data/safety/harmful.jsonl")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise InvalidInputError(
            f"attack set {spec!r}: use advllm, plain, or a .jsonl/.csv file of prompts"
            + (" (it is a directory)" if path.is_dir() else " (no such file)")
        )
    return AttackSet(path.stem, tuple(read_prompts(path, prompt_field)), str(path))


def read_prompts(path: Path, field: str) -> list[str]:
    """The non-empty string in ``field`` of every row of a JSONL or CSV file."""
    if path.suffix.lower() == ".csv":
        return _csv_prompts(path, field)
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise InvalidInputError(f"{path}: give a .jsonl or .csv file of prompts")
    try:
        rows = read_jsonl_lines(path, {field: "str"})
    except DataFormatError as err:
        if "no rows" in str(err):
            raise DataFormatError(f"{path}: no prompts (the file is empty)") from None
        if f"no field {field!r}" in str(err):
            raise DataFormatError(f"{err}; name the prompt's field with --prompt-field") from None
        raise
    return [row[field] for _, row in rows]


def _csv_prompts(path: Path, field: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise DataFormatError(f"{path}: no prompts (the file is empty)")
        if field not in reader.fieldnames:
            raise DataFormatError(
                f"{path}: no column {field!r} (it has {', '.join(map(repr, reader.fieldnames))}); "
                "name the prompt's column with --prompt-field"
            )
        prompts = [_prompt(row[field], path, lineno, field) for lineno, row in enumerate(reader, 2)]
    if not prompts:
        raise DataFormatError(f"{path}: no prompts (only a header)")
    return prompts


def _prompt(value: object, path: Path, lineno: int, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"{path}:{lineno}: {field!r} should be a non-empty string, got {value!r:.60}")
    return value
