"""Assemble tests/data/refusal_gold.jsonl from generations and two independent readings.

    S2E_DATA=../shared/data python scripts/gold_build.py --generations A.jsonl B.jsonl \
        --first LABELS_A.jsonl ... --second LABELS_B.jsonl ... --decided DECIDED.json --out FILE

``--generations``: files written by scripts/gold_generations.py, one per model (ids are
given in order: ``s000``.. for the first file, ``q000``.. for the second). ``--first`` and
``--second``: the two readers' label files (JSON lines ``{"id", "label", "note"}``, written by
reading the texts against docs/gold-rubric.md, blind to the intervention). ``--decided``: for
each id the readers disagree on, ``[label, reason]`` from a third reading. Adversarial prompts
are stored as references into the AdvLLM file of the data folder; each row keeps its token ids
and the text after its first 32 and 64 tokens (decoded by the generating model's tokenizer).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from s2e_lens.behaviours.attacks import load_attack_set
from s2e_lens.io.files import write_text
from s2e_lens.models.cache import checkpoint_dir
from s2e_lens.models.registry import packaged_model

PREFIXES = (32, 64)


def read_labels(files: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in files:
        for line in Path(f).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out[row["id"]] = row["label"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", nargs="+", required=True)
    parser.add_argument("--first", nargs="+", required=True)
    parser.add_argument("--second", nargs="+", required=True)
    parser.add_argument("--decided", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    attacks = {p: i for i, p in enumerate(load_attack_set("advllm").prompts)}
    first, second = read_labels(args.first), read_labels(args.second)
    decided = json.loads(Path(args.decided).read_text())
    out = []
    for tag, path in zip("sq", args.generations, strict=False):
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        tok = AutoTokenizer.from_pretrained(checkpoint_dir(packaged_model(rows[0]["model"])))
        for k, r in enumerate(rows):
            rid = f"{tag}{k:03d}"
            a, b = first[rid], second[rid]
            label, how = (a, "agreed") if a == b else (decided[rid][0], "adjudicated: " + decided[rid][1])
            row = {
                "id": rid,
                "model": r["model"],
                "dtype": r["dtype"],
                "intervention": r["intervention"],
                "set": r["set"],
            }
            if r["set"] == "adversarial":
                row["prompt_ref"] = {"attack_set": "advllm", "index": attacks[r["prompt"]]}
            else:
                row["prompt"] = r["prompt"]
            ids = r["token_ids"]
            if tok.decode(ids, skip_special_tokens=True) != r["text"]:
                raise SystemExit(f"{rid}: the text is not the decoding of its token ids")
            prefixes = {str(n): tok.decode(ids[:n], skip_special_tokens=True) for n in PREFIXES if len(ids) > n}
            row.update(
                {
                    "text": r["text"],
                    "prefixes": prefixes,
                    "token_ids": ids,
                    "cut_off": r["cut_off"],
                    "label": label,
                    "annotators": [a, b],
                    "decided": how,
                }
            )
            out.append(row)
    write_text(args.out, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in out), overwrite=True)
    print(f"{len(out)} rows -> {args.out}")


if __name__ == "__main__":
    main()
