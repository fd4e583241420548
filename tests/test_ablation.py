"""The ablation table (issue 15): the paper's score with its interval, and `s2e ablate` on a
tiny model, checked against the evaluated rows it is built from."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from s2e_lens.cli import app
from s2e_lens.core.comparison import sane
from s2e_lens.experiments.ablation import paper_score

SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
runner = CliRunner()


def _ablate(model: Path, out: Path, variants: str, sets: list[str]) -> None:
    """``s2e ablate safety`` on ``model`` with the shared data, ``--set`` for each of ``sets``."""
    args = ["ablate", "safety", "--model", str(model), "--out", str(out), "--data-dir", str(SHARED),
            "--variants", variants, "--json"] + [x for s in sets for x in ("--set", s)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def test_paper_score_interval_against_brute_force() -> None:
    """Attack prompts and utility items resampled independently: every one of the 3^3 x 2^2
    equally likely resamples enumerated, the interval's bounds are that distribution's quantiles."""
    items = {"attribute": [[1.0], [0.0], [1.0]], "utility": [[1.0], [0.5]]}
    ci = paper_score(items, n_boot=40000, seed=5)
    a, u = [1.0, 0.0, 1.0], [1.0, 0.5]
    draws = [np.mean(x) * np.mean(y) for x in itertools.product(a, repeat=3) for y in itertools.product(u, repeat=2)]
    assert ci.estimate == pytest.approx(2 / 3 * 0.75)
    assert ci.low == pytest.approx(np.quantile(draws, 0.025, method="inverted_cdf"), abs=1e-9)
    assert ci.high == pytest.approx(np.quantile(draws, 0.975, method="inverted_cdf"), abs=1e-9)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
def test_ablate_builds_its_table_from_the_evaluated_rows(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "abl"
    sets = ["n_eval=3", "n_mc=1", "max_new_tokens=4", "gammas=0.5,1", "rho_attn=0.3,0.5", "rho_mlp=0",
            "alpha=0.5", "keep_edits=2", "max_kl=100", "check_answers=false", "max_degenerate=1"]  # fmt: skip
    _ablate(tiny_dirs["llama"], out, "full,k=mu", sets)
    import pandas as pd

    results = pd.read_json(out / "results.json")
    table = {r["variant"]: r for r in json.loads((out / "ablation.json").read_text())}
    assert (results["kind"] == "none").sum() == 1  # the unedited model, measured once
    assert sorted(results.loc[results["kind"] == "steer", "gamma"]) == [0.5, 1.0]
    assert set(results["variant"]) == {"steering", "full", "k=mu"}
    assert set(results.loc[results["variant"] == "k=mu", "direction"]) == {"mu"}
    for name in ("full", "k=mu"):
        edits = sane(results[(results["variant"] == name) & (results["kind"] == "edit")])
        by_hand = max(edits.itertuples(), key=lambda r: (r.attribute * r.utility, r.attribute))
        row = table[name]
        assert row["best"] == by_hand.label and row["best"].startswith(f"[{name}] ")
        assert row["score"] == pytest.approx(by_hand.attribute * by_hand.utility, abs=1e-9)
        assert row["score_low"] <= row["score"] <= row["score_high"]
    # every evaluated text is kept with both judges' verdicts, under the table's labels
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    attack = [g for g in gens if "judges" in g]  # refusal sets (utility generations carry no judges)
    assert {g["label"] for g in attack} == set(results["label"])
    assert all(set(g["judges"]) == {"paper", "strict"} for g in attack)
    md = (out / "ablation.md").read_text()
    assert "| full |" in md and "The paper's order: full > k=svd > k=mu" in md
    assert "At matched utility: ahead of steering with a 95% interval above 0:" in md
    _check_rescoring(out, tmp_path, results, gens)


def _check_rescoring(out: Path, tmp_path: Path, results: Any, gens: list[dict[str, Any]]) -> None:
    """`s2e rescore` on an ablation: re-judged by the judge it ran with, from the texts alone,
    it gives the saved table again; by the other judge each attribute is the mean of that
    judge's recorded verdicts; by a judge that refuses everything every attribute is 1."""
    import pandas as pd

    same = runner.invoke(app, ["rescore", str(out), "--judge", "strict", "--json"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.output)["table"] == json.loads((out / "ablation.json").read_text())

    paper = runner.invoke(app, ["rescore", str(out), "--judge", "paper", "--out", str(tmp_path / "by-paper")])
    assert paper.exit_code == 0, paper.output
    assert "re-judged by paper" in paper.output and "| full |" in paper.output
    rejudged = pd.read_json(tmp_path / "by-paper" / "results.json")
    for label, attribute in zip(rejudged["label"], rejudged["attribute"], strict=True):
        verdicts = [float(g["judges"]["paper"]) for g in gens if g["label"] == label and g["set"] == "plain"]
        assert attribute == pytest.approx(np.mean(verdicts))
    assert json.loads((tmp_path / "by-paper" / "config.json").read_text())["judge"] == "paper"

    always = tmp_path / "always.py"
    always.write_text("def judge(prompt, text):\n    return True\n")
    every = runner.invoke(app, ["rescore", str(out), "--judge", f"{always}:judge", "--json"])
    assert every.exit_code == 0, every.output
    table = pd.DataFrame(json.loads(every.output)["table"])
    assert (table["attribute"] == 1.0).all() and len(results) > len(table)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--variants", "full,bogus"], "unknown variant(s) ['bogus']"),
        (["--set", "n_evals=3"], "--set takes KEY=VALUE with KEY a run setting"),
        (["--set", "n_eval=three"], "not a valid int"),
        (["--set", "rho_attn=0.3:0.1:0.1"], "stop >= start"),
    ],
)
def test_bad_ablation_options_are_refused_before_any_model_work(extra: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["ablate", "safety", "--model", "/no/such/model", "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and not out.exists()


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
def test_a_calibrated_ablation_meets_steering_at_the_same_kl(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """With target_kl every variant's edit and steering are calibrated to the same KL targets."""
    out = tmp_path / "cal"
    sets = ["n_eval=3", "n_mc=1", "max_new_tokens=4", "rho_attn=0.3", "rho_mlp=0.3", "alpha=0.5",
            "keep_edits=4", "max_kl=100", "check_answers=false", "max_degenerate=1", "target_kl=0.02"]  # fmt: skip
    _ablate(tiny_dirs["llama"], out, "full,relative", sets)
    import pandas as pd

    results = pd.read_json(out / "results.json")
    calibrated = results[results["kind"].isin(["edit", "steer"])]
    assert set(calibrated["variant"]) == {"steering", "full", "relative"}
    assert ((calibrated["kl"] - 0.02).abs() <= 0.05 * 0.02 + 1e-9).all(), calibrated[["label", "kl"]]


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
def test_the_calibrated_variants_meet_their_targets_beside_steerings_grid(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """The calibrated variants bisect each plan's budget to the default KL targets (one plan per
    target), while steering and the other variants keep their grids."""
    from s2e_lens.experiments.ablation import CALIBRATION_TARGETS

    out = tmp_path / "calvar"
    sets = ["n_eval=3", "n_mc=1", "max_new_tokens=4", "gammas=1", "rho_attn=0.3", "rho_mlp=0.3", "alpha=0.5",
            "keep_edits=4", "max_kl=100", "check_answers=false", "max_degenerate=1"]  # fmt: skip
    _ablate(tiny_dirs["llama"], out, "full,calibrated,calibrated-relative", sets)
    import pandas as pd

    results = pd.read_json(out / "results.json")
    for variant in ("calibrated", "calibrated relative"):
        kls = sorted(results[(results["variant"] == variant) & (results["kind"] == "edit")]["kl"])
        assert len(kls) == len(CALIBRATION_TARGETS)
        for kl, target in zip(kls, sorted(CALIBRATION_TARGETS), strict=True):
            assert abs(kl - target) <= 0.05 * target + 1e-9, (variant, kls)
    assert list(results[results["kind"] == "steer"]["label"]) == ["steer gamma=1"]
    assert len(results[(results["variant"] == "full") & (results["kind"] == "edit")]) == 1


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
def test_a_variant_whose_candidates_all_fail_the_screen(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Held-out selection with nothing kept (seen with g=dot on SmolLM2): the variant gets an
    empty row in the table, and the ablation goes on."""
    out = tmp_path / "none"
    sets = ["n_eval=3", "n_mc=1", "max_new_tokens=4", "gammas=1", "rho_attn=0.3", "rho_mlp=0", "alpha=0.5",
            "keep_edits=2", "max_kl=1e-12", "check_answers=false", "max_degenerate=1", "selection=heldout"]  # fmt: skip
    _ablate(tiny_dirs["llama"], out, "full,dot", sets)
    table = {r["variant"]: r for r in json.loads((out / "ablation.json").read_text())}
    assert table["g=dot"]["n_evaluated"] == 0 and table["g=dot"]["best"] is None
    assert "| g=dot | none: no candidate passed the KL screen |" in (out / "ablation.md").read_text()


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
def test_a_prepared_run_equals_a_fresh_one_and_refuses_other_settings(tiny_dirs: dict[str, Path]) -> None:
    """What an ablation shares between variants (checks, data, statistics, suites) gives the
    same results as a run that builds them itself, and is refused for other suite settings."""
    import dataclasses

    import pandas as pd

    from s2e_lens import load_model
    from s2e_lens.errors import InvalidInputError
    from s2e_lens.experiments import pipelines
    from s2e_lens.experiments.config import RunConfig

    config = RunConfig(
        model=str(tiny_dirs["llama"]), data_dir=str(SHARED), n_eval=3, n_mc=1, max_new_tokens=4, gammas=(1.0,),
        rho_attn=(0.3,), rho_mlp=(0.0,), alpha=(0.5,), keep_edits=1, max_kl=100.0, check_answers=False,
        max_degenerate=1.0, baselines=False, selection="heldout",
    )  # fmt: skip
    model = load_model(config.model, progress=False)
    fresh = pipelines.run(config, model=model, progress=False)
    prepared = pipelines.prepare(config, model, progress=False)
    again = pipelines.run(config, model=model, progress=False, prepared=prepared)
    columns = ["label", "attribute", "utility", "kl"]
    pd.testing.assert_frame_equal(again.results[columns], fresh.results[columns])
    pd.testing.assert_frame_equal(again.tune_results[columns], fresh.tune_results[columns])
    with pytest.raises(InvalidInputError, match=r"built with other settings \(suite\)"):
        pipelines.run(dataclasses.replace(config, n_eval=4), model=model, progress=False, prepared=prepared)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
def test_held_out_ablation_keeps_the_tune_split_and_its_gains(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Held-out selection: the tune split's rows are saved (steering's and each variant's), and
    each variant's tune-split gain is the frontier gap of those rows, recomputed here by hand on
    a fine grid from the two frontiers' piecewise-linear interpolation."""
    import pandas as pd

    out = tmp_path / "tune"
    judge = tmp_path / "judge.py"  # a random model refuses nothing: a judge that varies with the text
    judge.write_text("def judge(prompt, text):\n    return sum(map(ord, text)) % 2 == 0\n")
    sets = ["n_eval=6", "n_mc=2", "max_new_tokens=4", "gammas=0.5,1,2,4", "rho_attn=0.1,0.2,0.3,0.5", "rho_mlp=0",
            "alpha=0.5", "keep_edits=4", "max_kl=100", "check_answers=false", "max_degenerate=1",
            "selection=heldout", f"judge={judge}:judge"]  # fmt: skip
    _ablate(tiny_dirs["llama"], out, "full,l2", sets)
    tune = pd.read_json(out / "tune_results.json")
    table = {r["variant"]: r for r in json.loads((out / "ablation.json").read_text())}
    assert sorted(tune.loc[tune["kind"] == "steer", "gamma"]) == [0.5, 1.0, 2.0, 4.0]
    assert (tune["kind"] == "none").sum() == 1  # the unedited model, once
    compared = 0
    for name in ("full", "l2 (alpha=0)"):
        edits = tune[(tune["variant"] == name) & (tune["kind"] == "edit")]
        assert len(edits) >= 1 and all(label.startswith(f"[{name}] ") for label in edits["label"])
        for key, column, sign in (("gap", "utility", 1.0), ("kl_gap", "kl", -1.0)):
            expected = _gap_by_hand(sane(tune[tune["variant"] == "steering"]), sane(edits), column, sign)
            got = table[name][f"tune_{key}_mean"]
            assert (got is None and np.isnan(expected)) or got == pytest.approx(expected, abs=0.02), (name, key)
            compared += got is not None
    assert compared >= 2, "the tiny run gave no shared range to compare on"
    assert "On the tune split at matched utility" in (out / "ablation.md").read_text()


def _gap_by_hand(steer: Any, edits: Any, column: str, sign: float) -> float:
    """Mean over the shared utility range of the upper envelopes' difference (each frontier: the
    best attribute reachable at utility >= u, linearly interpolated between its corners)."""

    def frontier(frame: Any) -> tuple[np.ndarray, np.ndarray]:
        pts = sorted(zip(sign * frame[column].to_numpy(float), frame["attribute"].to_numpy(float), strict=True))
        keep: list[tuple[float, float]] = []
        for u, a in reversed(pts):  # from the highest utility down: keep points that raise the attribute
            if not keep or a > keep[-1][1]:
                keep.append((u, a))
        keep.reverse()
        return np.array([u for u, _ in keep]), np.array([a for _, a in keep])

    (us, as_), (ue, ae) = frontier(steer), frontier(edits)
    low, high = max(us[0], ue[0]), min(us[-1], ue[-1])
    if low > high:
        return float("nan")
    grid = np.linspace(low, high, 2001)
    return float(np.mean(np.interp(grid, ue, ae) - np.interp(grid, us, as_)))
