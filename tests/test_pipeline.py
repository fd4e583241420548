"""The whole pipeline end to end on a tiny model (small settings), through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s2e_lens.cli import app
from s2e_lens.core.plan import EditPlan
from s2e_lens.experiments.config import RunConfig
from s2e_lens.experiments.pipelines import run
from s2e_lens.models.loading import load_model

SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")


def test_safety_pipeline_on_a_tiny_model(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    config = RunConfig(
        model=str(tiny_dirs["llama"]),
        gammas=(0.5,),
        rho_attn=(0.2, 0.3),
        rho_mlp=(0.0,),
        alpha=(0.5,),
        keep_edits=2,
        max_kl=1e9,
        n_eval=3,
        n_mc=2,
        max_new_tokens=4,
        data_dir=str(SHARED),
        check_answers=False,
        max_degenerate=1.0,
    )  # random weights babble
    model = load_model(config.model, progress=False)
    result = run(config, model=model, progress=False)
    kinds = result.results["kind"].tolist()
    assert kinds[0] == "none" and kinds.count("steer") == 1 and kinds.count("edit") == 2
    assert {"orthogonalise", "iti"} <= set(kinds)
    assert result.results["attribute"].between(0, 1).all() and result.results["mc_accuracy"].between(0, 1).all()
    assert set(result.timings) == {"load", "checks", "data", "statistics", "plans", "pruning", "evaluation"}
    assert [c["name"] for c in result.checks] == ["cached generation == uncached argmax loop"]
    out = result.save(tmp_path / "run")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["behaviour"] == "safety" and summary["data"]["split"] == "tune"
    assert (
        EditPlan.load(out / "best_plan").model["fingerprint"] == model.card.fingerprint == result.model["fingerprint"]
    )
    assert (out / "results.csv").is_file() and (out / "matched_utility.json").is_file()
    assert model.applied_plans == []


def test_sweep_command_json_and_bad_input(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "sweep",
        "safety",
        "--model",
        str(tiny_dirs["qwen2"]),
        "--out",
        str(tmp_path / "s"),
        "--gammas",
        "0.5",
        "--rho-attn",
        "0.3",
        "--rho-mlp",
        "0",
        "--alpha",
        "0.5",
        "--keep",
        "1",
        "--max-kl",
        "1000",
        "--n-eval",
        "2",
        "--n-mc",
        "1",
        "--data-dir",
        str(SHARED),
        "--skip-answer-check",
        "--max-degenerate",
        "1",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["results"][0]["kind"] == "none" and (tmp_path / "s" / "summary.json").is_file()
    bad = runner.invoke(app, ["sweep", "safety", "--gammas", "1,x"])
    assert bad.exit_code == 2 and "--gammas takes numbers and start:stop:step ranges" in bad.output
    bad = runner.invoke(
        app, ["sweep", "safety", "--alpha", "1.0", "--model", str(tiny_dirs["qwen2"]), "--data-dir", str(SHARED)]
    )
    assert bad.exit_code == 2 and "alpha must be in [0, 1)" in bad.output
