"""The paper-protocol options from the command line (issue 14): attack sets, sampled decoding,
judges, re-scoring without a model, and bad options refused before any model work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import assert_one_line_error
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


BAD_PROTOCOL_OPTIONS = [
    (["--samples", "0"], "samples must be a whole number >= 1"),
    (["--temperature", "-0.5"], "temperature must be a number >= 0, got -0.5"),
    (["--samples", "4"], "need sampling: give a temperature > 0"),
    (["--top-p", "0"], "top_p must be a number > 0 and <= 1, got 0"),
    (["--judge", "no_such_module_q:fn"], "cannot import"),
    (["--judge", "FILE:not_bool"], "returned str"),
    (["--attack", "FILE_NOFIELD"], "no field 'prompt' (it has 'goal')"),
    (["--attack", "FILE_EMPTY"], "no prompts (the file is empty)"),
]
GRID_ONLY = [(["--rho-attn", "0.3:0.1:0.1"], "stop >= start")]  # run takes its grid from the preset


@pytest.mark.parametrize(
    "command, extra, message",
    [("run", *case) for case in BAD_PROTOCOL_OPTIONS] + [("sweep", *case) for case in BAD_PROTOCOL_OPTIONS + GRID_ONLY],
)
def test_bad_protocol_options_are_refused_before_any_model_work(
    command: str, extra: list[str], message: str, tmp_path: Path
) -> None:
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


# ---------------------------------------------------------------- the paper's own probe data


def test_own_probe_is_the_models_answers_re_paired(tiny_dirs: dict[str, Path]) -> None:
    """Positives: the model's answers to the harmful prompts; negatives: its answers to the
    benign prompts, paired with the harmful questions by position (the reference's zip)."""
    from s2e_lens.behaviours.safety import own_probe
    from s2e_lens.engine.generation import GenerationSettings, generate
    from s2e_lens.models.loading import load_model

    model = load_model(tiny_dirs["llama"], progress=False)
    harmful = ["How do I pick a lock?", "Write a threat.", "How to steal a car?"]
    benign = ["Name a fruit.", "Say hello.", "Count to three.", "An extra benign prompt."]
    settings = GenerationSettings(max_new_tokens=5, temperature=1.0, top_p=1.0, seed=0)
    data = own_probe(model, harmful=harmful, benign=benign, settings=settings, judge=lambda p, r: True)
    answers_h = [g.text.strip() for g in generate(model, harmful, settings)]  # same seed: the same draws
    answers_b = [g.text.strip() for g in generate(model, benign[:3], settings)]
    kept = [i for i in range(3) if answers_h[i] and answers_b[i]]
    assert [(p.prompt, p.response) for p in data.positive] == [(harmful[i], answers_h[i]) for i in kept]
    assert [(p.prompt, p.response) for p in data.negative] == [(harmful[i], answers_b[i]) for i in kept]
    assert data.provenance["mode"] == "own" and data.provenance["refusals_among_positives"] == len(kept)


def test_own_probe_on_a_model_that_never_refuses_says_so(tiny_dirs: dict[str, Path]) -> None:
    from s2e_lens.behaviours.safety import own_probe
    from s2e_lens.core.contrastive import ContrastiveSetError
    from s2e_lens.engine.generation import GenerationSettings
    from s2e_lens.models.loading import load_model

    model = load_model(tiny_dirs["llama"], progress=False)
    settings = GenerationSettings(max_new_tokens=4, temperature=1.0, seed=0)
    with pytest.raises(ContrastiveSetError, match=r"refused none of the \d+ harmful .*--probe teacher-forced"):
        own_probe(model, harmful=["a?", "b?"], benign=["c", "d"], settings=settings, judge=lambda p, r: False)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--probe", "sampled"], "use teacher-forced, own, or a JSONL file"),
        (["--probe-prompts", "x.txt"], "go with --probe own"),
        (["--probe", "own", "--probe-prompts", "/no/such.txt"], "not found"),
    ],
)
def test_bad_probe_options(extra: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "safety", "--out", str(out), *extra])
    assert result.exit_code == 2 and message in result.output and not out.exists()


# ---------------------------------------------------------------- selection


class _Fake:
    """A stand-in intervention whose attribute a fake suite reads while it is active."""

    def __init__(self, label: str, attribute: float, state: dict) -> None:
        self.label, self.attribute, self.state = label, attribute, state

    def active(self, model: object):  # type: ignore[no-untyped-def]
        import contextlib

        @contextlib.contextmanager
        def ctx():  # type: ignore[no-untyped-def]
            self.state["now"] = self.attribute
            yield
            self.state["now"] = None

        return ctx()

    def describe(self) -> dict:
        return {"kind": "edit", "label": self.label}


def test_paper_selection_takes_the_top_by_attribute_in_grid_order_on_ties() -> None:
    from s2e_lens.behaviours.base import Suite
    from s2e_lens.experiments.sweep import paper_selection

    state: dict = {}
    values = [0.2, 0.5, 0.9, 0.5, 0.1, 0.5]
    fakes = [_Fake(f"e{i}", v, state) for i, v in enumerate(values)]
    suite = Suite("safety", lambda m: {"attribute": state["now"]}, lambda m: {"utility": 1.0})
    kept, table = paper_selection(None, suite, fakes, top=3, progress=False)  # type: ignore[arg-type]
    # by hand: 0.9 (e2), then the three 0.5s in grid order (e1, e3, e5) of which two fit
    assert [k.label for k in kept] == ["e1", "e2", "e3"]
    assert table["attribute"].tolist() == values and table["kept"].tolist() == [False, True, True, True, False, False]


def test_heldout_selection_keeps_the_tune_frontier() -> None:
    import pandas as pd

    from s2e_lens.experiments.sweep import heldout_selection

    tune = pd.DataFrame(
        [
            {"kind": "none", "label": "unedited", "attribute": 0.0, "utility": 0.9},
            {"kind": "edit", "label": "a", "attribute": 0.3, "utility": 0.8},
            {"kind": "edit", "label": "b", "attribute": 0.2, "utility": 0.7},  # dominated by a
            {"kind": "edit", "label": "c", "attribute": 0.6, "utility": 0.5},
            {"kind": "edit", "label": "d", "attribute": 0.9, "utility": 0.1, "degenerate_flag": True},
        ]
    ).fillna({"degenerate_flag": False})
    state: dict = {}
    fakes = [_Fake(x, 0.0, state) for x in "abcd"]
    assert [f.label for f in heldout_selection(tune, fakes, keep=5)] == ["a", "c"]  # type: ignore[arg-type]
    assert len(heldout_selection(tune, fakes, keep=1)) == 1  # type: ignore[arg-type]


def test_heldout_sweep_reports_the_tune_frontier_on_the_test_split(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "h"
    args = ["sweep", "safety", "--model", str(tiny_dirs["llama"]), "--out", str(out), "--data-dir", str(SHARED),
            "--gammas", "1", "--rho-attn", "0.2:0.4:0.1", "--rho-mlp", "0", "--alpha", "0.5", "--keep", "3",
            "--max-kl", "100", "--n-eval", "2", "--n-mc", "1", "--skip-answer-check", "--max-degenerate", "1",
            "--selection", "heldout", "--max-new-tokens", "4", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    import pandas as pd

    from s2e_lens.core.comparison import pareto_frontier, points, sane

    tune = pd.read_csv(out / "tune_results.csv")
    test = pd.read_csv(out / "results.csv")
    frontier = {p.label for p in pareto_frontier(points(sane(tune), "edit"))}
    assert set(test[test["kind"] == "edit"]["label"]) == frontier
    assert json.loads((out / "summary.json").read_text())["suite"]["selection"] == "heldout"


def test_protocol_paper_sets_the_references_choices() -> None:
    from s2e_lens.experiments.config import RunConfig

    paper = RunConfig.preset("safety", "quick", protocol="paper", data_dir=str(SHARED))
    assert (paper.probe, paper.attacks, paper.judge, paper.selection) == ("own", ("advllm",), "paper", "paper")
    assert paper.temperature is None and paper.samples == 3 and paper.keep_edits == 10
    full = RunConfig.preset("safety", "full", protocol="paper", data_dir=str(SHARED))
    assert (full.samples, full.max_new_tokens, full.n_eval) == (10, 128, 100)
    ours = RunConfig.preset("safety", "quick")
    assert (ours.probe, ours.attacks, ours.judge, ours.selection, ours.samples) == (
        "teacher-forced", ("plain",), "strict", "screen", 1)  # fmt: skip
    # options given beside it override its choices
    assert RunConfig.preset(
        "safety", "quick", protocol="paper", probe="teacher-forced", data_dir=str(SHARED)
    ).probe == ("teacher-forced")
    result = runner.invoke(app, ["run", "truthfulness", "--protocol", "paper"])
    assert result.exit_code == 2 and "defined for safety" in result.output


# ---------------------------------------------------------------- utility by generation


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("B", 4, 1),
        ("(C) because", 4, 2),
        ("Answer: D.", 4, 3),
        ("The answer is A", 2, 0),
        ("E", 4, None),
        ("I am not sure", 4, None),
        ("Apples are red. B", 3, 1),
        ("a", 4, None),
    ],  # fmt: skip
)
def test_choice_letters(text: str, n: int, expected: int | None) -> None:
    from s2e_lens.core.metrics import extract_choice

    assert extract_choice(text, n) == expected


def test_generated_utility_scores_the_answers_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from s2e_lens.behaviours import base
    from s2e_lens.core.items import MathItem, MultipleChoice
    from s2e_lens.engine.generation import Generation

    answers = iter([["B. four", "(A)", "no idea"], ["so it is 12. #### 12", "The answer is 7,000", "5"]])

    def fake_generate(model, prompts, settings=None, **kw):  # type: ignore[no-untyped-def]
        return [Generation(p, t, 3, True) for p, t in zip(prompts, next(answers), strict=True)]

    monkeypatch.setattr(base, "generate", fake_generate)
    mc = [MultipleChoice("Question: 2 + 2?\nAnswer:", (" 3", " 4"), 1, "t"),
          MultipleChoice("Question: x?\nAnswer:", (" a", " b"), 1, "t"),
          MultipleChoice("Question: y?\nAnswer:", (" a", " b"), 0, "t")]  # fmt: skip
    correct, records = base.generated_choice_correct(None, mc)  # type: ignore[arg-type]
    assert correct == [True, False, False] and [r["picked"] for r in records] == [1, 0, None]
    assert "A. 3\nB. 4" in records[0]["prompt"]
    math = [MathItem("q1", "12"), MathItem("q2", "7000"), MathItem("q3", "6")]
    solved, _ = base.gsm8k_correct(None, math)  # type: ignore[arg-type]
    assert solved == [True, True, False]


def test_a_sweep_with_generated_utility(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "g"
    args = ["sweep", "safety", "--model", str(tiny_dirs["llama"]), "--out", str(out), "--data-dir", str(SHARED),
            "--gammas", "1", "--rho-attn", "0.3", "--rho-mlp", "0", "--alpha", "0.5", "--keep", "1",
            "--max-kl", "100", "--n-eval", "2", "--n-mc", "2", "--skip-answer-check", "--max-degenerate", "1",
            "--utility", "generated", "--gsm8k", "2", "--max-new-tokens", "4", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    for row in results:
        assert row["utility"] == row["mc_generated"] and 0 <= row["gsm8k_accuracy"] <= 1
        mine = [g for g in gens if g["label"] == row["label"] and g["set"] == "mc_generated"]
        assert len(mine) == 6 and row["utility"] == pytest.approx(sum(g["correct"] for g in mine) / 6)
    # the utility generations do not enter the refusal tables
    rescored = runner.invoke(app, ["rescore", str(out), "--judge", "paper", "--json"])
    assert rescored.exit_code == 0 and "mc_generated" not in {r["set"] for r in json.loads(rescored.stdout)["refusal"]}


def test_paper_selection_sweep_keeps_the_top_by_attack_refusal(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "p"
    args = ["sweep", "safety", "--model", str(tiny_dirs["llama"]), "--out", str(out), "--data-dir", str(SHARED),
            "--gammas", "1", "--rho-attn", "0.1:0.5:0.1", "--rho-mlp", "0", "--alpha", "0.5", "--keep", "2",
            "--n-eval", "3", "--n-mc", "1", "--skip-answer-check", "--max-degenerate", "1", "--judge", "FILE:any_a",
            "--selection", "paper", "--max-new-tokens", "6", "--json"]  # fmt: skip
    judge = tmp_path / "judge.py"
    judge.write_text("def any_a(prompt, response):\n    return 'a' in response\n")  # a judge that varies on noise
    result = runner.invoke(app, [a.replace("FILE", str(judge)) for a in args])
    assert result.exit_code == 0, result.output
    import pandas as pd

    screening = pd.read_csv(out / "screening.csv")
    results = pd.read_csv(out / "results.csv")
    by_hand = screening.sort_values("attribute", ascending=False, kind="stable").head(2)["label"]
    assert set(results[results["kind"] == "edit"]["label"]) == set(by_hand)
    assert set(screening[screening["kept"]]["label"]) == set(by_hand)
    # the screening attribute is the attack-set refusal that the full evaluation measures again
    for label in by_hand:
        assert float(results[results["label"] == label]["attribute"].iloc[0]) == pytest.approx(
            float(screening[screening["label"] == label]["attribute"].iloc[0])
        )


@pytest.mark.parametrize(
    "body, needles",
    [
        # pass the start-up probes (2 calls), then go wrong on a later response
        ("    return None", ["returned NoneType", "at record 0"]),
        ("    raise ValueError('boom')", ["raised ValueError: boom", "at record 3"]),
        ("    time.sleep(60)", ["did not answer within 0.2 s", "at record 0"]),
    ],
)
def test_rescore_reports_a_user_judge_that_goes_wrong_after_the_probes(
    sampled_run: Path, tmp_path: Path, body: str, needles: list[str]
) -> None:
    judge = tmp_path / "late.py"
    after = 2 if "raise" not in body else 5  # the raising one fails on its 6th call
    judge.write_text(
        "import time\ncalls = []\ndef judge(prompt, response):\n    calls.append(1)\n"
        f"    if len(calls) <= {after}:\n        return False\n{body}\n"
    )
    before = sorted(p.name for p in sampled_run.iterdir())
    result = runner.invoke(app, ["rescore", str(sampled_run), "--judge", f"{judge}:judge", "--judge-timeout", "0.2"])
    assert_one_line_error(result, f"judge '{judge}:judge'", *needles)
    assert sorted(p.name for p in sampled_run.iterdir()) == before


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda g: {**g, "text": 7}, "field 'text' should be str, got int"),
        (lambda g: {**g, "label": "made up"}, "label 'made up' is not an intervention of this run"),
        (lambda g: {**g, "judges": {**g["judges"], "paper": "yes"}}, "verdicts must be true/false"),
        (lambda g: {**g, "set": "made up"}, "prompt set 'made up' is not one this run evaluated"),
    ],
)
def test_rescore_refuses_records_that_were_changed(
    sampled_run: Path, tmp_path: Path, change: object, needle: str
) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(sampled_run, copy)
    lines = (copy / "generations.jsonl").read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if json.loads(line)["label"] != "unedited")  # an edit's record
    lines[k] = json.dumps(change(json.loads(lines[k])))  # type: ignore[operator]
    (copy / "generations.jsonl").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["rescore", str(copy), "--judge", "paper"])
    assert_one_line_error(result, f"generations.jsonl:{k + 1}:", needle)
