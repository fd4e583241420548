"""The beyond-the-paper edit rules from the command line (issue 15): calibrated budgets with
component-level vectors, relative magnitude and layer-sequential plans in one sweep, and bad
rule options refused before any model work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s2e_lens.cli import app

SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
runner = CliRunner()


def test_a_calibrated_sweep_with_the_new_rules(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cal"
    args = ["sweep", "safety", "--model", str(tiny_dirs["llama"]), "--out", str(out), "--data-dir", str(SHARED),
            "--rho-attn", "0.3", "--rho-mlp", "0.3", "--alpha", "0.5", "--keep", "4", "--max-kl", "100",
            "--n-eval", "3", "--n-mc", "1", "--skip-answer-check", "--max-degenerate", "1", "--max-new-tokens", "4",
            "--target-kl", "0.02,0.05", "--vectors", "component", "--magnitude", "relative", "--sequential", "1",
            "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    results = {r["label"]: r for r in json.loads((out / "results.json").read_text())}
    summary = json.loads((out / "summary.json").read_text())
    log = summary["suite"]["calibration"]
    assert summary["config"]["target_kl"] == [0.02, 0.05] and summary["config"]["sequential"] == 1
    found = [entry for entry in log if "error" not in entry]
    assert {e["kind"] for e in found} == {"edit", "steer"}
    for entry in found:
        row = results[entry["label"]]
        target = entry["search"]["target"]
        # the evaluation measures KL again on the same texts: the calibration held
        assert abs(row["kl"] - target) <= 0.05 * target + 1e-9, (entry["label"], row["kl"], target)
        if entry["kind"] == "edit":
            assert row["vectors"] == "component" and row["magnitude"] == "relative"
            assert "vectors=component" in entry["label"] and "magnitude=relative" in entry["label"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--vectors", "heads"], "vectors must be layer or component"),
        (["--magnitude", "huge"], "magnitude must be paper or relative"),
        (["--direction", "mu", "--magnitude", "relative"], "use direction='gradient'"),
        (["--vectors", "component", "--importance", "dot"], "importance='dot' has no meaning"),
        (["--sequential", "-1"], "sequential must be a block size"),
        (["--target-kl", "0,0.1"], "KL targets must be positive"),
        (["--edit-selection", "l0"], "selection must be elastic_net or top_k"),
    ],
)
def test_bad_rule_options_are_refused_before_any_model_work(extra: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["sweep", "safety", "--model", "/no/such/model", "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and not out.exists()


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_set_reaches_every_run_setting_and_is_checked(command: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = [command, "safety", "--model", "/no/such/model", "--out", str(out)]
    bad = runner.invoke(app, [*base, "--set", "prompt_positions=0"])
    assert bad.exit_code == 2 and "prompt_positions must be a whole number >= 1" in bad.output and not out.exists()
    # --set wins over the option it repeats (then the model is missing: the settings were accepted)
    over = runner.invoke(app, [*base, "--max-new-tokens", "4", "--set", "max_new_tokens=0"])
    assert over.exit_code == 2 and "max_new_tokens must be a whole number >= 1" in over.output
    unknown = runner.invoke(app, [*base, "--set", "no_such_field=1"])
    assert unknown.exit_code == 2 and "KEY a run setting" in unknown.output


def test_s2e_edit_takes_the_rules(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from s2e_lens.core.plan import EditPlan

    model = str(tiny_dirs["llama"])
    assert runner.invoke(app, ["extract", "safety", "--model", model, "--out", str(tmp_path / "x")]).exit_code == 0
    stats = str(tmp_path / "x" / "statistics.safetensors")
    args = ["edit", stats, "--model", model, "--rho-attn", "0.05", "--rho-mlp", "0.05", "--alpha", "0.1",
            "--magnitude", "relative", "--vectors", "component", "--layers", "1",
            "--out", str(tmp_path / "plan")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = EditPlan.load(tmp_path / "plan")
    s = plan.settings
    assert (s.magnitude, s.vectors, s.layers) == ("relative", "component", (1,))
    assert plan.edited_heads[1].any() and not plan.edited_heads[0].any() and not plan.edited_neurons[0].any()
    for extra, message in (
        (["--layers", "one"], "--layers takes layer indices"),
        (["--layers", "9"], "out of range: the model has 2 layers"),
        (["--vectors", "heads"], "vectors must be layer or component"),
    ):
        bad = runner.invoke(app, ["edit", stats, "--model", model, *extra])
        assert bad.exit_code == 2 and message in bad.output, bad.output
    again = runner.invoke(app, ["edit", str(tmp_path / "plan.safetensors"), "--model", model, "--magnitude", "paper"])
    assert again.exit_code == 2 and "--magnitude apply only when computing a plan" in again.output
