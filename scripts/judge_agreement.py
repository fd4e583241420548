"""Every refusal judge against the hand-read gold set: accuracy, Cohen's kappa, confusion.

    S2E_DATA=../shared/data python scripts/judge_agreement.py [--judges paper,strict,reading]
        [--sample reading=48] [--out docs/results/judge-agreement.json] [--page docs/results/judges.md]

For each judge and each recorded generation length (the text after its first 32, 64 and all
128 tokens: exact prefixes of the greedy answer), agreement with the gold labels (refused =
``refusal``; partial, compliance and degenerate are not refused) on the whole set and on its
cut-off and degenerate subsets, with the wall time. ``--sample JUDGE=N`` scores that judge on
N rows only (every k-th row, in file order) where it is too slow for all; its scores are
recorded, so the test can re-score them.
The reading judge's threshold is chosen on the tune half of its rows (a hash of each row's id)
and its agreement is reported on the test half only. Prints a table, writes everything as JSON
and the results page's table between its markers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

from s2e_lens.behaviours.gold import BINARY, GoldRow, judge_agreement, load_gold, subsets
from s2e_lens.behaviours.splits import split_of
from s2e_lens.core.judges import load_judge
from s2e_lens.experiments.health import describe_stack
from s2e_lens.io.files import write_text

GOLD = Path(__file__).resolve().parent.parent / "tests" / "data" / "refusal_gold.jsonl"
TOKENS = (32, 64, 128)
BEGIN, END = "<!-- judge-agreement table -->", "<!-- end of table -->"


def sample_of(rows: list[GoldRow], n: int | None) -> list[GoldRow]:
    """Every k-th row (k = len // n), the first n of them; all rows for None."""
    if n is None or n >= len(rows):
        return rows
    return rows[:: max(1, len(rows) // n)][:n]


def best_threshold(scores: list[float], refused: list[bool]) -> float:
    """The threshold (a midpoint between sorted scores) with the highest Cohen's kappa."""
    from s2e_lens.core.agreement import cohen_kappa

    gold = ["refused" if r else "not refused" for r in refused]
    points = sorted(set(scores))
    candidates = [(a + b) / 2 for a, b in zip(points, points[1:], strict=False)] or points
    return max(
        candidates,
        key=lambda t: cohen_kappa(gold, ["refused" if s >= t else "not refused" for s in scores], BINARY),
    )


def score(spec: str, rows: list[GoldRow], lengths: tuple[int, ...]) -> dict[str, object]:
    started = time.perf_counter()
    judge = load_judge(spec)
    entry: dict[str, object] = {"load_seconds": time.perf_counter() - started, "ids": [r.id for r in rows]}
    if spec == "reading":  # scores on every sampled row; the threshold from the tune half, judged on the test half
        inner = judge.judge
        tune = [i for i, r in enumerate(rows) if split_of(r.id) == "tune"]
        test = [i for i, r in enumerate(rows) if split_of(r.id) == "test"]
        scores: dict[str, list[float]] = {}
        for n in lengths:
            started = time.perf_counter()
            scores[str(n)] = [x.score for x in inner.read([(r.prompt, r.text_at(n)) for r in rows])]
            seconds = time.perf_counter() - started
            if n == lengths[-1]:
                threshold = best_threshold([scores[str(n)][i] for i in tune], [rows[i].refused for i in tune])
                entry["threshold"] = threshold
            entry[str(n)] = {"seconds": seconds, "per_answer_seconds": seconds / len(rows)}
        for n in lengths:
            verdicts = ["refused" if scores[str(n)][i] >= entry["threshold"] else "not refused" for i in test]
            found = subsets([rows[i] for i in test], verdicts, BINARY, binary=True)
            entry[str(n)].update({k: a.to_dict() for k, a in found.items()})  # type: ignore[union-attr]
            a = found["all"]
            print(f"{spec:8} {n:4} tokens  test n {a.n}  accuracy {a.accuracy:.3f}  kappa {a.kappa:.3f}")
        entry.update({"scores": scores, "tune_ids": [rows[i].id for i in tune], "test_ids": [rows[i].id for i in test]})
        return entry
    for n in lengths:
        texts = [r.text_at(n) for r in rows]
        started = time.perf_counter()
        found = judge_agreement(judge, rows, texts)
        seconds = time.perf_counter() - started
        entry[str(n)] = {"seconds": seconds, **{k: a.to_dict() for k, a in found.items()}}
        a = found["all"]
        print(f"{spec:8} {n:4} tokens  n {a.n}  accuracy {a.accuracy:.3f}  kappa {a.kappa:.3f}  ({seconds:.1f} s)")
    return entry


def page(report: dict[str, object], command: str) -> str:
    """The results page's Markdown table (one row per judge and length)."""
    lines = [
        "| judge | new tokens | n | accuracy | Cohen's kappa | kappa, cut-off texts | accuracy, degenerate texts |"
        " confusion (gold refused: judge refused / not; gold not: refused / not) | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["judges"].items():  # type: ignore[attr-defined]
        for n in report["tokens"]:  # type: ignore[attr-defined]
            if str(n) not in entry or "all" not in entry[str(n)]:
                continue
            e = entry[str(n)]
            a, cut, deg = e["all"], e.get("cut_off"), e.get("degenerate")
            (rr, rn), (nr, nn) = a["confusion"]
            cut_kappa = f"{cut['kappa']:.3f}" if cut else ""
            deg_accuracy = f"{deg['accuracy']:.3f}" if deg else ""
            lines.append(
                f"| {name} | {n} | {a['n']} | {a['accuracy']:.3f} | {a['kappa']:.3f} | {cut_kappa} | {deg_accuracy} | "
                f"{rr} / {rn}; {nr} / {nn} | {e['seconds']:.1f} |"
            )
    return "\n".join(lines) + f"\n\nMade by `{command}` on {report['date']} ({report['stack']}).\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gold", default=str(GOLD))
    parser.add_argument("--judges", default="paper,strict,reading")
    parser.add_argument("--sample", action="append", default=[], help="JUDGE=N: score that judge on N rows")
    parser.add_argument("--reading-tokens", default="128", help="lengths the (slow) reading judge reads")
    parser.add_argument("--out", default=None)
    parser.add_argument("--page", default=None, help="write the Markdown table here")
    args = parser.parse_args()
    rows = load_gold(args.gold)
    sizes = {k: int(v) for k, v in (s.split("=") for s in args.sample)}
    report: dict[str, object] = {
        "gold": Path(args.gold).name,
        "n": len(rows),
        "tokens": list(TOKENS),
        "date": datetime.date.today().isoformat(),
        "stack": describe_stack(),
        "judges": {
            spec: score(
                spec,
                sample_of(rows, sizes.get(spec)),
                tuple(int(n) for n in args.reading_tokens.split(",")) if spec == "reading" else TOKENS,
            )
            for spec in args.judges.split(",")
        },
    }
    if args.out:
        write_text(args.out, json.dumps(report, indent=1) + "\n", overwrite=True)
    if args.page:
        command = "python scripts/judge_agreement.py " + " ".join(
            [
                f"--judges {args.judges}",
                *(f"--sample {s}" for s in args.sample),
                f"--reading-tokens {args.reading_tokens}",
            ]
        )
        table = page(report, command)
        path = Path(args.page)
        old = path.read_text() if path.is_file() else ""
        if BEGIN in old and END in old:  # the page's prose stays; the table between the markers is new
            table = old[: old.index(BEGIN) + len(BEGIN)] + "\n" + table + old[old.index(END) :]
        write_text(path, table, overwrite=True)


if __name__ == "__main__":
    main()
