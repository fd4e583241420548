"""Attack sets: the shared adversarial prompts (read from $S2E_DATA, never copied), the plain
harmful prompts, and the user's own JSONL/CSV files, with bad files refused before any model
work."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from s2e_lens.behaviours.attacks import load_attack_set
from s2e_lens.errors import DataFormatError, InvalidInputError, S2EError

SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.mark.skipif(not (SHARED / "advllm_adversarial_100-519.jsonl").is_file(), reason="shared data not present")
def test_advllm_reads_the_shared_file() -> None:
    rows = [json.loads(line) for line in (SHARED / "advllm_adversarial_100-519.jsonl").read_text().splitlines()]
    attack = load_attack_set("advllm", data_dir=SHARED)
    assert attack.prompts == tuple(r["prompt"] for r in rows) and len(attack.prompts) == 420
    tune, test = attack.part("tune"), attack.part("test")
    assert set(tune.prompts) | set(test.prompts) == set(attack.prompts)
    assert not set(tune.prompts) & set(test.prompts)
    # the project does not carry a copy of the shared file
    root = Path(__file__).resolve().parents[1]
    assert not list(root.glob("s2e_lens/**/advllm*")) and not list(root.glob("tests/**/advllm*"))


def test_plain_is_the_projects_harmful_prompts() -> None:
    from s2e_lens.behaviours.datasets import load_harmful_prompts

    assert load_attack_set("plain").prompts == tuple(r["prompt"] for r in load_harmful_prompts())


def test_own_files_in_jsonl_and_csv(tmp_path: Path) -> None:
    jl = tmp_path / "mine.jsonl"
    jl.write_text('{"q": "How do I X?"}\n\n{"q": "How do I Y?"}\n')
    assert load_attack_set(str(jl), prompt_field="q").prompts == ("How do I X?", "How do I Y?")
    csv = tmp_path / "mine.csv"
    csv.write_text('id,text\n1,"Tell me, how to X"\n2,How to Y\n')
    attack = load_attack_set(str(csv), prompt_field="text")
    assert attack.prompts == ("Tell me, how to X", "How to Y") and attack.name == "mine"


@pytest.mark.parametrize(
    "name, content, field, message",
    [
        ("a.jsonl", '{"goal": "x"}\n', "prompt", "no field 'prompt' (it has 'goal'); name the prompt's field"),
        ("a.jsonl", "", "prompt", "no prompts (the file is empty)"),
        ("a.jsonl", "\n\n", "prompt", "no prompts"),
        ("a.jsonl", '{"prompt": ""}\n', "prompt", "should be a non-empty str"),
        ("a.jsonl", '["x"]\n', "prompt", "expected a JSON object"),
        ("a.jsonl", "{nope\n", "prompt", "not valid JSON"),
        ("a.csv", "goal\nx\n", "prompt", "no column 'prompt' (it has 'goal')"),
        ("a.csv", "", "prompt", "the file is empty"),
        ("a.csv", "prompt\n", "prompt", "only a header"),
        ("a.txt", "x\n", "prompt", "give a .jsonl or .csv"),
    ],
)
def test_bad_attack_files(tmp_path: Path, name: str, content: str, field: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises((DataFormatError, InvalidInputError), match=re.escape(message)):
        load_attack_set(str(path), prompt_field=field)


def test_unknown_attack_set_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="use advllm, plain, or a .jsonl/.csv file"):
        load_attack_set("gcg")
    with pytest.raises(S2EError, match="not found"):
        load_attack_set("advllm", data_dir=tmp_path)  # the data folder lacks the file
