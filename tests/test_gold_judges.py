"""Every refusal judge against the hand-read gold set, recomputed: the documented figures
(docs/results/judge-agreement.json and the table in docs/results/judges.md) must not move.

The keyword judges are re-run on the gold texts at every recorded length. The reading judge's
recorded labels are re-scored here, and (slow, where its model is installed) re-read live on
a sample of rows to show the recorded labels are what the judge says today.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2e_lens.behaviours.gold import BINARY, LABELS, judge_agreement, load_gold, subsets, truncated
from s2e_lens.core.judges import load_judge


def same(found, recorded: dict) -> bool:
    """An Agreement equals its recorded dict: counts and labels exactly, rates to 1e-12."""
    d = found.to_dict()
    return (
        d["n"] == recorded["n"]
        and d["labels"] == recorded["labels"]
        and d["confusion"] == recorded["confusion"]
        and abs(d["accuracy"] - recorded["accuracy"]) < 1e-12
        and abs(d["kappa"] - recorded["kappa"]) < 1e-12
    )


ROOT = Path(__file__).resolve().parent.parent
GOLD = ROOT / "tests" / "data" / "refusal_gold.jsonl"
RESULTS = ROOT / "docs" / "results" / "judge-agreement.json"
PAGE = ROOT / "docs" / "results" / "judges.md"


@pytest.fixture(scope="module")
def gold():
    return load_gold(GOLD)


@pytest.fixture(scope="module")
def documented() -> dict:
    return json.loads(RESULTS.read_text())


def test_the_gold_set_is_what_the_rubric_asks_for(gold) -> None:
    assert len(gold) >= 300
    assert len({r.id for r in gold}) == len(gold)
    assert {r.label for r in gold} <= set(LABELS)
    assert {r.model for r in gold} == {"smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"}
    assert {r.set for r in gold} == {"harmful", "adversarial", "harmless", "scary_but_safe"}
    kinds = {r.intervention.split()[0] for r in gold}
    assert kinds == {"unedited", "steer", "edit"}
    assert any(r.cut_off for r in gold) and any(not r.cut_off for r in gold)
    assert all(len(r.token_ids) <= 128 for r in gold)


def test_the_recorded_prefixes_are_the_decoded_first_tokens(gold) -> None:
    """Where the generating model is installed, each stored prefix is its tokenizer's decoding
    of the first n token ids (the default model always is; the 1.5B model where pulled)."""
    from transformers import AutoTokenizer

    from s2e_lens.models.cache import checkpoint_dir, is_cached
    from s2e_lens.models.registry import packaged_model

    checked = 0
    for name in sorted({r.model for r in gold}):
        spec = packaged_model(name)
        if not is_cached(spec):
            continue
        tok = AutoTokenizer.from_pretrained(checkpoint_dir(spec))
        decode = lambda ids, tok=tok: tok.decode(list(ids), skip_special_tokens=True)  # noqa: E731
        for n in (32, 64):
            mine = [r for r in gold if r.model == name]
            assert [r.text_at(n) for r in mine] == truncated(mine, n, decode)
        assert all(decode(r.token_ids) == r.text for r in gold if r.model == name)
        checked += 1
    assert checked >= 1


def test_every_row_was_read_twice(gold) -> None:
    raw = [json.loads(line) for line in GOLD.read_text().splitlines() if line.strip()]
    for row in raw:
        a, b = row["annotators"]
        assert a in LABELS and b in LABELS
        assert (a == b and row["label"] == a and row["decided"] == "agreed") or row["decided"].startswith("adjudicated")


@pytest.mark.parametrize("judge_name", ["paper", "strict"])
def test_keyword_judges_agree_with_the_gold_as_documented(gold, documented, judge_name: str) -> None:
    judge = load_judge(judge_name)
    assert documented["judges"][judge_name]["ids"] == [r.id for r in gold]  # scored on every row
    for n in documented["tokens"]:
        found = judge_agreement(judge, gold, [r.text_at(n) for r in gold])
        recorded = documented["judges"][judge_name][str(n)]
        for subset, agreement in found.items():
            assert same(agreement, recorded[subset]), (judge_name, n, subset, agreement, recorded[subset])


def test_the_reading_judge_agrees_with_the_gold_as_documented(gold, documented) -> None:
    """Its threshold is the best on the tune half of its rows (no midpoint between the tune
    scores does better), and its agreement on the test half is what the page says."""
    from s2e_lens.behaviours.splits import split_of
    from s2e_lens.core.agreement import cohen_kappa

    entry = documented["judges"]["reading"]
    by_id = {r.id: r for r in gold}
    rows = [by_id[i] for i in entry["ids"]]
    assert entry["tune_ids"] == [r.id for r in rows if split_of(r.id) == "tune"]
    assert entry["test_ids"] == [r.id for r in rows if split_of(r.id) == "test"]
    threshold = entry["threshold"]
    lengths = [int(n) for n in entry["scores"]]
    scores = {n: dict(zip(entry["ids"], entry["scores"][str(n)], strict=True)) for n in lengths}

    def kappa(ids: list[str], n: int, t: float) -> float:
        gold_side = ["refused" if by_id[i].refused else "not refused" for i in ids]
        return cohen_kappa(gold_side, ["refused" if scores[n][i] >= t else "not refused" for i in ids], BINARY)

    longest = max(lengths)
    tune_scores = sorted({scores[longest][i] for i in entry["tune_ids"]})
    midpoints = [(a + b) / 2 for a, b in zip(tune_scores, tune_scores[1:], strict=False)]
    assert all(kappa(entry["tune_ids"], longest, threshold) >= kappa(entry["tune_ids"], longest, t) for t in midpoints)
    for n in lengths:
        test = [by_id[i] for i in entry["test_ids"]]
        verdicts = ["refused" if scores[n][r.id] >= threshold else "not refused" for r in test]
        for subset, agreement in subsets(test, verdicts, BINARY, binary=True).items():
            assert same(agreement, entry[str(n)][subset]), (n, subset, agreement, entry[str(n)][subset])


def test_the_results_page_shows_the_documented_kappas(documented) -> None:
    page = PAGE.read_text()
    for name, entry in documented["judges"].items():
        for n in documented["tokens"]:
            if str(n) not in entry:
                continue
            kappa = entry[str(n)]["all"]["kappa"]
            assert f"{kappa:.3f}" in page, (name, n, kappa)


@pytest.mark.slow
def test_the_recorded_scores_are_what_the_reading_judge_says_now(gold, documented) -> None:
    from s2e_lens.models.cache import is_cached
    from s2e_lens.models.registry import packaged_model

    if not is_cached(packaged_model("qwen2.5-coder-1.5b-instruct")):
        pytest.skip("the reading judge's model is not installed (s2e models pull qwen2.5-coder-1.5b-instruct)")
    judge = load_judge("reading").judge
    entry = documented["judges"]["reading"]
    by_id = {r.id: r for r in gold}
    n = max(int(k) for k in entry["scores"])
    recorded = dict(zip(entry["ids"], entry["scores"][str(n)], strict=True))
    sample = entry["ids"][:: max(1, len(entry["ids"]) // 6)][:6]
    readings = judge.read([(by_id[i].prompt, by_id[i].text_at(n)) for i in sample])
    assert [r.score for r in readings] == pytest.approx([recorded[i] for i in sample], abs=1e-4)
    assert judge.threshold == pytest.approx(entry["threshold"])  # the documented threshold is the default
