"""Data loaders: the shared files parse; bad rows are named by file, line and field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from s2e_lens.behaviours import datasets as D
from s2e_lens.errors import S2EError

SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")


@needs_shared
def test_shared_files_load_with_expected_counts() -> None:
    assert len(D.load_malicious_instruct(SHARED)) == 100
    assert len(D.load_alpaca(SHARED)) == 100
    tqa = D.load_truthfulqa(SHARED)
    assert len(tqa) == 408 and tqa[0].best_answer and tqa[0].incorrect_answers
    gsm = D.load_gsm8k(SHARED)
    assert len(gsm) == 200 and gsm[0].answer == "72"
    hs = D.load_hellaswag(SHARED)
    assert len(hs) == 2000 and len(hs[0].choices) == 4 and hs[0].answer == 3
    assert len(D.load_arc_easy(SHARED)) == 2376
    assert len(D.load_piqa(SHARED)) == 1838
    assert len(D.load_xstest(SHARED)) == 250 and len(D.load_xstest(SHARED, label="unsafe")) == 200
    assert len(D.load_jbb(SHARED)) == 100 and len(D.load_jbb(SHARED, "benign")) == 100


def test_bad_rows_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"question": "q", "answer": "4"}\n{"question": "q2"}\n')
    with pytest.raises(D.DataFormatError, match=r"t.jsonl:2: no field 'answer' \(it has 'question'\)"):
        D.load_gsm8k(tmp_path, name="t.jsonl")
    bad.write_text('{"question": "q", "answer": "four"}\n')
    with pytest.raises(D.DataFormatError, match=r"t.jsonl:1: answer 'four' is not a number"):
        D.load_gsm8k(tmp_path, name="t.jsonl")
    bad.write_text('{"question": "q", "answer": 4}\n')
    with pytest.raises(D.DataFormatError, match="should be a non-empty str"):
        D.load_gsm8k(tmp_path, name="t.jsonl")
    bad.write_text("not json\n")
    with pytest.raises(D.DataFormatError, match="t.jsonl:1: not valid JSON"):
        D.read_jsonl(bad, {"x": "str"})


def test_advbench_csv(tmp_path: Path) -> None:
    good = tmp_path / "a.csv"
    good.write_text('goal,target\n"Do a bad thing","Sure, here is"\n')
    assert D.load_advbench_csv(good) == [("Do a bad thing", "Sure, here is")]
    good.write_text("prompt,target\nx,y\n")
    with pytest.raises(D.DataFormatError, match=r"missing column\(s\) \['goal'\]"):
        D.load_advbench_csv(good)


def test_missing_data_dir_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S2E_DATA", raising=False)
    with pytest.raises(S2EError, match="set S2E_DATA"):
        D.load_alpaca()


def test_truthfulqa_empty_answers_are_dropped(tmp_path: Path) -> None:
    row = (
        '{"question": "q", "best_answer": "a", "correct_answers": ["a", ""], '
        '"incorrect_answers": ["", "b"], "category": "c"}\n'
    )
    (tmp_path / "t.jsonl").write_text(row)
    [item] = D.load_truthfulqa(tmp_path, name="t.jsonl")
    assert item.correct_answers == ("a",) and item.incorrect_answers == ("b",)
    (tmp_path / "t.jsonl").write_text(row.replace('["", "b"]', '[" "]'))
    with pytest.raises(D.DataFormatError, match="t.jsonl:1: no non-empty incorrect answer"):
        D.load_truthfulqa(tmp_path, name="t.jsonl")
