"""The paper-protocol options from the command line (issue 14): attack sets, sampled decoding,
judges, re-scoring without a model, and bad options refused before any model work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s2e_lens.cli import app
from s2e_lens.core.judges import paper_refusal, strict_refusal

SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
runner = CliRunner()


@pytest.fixture(scope="module")
def sampled_run(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proto") / "s"
    args = ["sweep", "safety", "--model", str(tiny_dirs["llama"]), "--out", str(out), "--data-dir", str(SHARED),
            "--gammas", "1", "--rho-attn", "0.3:0.4:0.1", "--rho-mlp", "0", "--alpha", "0.5", "--keep", "2",
            "--max-kl", "100", "--n-eval", "3", "--n-mc", "1", "--skip-answer-check", "--max-degenerate", "1",
            "--attack", "advllm", "--attack", "plain", "--judge", "paper", "--samples", "2", "--temperature", "0.8",
            "--top-p", "0.9", "--max-new-tokens", "6", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_sampled_sweep_records_every_generation_with_both_judges(sampled_run: Path) -> None:
    summary = json.loads((sampled_run / "summary.json").read_text())
    suite = summary["suite"]
    assert suite["attack_set"] == "advllm" and suite["judge"] == "paper" and suite["samples"] == 2
    assert suite["other_attack_sets"] == {"plain": 3}
    assert summary["config"]["rho_attn"] == [0.3, 0.4]  # the range expanded
    results = json.loads((sampled_run / "results.json").read_text())
    gens = [json.loads(line) for line in (sampled_run / "generations.jsonl").read_text().splitlines()]
    for row in results:
        mine = [g for g in gens if g["label"] == row["label"]]
        attack = [g for g in mine if g["set"] == "advllm"]
        assert len(attack) == 3 * 2 and {g["sample"] for g in attack} == {0, 1}
        # the recorded verdicts are the judges' verdicts on the recorded texts
        assert all(g["judges"]["paper"] == paper_refusal(g["prompt"], g["text"]) for g in mine)
        assert all(g["judges"]["strict"] == strict_refusal(g["prompt"], g["text"]) for g in mine)
        assert row["attribute"] == pytest.approx(sum(g["judges"]["paper"] for g in attack) / len(attack))
        plain = [g for g in mine if g["set"] == "plain"]
        assert row["refusal_plain"] == pytest.approx(sum(g["judges"]["paper"] for g in plain) / len(plain))
        assert row["refusal_plain_low"] <= row["refusal_plain"] <= row["refusal_plain_high"]


def test_rescore_with_another_judge_needs_no_model(sampled_run: Path, tmp_path: Path) -> None:
    judge = tmp_path / "j.py"
    judge.write_text("def everything(prompt, response):\n    return True\n")
    result = runner.invoke(app, ["rescore", str(sampled_run), "--judge", f"{judge}:everything", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {r["refusal"] for r in doc["refusal"]} == {1.0}
    result = runner.invoke(app, ["rescore", str(sampled_run), "--judge", "strict", "--json"])
    gens = [json.loads(line) for line in (sampled_run / "generations.jsonl").read_text().splitlines()]
    for row in json.loads(result.stdout)["refusal"]:
        mine = [g for g in gens if g["label"] == row["label"] and g["set"] == row["set"]]
        assert row["refusal"] == pytest.approx(sum(g["judges"]["strict"] for g in mine) / len(mine))
    text = runner.invoke(app, ["rescore", str(sampled_run), "--judge", "paper"])
    assert text.exit_code == 0 and "disagree on" in text.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--samples", "0"], "samples must be a whole number >= 1"),
        (["--temperature", "-0.5"], "temperature must be >= 0"),
        (["--samples", "4"], "need sampling: give a temperature > 0"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--judge", "no_such_module_q:fn"], "cannot import"),
        (["--judge", "FILE:not_bool"], "returned str"),
        (["--attack", "FILE_NOFIELD"], "no field 'prompt' (it has 'goal')"),
        (["--attack", "FILE_EMPTY"], "no prompts (the file is empty)"),
        (["--rho-attn", "0.3:0.1:0.1"], "stop >= start"),
    ],
)
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_bad_protocol_options_are_refused_before_any_model_work(
    command: str, extra: list[str], message: str, tmp_path: Path
) -> None:
    if command == "run" and extra[0] == "--rho-attn":
        pytest.skip("run takes its grid from the preset")
    (tmp_path / "judge.py").write_text("def not_bool(prompt, response):\n    return 'yes'\n")
    (tmp_path / "nofield.jsonl").write_text('{"goal": "x"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    swap = {"FILE": str(tmp_path / "judge.py"), "FILE_NOFIELD": str(tmp_path / "nofield.jsonl"),
            "FILE_EMPTY": str(tmp_path / "empty.jsonl")}  # fmt: skip
    extra = [swap.get(x, x.replace("FILE", str(tmp_path / "judge.py"))) for x in extra]
    out = tmp_path / "out"
    result = runner.invoke(app, [command, "safety", "--model", "/no/such/model", "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and not out.exists()
