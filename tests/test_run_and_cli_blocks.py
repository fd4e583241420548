"""`s2e run` (the main job) and the CLI building blocks, end to end on a tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from s2e_lens.cli import app
from s2e_lens.core.plan import EditPlan
from s2e_lens.core.statistics import ContrastiveStatistics
from s2e_lens.models.loading import load_model

SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
runner = CliRunner()


def invoke(*args: str) -> dict:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else {"output": result.output}


@pytest.fixture(scope="module")
def run_dir(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "r"
    doc = invoke(
        "run",
        "safety",
        "--model",
        str(tiny_dirs["llama"]),
        "--out",
        str(out),
        "--n-eval",
        "3",
        "--n-mc",
        "2",
        "--data-dir",
        str(SHARED),
        "--skip-answer-check",
        "--max-degenerate",
        "1",
        "--dtype",
        "bfloat16",  # the whole run and its report in bfloat16 (issue 13)
        "--json",
    )
    assert Path(doc["report"]) == out / "report.html"
    return out


def test_run_writes_a_complete_report(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["keep_edits"] == 3 and summary["config"]["gammas"] == [0.5, 1.0, 2.0]
    assert summary["config"]["dtype"] == "bfloat16" and summary["model"]["dtype"] == "bfloat16"
    # every generation is kept with both judges' verdicts; per-item scores back every figure
    generations = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    assert {g["label"] for g in generations} == {r["label"] for r in results}
    assert all(set(g["judges"]) == {"paper", "strict"} and isinstance(g["cut_off"], bool) for g in generations)
    items = json.loads((run_dir / "items.json").read_text())
    for r in results:
        refused = [v for row in items[r["label"]]["attribute"] for v in row]
        assert sum(refused) / len(refused) == pytest.approx(r["attribute"])
        assert r["attribute_low"] <= r["attribute"] <= r["attribute_high"]
        mine = [g for g in generations if g["label"] == r["label"] and g["set"] == summary["suite"]["attack_set"]]
        assert sum(g["judges"]["strict"] for g in mine) / len(mine) == pytest.approx(r["attribute"])
        # KL per benign text and position: pooled, the KL figure; its interval brackets it
        kl = [v for row in items[r["label"]]["kl"] for v in row]
        assert sum(kl) / len(kl) == pytest.approx(r["kl"], abs=1e-9)  # results.json keeps 10 digits
        assert r["kl_low"] - 1e-9 <= r["kl"] <= r["kl_high"] + 1e-9
    assert summary["suite"]["judge"] == "strict" and summary["speed"]["generated_tokens"] > 0
    # the paper's operating point: the best edit against its matched steering, on the same prompts
    point = summary["operating_point"]
    assert (point["edit"], point["steering"]) == (summary["best_plan"], summary["matched_steering"])
    attribute = {r["label"]: r["attribute"] for r in results}
    assert point["difference"]["estimate"] == pytest.approx(attribute[point["edit"]] - attribute[point["steering"]])
    assert point["difference"]["low"] <= point["difference"]["estimate"] <= point["difference"]["high"]
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    # the KL-matched comparison carries its interval where the frontiers share a KL range
    if summary["kl_gap"] is not None:
        gap = summary["kl_gap"]
        assert gap["axis"] == "closeness" and gap["interval"]["low"] <= gap["mean"] <= gap["interval"]["high"]
        assert f"{gap['mean']:+.3f}" in md and "Matched instead on closeness" in md
    else:  # the tiny random model's frontiers need not overlap; the report says so, not a bare number
        assert "share no range of KL" in md and "recorded no per-text KL" not in md
    for text in (html, md):
        assert "Steer2Edit report: safety" in text and summary["best_plan"] in text
        assert summary["matched_steering"] in text
        # the answer first: the summary table, with the operating point's difference and interval
        d = point["difference"]
        assert (
            "difference [95% interval]" in text and f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" in text
        )
    assert md.index("difference [95% interval]") < md.index("## All evaluated interventions")
    # figures are embedded (plotly.js inlined exactly once: offline, not from a CDN)
    assert html.count('id="fig-') >= 6 and 'src="http' not in html and "src='http" not in html
    examples = json.loads((run_dir / "examples.json").read_text())
    assert {e["set"] for e in examples} == {"harmful", "harmless"}
    assert all(set(e) >= {"unedited", "edit", "steering"} for e in examples)
    # every kept plan is saved and loads, and the best one is among them
    plans = {label: EditPlan.load(run_dir / f) for label, f in summary["plan_files"].items()}
    assert summary["best_plan"] in plans
    assert torch.equal(plans[summary["best_plan"]].head_lambda, EditPlan.load(run_dir / "best_plan").head_lambda)
    attention = (run_dir / "figures" / "attention_top_heads.html").read_text()
    assert "CircuitsVis.render" in attention and "unpkg.com" not in attention


def test_matched_steering_is_the_strongest_at_or_above_the_edits_utility(run_dir: Path) -> None:
    import pandas as pd

    summary = json.loads((run_dir / "summary.json").read_text())
    frame = pd.read_csv(run_dir / "results.csv")
    edit = frame[frame["label"] == summary["best_plan"]].iloc[0]
    steer = frame[frame["kind"] == "steer"]
    ok = steer[steer["utility"] >= edit["utility"]]
    expected = (ok.sort_values("attribute", ascending=False) if len(ok) else steer.sort_values("gamma")).iloc[0]
    chosen = frame[frame["label"] == summary["matched_steering"]].iloc[0]
    assert chosen["attribute"] == expected["attribute"] and chosen["utility"] == expected["utility"]


def test_extract_edit_export_eval_blocks(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model_dir = str(tiny_dirs["qwen2"])
    invoke("extract", "safety", "--model", model_dir, "--out", str(tmp_path / "x"), "--json")
    stats = ContrastiveStatistics.load(tmp_path / "x" / "statistics")
    assert stats.positive.n_samples == stats.negative.n_samples > 50
    doc = invoke(
        "edit",
        str(tmp_path / "x" / "statistics.safetensors"),
        "--model",
        model_dir,
        "--rho-attn",
        "0.3",
        "--out",
        str(tmp_path / "plan"),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "3",
        "--export",
        str(tmp_path / "exp"),
        "--json",
    )
    plan = EditPlan.load(tmp_path / "plan")
    assert doc["n_edited"] == plan.n_edited and plan.n_edited["heads"] > 0
    # the exported checkpoint carries exactly the plan's W_O change
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exp")
    base = load_model(model_dir, progress=False)
    delta = (
        exported.model.layers[0].self_attn.o_proj.weight
        - base.hf_model.model.layers[0].self_attn.o_proj.weight.detach()
    ).T  # [H*d_head, d_model]
    expected = plan.delta_W_O()[0].reshape(delta.shape)
    assert torch.allclose(delta, expected, atol=1e-5)
    row = invoke(
        "eval",
        "safety",
        "--model",
        model_dir,
        "--plan",
        str(tmp_path / "plan.safetensors"),
        "--n-eval",
        "2",
        "--n-mc",
        "1",
        "--data-dir",
        str(SHARED),
        "--skip-answer-check",
        "--json",
    )
    assert 0 <= row["attribute"] <= 1 and row["kl"] > 0  # the edit moves the model
    base_row = invoke(
        "eval",
        "safety",
        "--model",
        model_dir,
        "--n-eval",
        "2",
        "--n-mc",
        "1",
        "--data-dir",
        str(SHARED),
        "--skip-answer-check",
        "--json",
    )
    assert base_row["kl"] == pytest.approx(0.0, abs=1e-6)


def test_blocks_in_bfloat16_through_a_device_map(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """extract -> edit -> export -> eval with --dtype bfloat16 and --device-map: the exported
    checkpoint is bfloat16 and holds each edited weight as one rounding of (weight + update)."""
    model_dir = str(tiny_dirs["llama"])
    where = ["--model", model_dir, "--dtype", "bfloat16", "--device-map", '{"": "cpu"}']
    invoke("extract", "safety", *where, "--out", str(tmp_path / "x"), "--json")
    stats = ContrastiveStatistics.load(tmp_path / "x" / "statistics")
    assert stats.positive.z.dtype == torch.float32  # stored as float32 whatever the model's dtype
    invoke("edit", str(tmp_path / "x" / "statistics.safetensors"), *where, "--rho-attn", "0.3",
           "--out", str(tmp_path / "plan"), "--export", str(tmp_path / "exp"), "--json")  # fmt: skip
    plan = EditPlan.load(tmp_path / "plan")
    assert plan.n_edited["heads"] > 0
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exp", dtype="auto")
    base = load_model(model_dir, dtype=torch.bfloat16, progress=False)
    o_proj = exported.model.layers[0].self_attn.o_proj.weight
    assert o_proj.dtype == torch.bfloat16
    original = base.hf_model.model.layers[0].self_attn.o_proj.weight.detach()
    expected = (original.float() + plan.delta_W_O()[0].reshape(original.T.shape).T).to(torch.bfloat16)
    assert torch.equal(o_proj, expected)
    row = invoke("eval", "safety", *where, "--plan", str(tmp_path / "plan.safetensors"), "--n-eval", "2",
                 "--n-mc", "1", "--data-dir", str(SHARED), "--skip-answer-check", "--json")  # fmt: skip
    assert 0 <= row["attribute"] <= 1 and row["kl"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dtype", "int8"], "dtype 'int8' is not supported"),
        (["--device", "cuda:7"], "device 'cuda:7'"),
        (["--device", "toaster"], "is not a torch device"),
        (["--device-map", "everywhere"], "neither a strategy"),
        (["--device-map", "[1, 2]"], "must map module names to devices"),
        (["--device", "cpu", "--device-map", "auto"], "not both"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [["run", "safety"], ["sweep", "safety"], ["eval", "safety"], ["extract", "safety"], ["chat", "hi"]],
    ids=lambda c: c[0],
)
def test_bad_placement_is_refused_before_any_work(
    command: list[str], args: list[str], message: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    extra = ["--out", str(out)] if command[0] in ("run", "sweep", "extract") else []
    result = runner.invoke(app, [*command, *args, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and not out.exists()


def test_plot_and_compare(run_dir: Path, tmp_path: Path) -> None:
    written = invoke("plot", str(run_dir), "--out", str(tmp_path / "f"), "--format", "html", "--json")
    stems = {Path(p).stem for p in written}
    assert {"frontier", "lambda_heads", "lambda_heads_sorted", "importance_heads", "edit_mass"} <= stems
    plan_file = run_dir / "best_plan.safetensors"
    doc = invoke(
        "compare", f"a={plan_file}", f"b={run_dir}", "--out", str(tmp_path / "c"), "--format", "html", "--json"
    )
    assert doc["same_model"]
    ab = [r for r in doc["overlap"] if r["a"] == "a" and r["b"] == "b"][0]
    assert ab["heads_jaccard"] == pytest.approx(1.0) and ab["head_lambda_corr"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "nonsense"], "behaviour must be one of safety, truthfulness"),
        (["run", "safety", "--preset", "huge"], "size must be quick or full"),
        (["edit", "/no/such.safetensors"], "no such file"),
        (["plot", "/tmp"], "not a run directory"),
        (["compare", "/tmp"], "at least two"),
        (["extract", "custom"], "needs --data"),
    ],
)
def test_bad_input_exits_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_every_command_has_help_with_an_example() -> None:
    commands = [
        ["run"],
        ["extract"],
        ["edit"],
        ["eval"],
        ["sweep"],
        ["plot"],
        ["report"],
        ["export"],
        ["compare"],
        ["doctor"],
        ["models", "list"],
        ["models", "pull"],
        ["models", "show"],
        ["chat"],
        ["bench", "load"],
        ["bench", "engine"],
        ["bench", "generate"],
        ["bench", "evaluate"],
    ]
    for args in commands:
        result = runner.invoke(app, [*args, "--help"])
        example = result.output.split("Example:")[-1]
        assert result.exit_code == 0 and "Example:" in result.output and f"s2e {' '.join(args)}" in example, args


def test_edit_with_a_bad_export_target_writes_nothing(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model_dir = str(tiny_dirs["qwen2"])
    invoke("extract", "safety", "--model", model_dir, "--out", str(tmp_path / "x"), "--json")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    result = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "x" / "statistics.safetensors"),
            "--model",
            model_dir,
            "--rho-attn",
            "0.3",
            "--out",
            str(tmp_path / "plan"),
            "--export",
            str(busy),
        ],
    )
    assert result.exit_code == 2 and "exists; pass --overwrite" in result.output
    assert not (tmp_path / "plan.safetensors").exists() and not (tmp_path / "plan.json").exists()
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("command", [["run", "safety"], ["sweep", "safety"], ["eval", "safety"]])
def test_evaluating_commands_refuse_a_model_that_fails_the_checks(
    command: list[str], tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A random tiny model decodes consistently but cannot answer known questions: every
    evaluating command stops before evaluating, names the check, the versions and the fix."""
    out = tmp_path / "out"
    args = [*command, "--model", str(tiny_dirs["llama"]), "--n-eval", "2", "--n-mc", "1", "--data-dir", str(SHARED)]
    if command[0] != "eval":
        args += ["--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    message = result.output
    assert "failed the check 'known answers'" in message and "Nothing was evaluated" in message
    assert "transformers " in message and "transformer-lens " in message and "Traceback" not in message
    assert not out.exists()


def test_doctor_names_each_failure_and_its_fix(tiny_dirs: dict[str, Path]) -> None:
    result = runner.invoke(app, ["doctor", "--model", str(tiny_dirs["llama"]), "--no-figures", "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert {"python", "torch", "transformers", "transformer-lens", "s2e-lens", "torch threads", "device"} <= set(
        doc["environment"]
    )
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["cached generation == uncached argmax loop"]["ok"]  # the stack is fine...
    assert not checks["known answers"]["ok"] and checks["known answers"]["fix"]  # ...the model is not
    assert not doc["ok"]


@pytest.mark.slow
def test_doctor_passes_on_the_locked_stack() -> None:
    result = runner.invoke(app, ["doctor", "--no-figures"])
    assert result.exit_code == 0, result.output
    assert "all checks passed" in result.output and "FAIL" not in result.output


def test_an_export_of_a_runs_plan_carries_what_the_run_measured(run_dir: Path, tiny_dirs: dict[str, Path]) -> None:
    """The model card of `s2e export RUN/best_plan.safetensors` quotes the run's own numbers for
    that plan (results.csv), and so does one of a plan under RUN/plans/."""
    import pandas as pd

    from s2e_lens.reporting.model_card import run_measurements

    summary = json.loads((run_dir / "summary.json").read_text())
    results = pd.read_csv(run_dir / "results.csv")
    best = results[results["label"] == summary["best_plan"]].iloc[0]
    out = run_dir.parent / "exported-peft"
    invoke(
        "export",
        str(run_dir / "best_plan.safetensors"),
        "--model",
        str(tiny_dirs["llama"]),
        "--out",
        str(out),
        "--format",
        "peft",
    )
    card = (out / "README.md").read_text()
    assert f"intervention `{summary['best_plan']}`" in card
    assert f"- attribute: {best['attribute']:.3f}" in card and f"- utility: {best['utility']:.3f}" in card
    name, file = next(iter(summary["plan_files"].items()))
    other = run_measurements(run_dir / file)
    assert other is not None and other["label"] == name
    row = results[results["label"] == name].iloc[0]
    assert other["attribute"] == pytest.approx(float(row["attribute"]))
    assert run_measurements(run_dir.parent / "elsewhere.safetensors") is None
