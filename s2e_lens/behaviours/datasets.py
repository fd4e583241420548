"""Loaders for the standard evaluation files, with row-level validation.

The public files are not shipped with s2e_lens: point ``$S2E_DATA`` (or the ``directory``
argument) at a folder holding them (file names as in the project's ``shared/data``). Every
loader validates each row and names the file, the line and the field when one is wrong.
The project's own prompt sets ship inside the package (``s2e_lens/data``).
"""

from __future__ import annotations

import csv
import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

from s2e_lens.core.items import MathItem, MultipleChoice, TruthfulQAItem
from s2e_lens.errors import DataFormatError, S2EError
from s2e_lens.io.files import expand_user

DATA_ENV = "S2E_DATA"


class DataDirError(S2EError):
    """The evaluation-data folder (``--data-dir`` / ``$S2E_DATA``) or a file in it is missing."""


def data_dir(directory: str | Path | None = None) -> Path:
    """The folder of the public evaluation files: ``directory``, else ``$S2E_DATA``."""
    chosen = directory if directory is not None else os.environ.get(DATA_ENV)
    origin = "--data-dir (data_dir=...)" if directory is not None else DATA_ENV
    if not chosen:
        raise DataDirError(
            f"no evaluation-data folder: set {DATA_ENV}=/path/to/data (the folder with "
            "truthfulqa_train.jsonl, hellaswag_val_2k.jsonl, ...) or pass --data-dir (data_dir=...)"
        )
    path = expand_user(chosen)
    if not path.is_dir():
        raise DataDirError(f"{origin} points at {path}, which is not a directory")
    return path


def data_file(name: str, directory: str | Path | None) -> Path:
    path = Path(name) if Path(name).is_absolute() else data_dir(directory) / name
    if not path.is_file():
        origin = "--data-dir" if directory is not None else DATA_ENV
        raise DataDirError(f"data file {path} not found; check {origin} or the path")
    return path


_CHECKS: dict[str, Any] = {
    "str": lambda v: isinstance(v, str) and v.strip() != "",
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list[str]": lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v),
}


def read_jsonl_lines(path: str | Path, schema: dict[str, str]) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for each row of a JSONL file (blank lines skipped but counted),
    each row checked against ``schema`` (field -> "str"|"int"|"bool"|"list[str]"). Errors name
    the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    rows = []
    try:
        with path.open("rb") as fh:  # bytes, split on \n only: line numbers as editors count them
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataFormatError(
                        f"{path}:{lineno}: not UTF-8 text ({err.reason} at byte {err.start} "
                        "of the line); save the file as UTF-8"
                    ) from None
                if not line.strip():
                    continue
                rows.append((lineno, _parse_row(path, lineno, line, schema)))
    except OSError as err:
        raise DataFormatError(f"{path}: cannot read it ({err.strerror or err})") from None
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return rows


MAX_ROW_BYTES = 4 * 2**20  # one JSONL row (a prompt, a response and a few fields)
MAX_ROW_DEPTH = 64  # nesting of objects and lists in one row


def nesting_depth(text: str) -> int:
    """The deepest nesting of JSON objects and lists in ``text`` (brackets inside strings do
    not count), found without parsing, so that a hostile row cannot exhaust the parser.

    >>> nesting_depth('{"a": [1, {"b": "[[["}]}'), nesting_depth("[" * 5000)
    (3, 5000)
    """
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _parse_row(path: Path, lineno: int, line: str, schema: dict[str, str]) -> dict[str, Any]:
    if len(line) > MAX_ROW_BYTES:
        raise DataFormatError(
            f"{path}:{lineno}: the row is {len(line):,} characters long; at most {MAX_ROW_BYTES:,} per row"
        )
    if "[" in line or line.count("{") > 1:
        depth = nesting_depth(line)
        if depth > MAX_ROW_DEPTH:
            raise DataFormatError(
                f"{path}:{lineno}: the row nests objects or lists {depth} levels deep; at most {MAX_ROW_DEPTH}"
            )
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    for field, kind in schema.items():
        if field not in row:
            raise DataFormatError(f"{path}:{lineno}: no field {field!r} (it has {', '.join(map(repr, row)) or 'none'})")
        if not _CHECKS[kind](row[field]):
            raise DataFormatError(
                f"{path}:{lineno}: field {field!r} should be a non-empty {kind}, got {row[field]!r:.80}"
            )
    return row


def read_jsonl(path: str | Path, schema: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of a JSONL file, each checked against ``schema`` (see :func:`read_jsonl_lines`)."""
    return [row for _, row in read_jsonl_lines(path, schema)]


# ------------------------------------------------------------------------------ loaders


def load_lines(name: str, directory: str | Path | None = None) -> list[str]:
    """Non-empty lines of a text file (e.g. ``maliciousinstruct.txt``)."""
    lines = [ln.strip() for ln in data_file(name, directory).read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln]


def load_malicious_instruct(directory: str | Path | None = None) -> list[str]:
    return load_lines("maliciousinstruct.txt", directory)


def load_alpaca(directory: str | Path | None = None) -> list[str]:
    return [
        r["instruction"] for r in read_jsonl(data_file("alpaca_benign_100.jsonl", directory), {"instruction": "str"})
    ]


def load_truthfulqa(directory: str | Path | None = None, name: str = "truthfulqa_train.jsonl") -> list[TruthfulQAItem]:
    """TruthfulQA rows. Empty strings inside the answer lists (a quirk of the upstream data:
    12 of the 408 rows here) are dropped; a row left with no correct or no incorrect answer is
    an error naming the line."""
    schema = {
        "question": "str",
        "best_answer": "str",
        "correct_answers": "list[str]",
        "incorrect_answers": "list[str]",
        "category": "str",
    }
    items = []
    for lineno, r in read_jsonl_lines(data_file(name, directory), schema):
        correct = tuple(a for a in r["correct_answers"] if a.strip())
        incorrect = tuple(a for a in r["incorrect_answers"] if a.strip())
        if not correct or not incorrect:
            raise DataFormatError(f"{name}:{lineno}: no non-empty {'correct' if not correct else 'incorrect'} answer")
        items.append(TruthfulQAItem(r["question"], r["best_answer"], correct, incorrect, r["category"]))
    return items


def load_gsm8k(directory: str | Path | None = None, name: str = "gsm8k_probe_200.jsonl") -> list[MathItem]:
    rows = read_jsonl_lines(data_file(name, directory), {"question": "str", "answer": "str"})
    out = []
    for i, r in rows:
        answer = r["answer"].split("####")[-1].strip().replace(",", "")
        try:
            float(answer)
        except ValueError:
            raise DataFormatError(f"{name}:{i}: answer {r['answer']!r} is not a number") from None
        out.append(MathItem(r["question"], answer))
    return out


def load_hellaswag(directory: str | Path | None = None) -> list[MultipleChoice]:
    rows = read_jsonl(
        data_file("hellaswag_val_2k.jsonl", directory),
        {"ctx": "str", "endings": "list[str]", "label": "int", "activity_label": "str"},
    )
    return [
        MultipleChoice(
            f"{r['activity_label']}: {r['ctx']}",
            tuple(" " + e for e in r["endings"]),
            r["label"],
            f"hellaswag:{r.get('idx', i)}",
        )
        for i, r in enumerate(rows)
    ]


def load_arc_easy(directory: str | Path | None = None) -> list[MultipleChoice]:
    rows = read_jsonl(
        data_file("arc_easy_test.jsonl", directory), {"question": "str", "choices": "list[str]", "answer_index": "int"}
    )
    return [
        MultipleChoice(
            f"Question: {r['question']}\nAnswer:",
            tuple(" " + c for c in r["choices"]),
            r["answer_index"],
            f"arc_easy:{r.get('id', i)}",
        )
        for i, r in enumerate(rows)
    ]


def load_piqa(directory: str | Path | None = None) -> list[MultipleChoice]:
    rows = read_jsonl(
        data_file("piqa_valid.jsonl", directory), {"goal": "str", "sol1": "str", "sol2": "str", "label": "int"}
    )
    return [
        MultipleChoice(f"Question: {r['goal']}\nAnswer:", (" " + r["sol1"], " " + r["sol2"]), r["label"], f"piqa:{i}")
        for i, r in enumerate(rows)
    ]


def load_xstest(directory: str | Path | None = None, label: str | None = "safe") -> list[str]:
    """XSTest prompts; ``label="safe"`` (default) gives the ones a model should answer."""
    rows = read_jsonl(data_file("xstest.jsonl", directory), {"prompt": "str", "label": "str", "type": "str"})
    return [r["prompt"] for r in rows if label is None or r["label"] == label]


def load_jbb(directory: str | Path | None = None, label: str = "harmful") -> list[str]:
    rows = read_jsonl(data_file("jbb_behaviors.jsonl", directory), {"goal": "str", "label": "str"})
    return [r["goal"] for r in rows if r["label"] == label]


def load_advbench_csv(path: str | Path) -> list[tuple[str, str]]:
    """An AdvBench-style CSV with ``goal`` and ``target`` columns -> (goal, target) rows."""
    path = Path(path)
    if not path.is_file():
        raise S2EError(f"data file {path} not found")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"goal", "target"} - set(reader.fieldnames or [])
        if missing:
            raise DataFormatError(f"{path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
        rows = []
        for lineno, row in enumerate(reader, 2):
            if not (row["goal"] or "").strip():
                raise DataFormatError(f"{path}:{lineno}: empty goal")
            rows.append((row["goal"].strip(), (row["target"] or "").strip()))
    return rows


# ------------------------------------------------------------------ the project's own sets


def packaged_file(*parts: str) -> Path:
    return Path(str(files("s2e_lens").joinpath("data", *parts)))


def load_harmful_prompts() -> list[dict[str, Any]]:
    """The project's harmful prompts: rows with ``prompt``, ``refusal``, ``compliance``, ``category``."""
    return read_jsonl(
        packaged_file("safety", "harmful.jsonl"),
        {"id": "str", "category": "str", "prompt": "str", "refusal": "str", "compliance": "str"},
    )


def load_harmless_prompts() -> list[dict[str, Any]]:
    """The project's harmless prompts: rows with ``prompt``, ``response``, ``category``, ``scary_but_safe``."""
    return read_jsonl(
        packaged_file("safety", "harmless.jsonl"),
        {"id": "str", "category": "str", "prompt": "str", "response": "str", "scary_but_safe": "bool"},
    )


def load_safety_prompts() -> dict[str, list[dict[str, Any]]]:
    """Both halves of the project's safety set: ``harmful`` and ``harmless`` rows."""
    return {"harmful": load_harmful_prompts(), "harmless": load_harmless_prompts()}
