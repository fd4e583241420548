"""Behaviour builders, interventions and sweep logic."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import tiny
import torch
from conftest import tiny_set

from s2e_lens import behaviours
from s2e_lens.behaviours.datasets import DataFormatError
from s2e_lens.core import comparison
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine import interventions
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.scoring import KLReference
from s2e_lens.experiments import sweep
from s2e_lens.models.loading import load_model


def test_splits_are_deterministic_and_disjoint() -> None:
    texts = [f"prompt number {i}" for i in range(400)]
    tune = behaviours.split(texts, str, "tune")
    test = behaviours.split(texts, str, "test")
    assert set(tune).isdisjoint(test) and len(tune) + len(test) == 400
    assert 150 < len(tune) < 250
    assert behaviours.split(list(reversed(texts)), str, "tune") == list(reversed(tune))
    with pytest.raises(ValueError):
        behaviours.split(texts, str, "train")


def test_custom_jsonl_round_trip_and_bad_label(tmp_path: Path) -> None:
    data = tiny_set(3)
    behaviours.save_jsonl(data, tmp_path / "b.jsonl")
    again = behaviours.custom_jsonl(tmp_path / "b.jsonl")
    assert again.positive == data.positive and again.negative == data.negative
    (tmp_path / "bad.jsonl").write_text(
        '{"prompt": "a", "response": "b", "label": "positive"}\n{"prompt": "a", "response": "c", "label": "maybe"}\n'
    )
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: label 'maybe'"):
        behaviours.custom_jsonl(tmp_path / "bad.jsonl")


def test_compare_matches_steering_levels_with_edits() -> None:
    frame = pd.DataFrame(
        [
            {"kind": "none", "label": "unedited", "attribute": 0.0, "utility": 0.50},
            {"kind": "steer", "label": "g1", "attribute": 0.2, "utility": 0.45},
            {"kind": "steer", "label": "g2", "attribute": 0.6, "utility": 0.30},
            {"kind": "edit", "label": "e1", "attribute": 0.4, "utility": 0.47},
            {"kind": "edit", "label": "e2", "attribute": 0.5, "utility": 0.40},
        ]
    )
    result = comparison.compare(frame)
    table = result.table()
    assert table["steering"].tolist() == ["g2", "g1", "unedited"]
    assert table["best_edit"].tolist()[:2] == ["e2", "e1"]  # at utility >= 0.30 both qualify
    assert table["gain"].tolist()[:2] == pytest.approx([0.5 - 0.6, 0.4 - 0.2])
    assert pd.isna(table["best_edit"].tolist()[2])  # no edit keeps utility 0.50
    assert result.mean_gain == pytest.approx(0.05)
    assert [p.label for p in result.frontier_edit] == ["e2", "e1"]


def test_compare_leaves_degenerate_interventions_out() -> None:
    frame = pd.DataFrame(
        [
            {"kind": "none", "label": "unedited", "attribute": 0.0, "utility": 0.50, "degenerate_flag": False},
            {"kind": "steer", "label": "g1", "attribute": 0.2, "utility": 0.45, "degenerate_flag": False},
            {"kind": "steer", "label": "g9", "attribute": 1.0, "utility": 0.10, "degenerate_flag": True},
            {"kind": "edit", "label": "e1", "attribute": 0.4, "utility": 0.47, "degenerate_flag": False},
            {"kind": "edit", "label": "e9", "attribute": 0.9, "utility": 0.49, "degenerate_flag": True},
        ]
    )
    result = comparison.compare(frame)
    table = result.table()
    assert table["steering"].tolist() == ["g1", "unedited"]
    assert table["best_edit"].tolist()[0] == "e1" and table["gain"].tolist()[0] == pytest.approx(0.2)
    assert result.mean_gain == pytest.approx(0.2) and result.excluded == ["g9", "e9"]
    assert comparison.sane(frame)["label"].tolist() == ["unedited", "g1", "e1"]


def test_sweep_runs_every_intervention_and_restores_the_model(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    before = {k: v.clone() for k, v in model.hf_state_dict().items()}
    stats = collect_statistics(model, tiny_set(6), progress=False)
    vectors = SteeringVectors.from_statistics(stats)
    probe = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (1, 8))

    def attribute(m):
        with torch.no_grad():
            return {"attribute": float(m.hf_model(probe).logits[0, -1, 10])}

    suite = behaviours.Suite("toy", attribute, lambda m: {"utility": 1.0}, KLReference(model, [("hi", "there")]))
    edits = interventions.edit_candidates(model, stats, interventions.grid([0.1, 0.3], [0.0, 0.3], [0.5]))
    assert len(edits) == 4
    kept, screening = sweep.prune(model, edits, suite.kl_reference, max_kl=1e9, keep=2)
    assert len(kept) == 2 and screening["kept"].sum() == 2 and len(screening) == 4
    candidates = (
        interventions.steering_sweep(vectors, [0.5, 1.0])
        + kept
        + [interventions.iti(model, stats, k=2, gamma=1.0), interventions.orthogonalisation(model, vectors)]
    )
    frame = sweep.run(model, suite, candidates, progress=False)
    assert frame["kind"].tolist() == ["none", "steer", "steer", "edit", "edit", "iti", "orthogonalise"]
    assert frame["attribute"].nunique() == 7  # every intervention changes the probe logit
    assert frame.loc[frame.kind == "none", "kl"].item() == pytest.approx(0.0, abs=1e-9)
    assert all(torch.equal(v, before[k]) for k, v in model.hf_state_dict().items())
    assert model.applied_plans == []


def test_iti_shifts_only_the_chosen_heads_layers(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["gpt2"]), progress=False)
    stats = collect_statistics(model, tiny_set(5), progress=False)
    item = interventions.iti(model, stats, k=1, gamma=2.0)
    [(layer, head)] = item.params["heads"]
    vectors = SteeringVectors.from_statistics(stats, W_O=model.bridge.W_O.detach())
    ids = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (1, 6))
    name = f"blocks.{layer}.attn.hook_out"
    with torch.no_grad():
        _, plain = model.bridge.run_with_cache(ids, names_filter=[name])
        with item.active(model):
            _, shifted = model.bridge.run_with_cache(ids, names_filter=[name])
    torch.testing.assert_close(
        shifted[name] - plain[name], (2.0 * vectors.v_head[layer, head]).expand_as(plain[name]), rtol=1e-4, atol=1e-5
    )


def test_generation_based_builders(tiny_dirs: dict[str, Path]) -> None:
    from s2e_lens.behaviours.datasets import MathItem
    from s2e_lens.core.contrastive import ContrastiveSetError

    model = load_model(str(tiny_dirs["llama"]), progress=False)
    # a random model never refuses: its own responses cannot form both sets
    with pytest.raises(ContrastiveSetError, match="refused 0% .*use mode='teacher_forced'"):
        behaviours.safety(model, mode="own", limit=4, samples=2)
    # a judge that splits on the first character gives both sets, from the model's samples
    judge = lambda _p, r: r[:1] < "m"  # noqa: E731
    own = behaviours.safety(model, mode="own", limit=4, samples=3, judge=judge)
    assert all(judge("", p.response) for p in own.positive) and not any(judge("", p.response) for p in own.negative)
    assert own.provenance["mode"] == "own" and 0 < own.provenance["refusal_rate_of_own_samples"] < 1
    items = [MathItem(f"what is {i} plus {i}?", str(2 * i)) for i in range(12)]
    short = behaviours.concise(model, items, part="all", samples=2, fraction=0.25, max_new_tokens=12)
    k = max(1, int(short.provenance["n_solutions"] * 0.25))
    assert len(short.positive) == len(short.negative) == k
    assert max(short.provenance["shortest_tokens"]) <= min(short.provenance["longest_tokens"])
    custom = behaviours.custom_generated(model, ["ab", "cd"], judge)
    assert custom.provenance["mode"] == "generated+judge"
    teacher = behaviours.safety(part="tune")
    test = behaviours.safety_prompts("test")
    assert {p.prompt for p in teacher.positive}.isdisjoint(test["harmful"])
    assert [p.prompt for p in teacher.positive] == [p.prompt for p in teacher.negative]


def test_report_headline_names_the_degenerate_interventions_it_leaves_out() -> None:
    from s2e_lens.core.run import Run
    from s2e_lens.reporting.report import headline

    frame = pd.DataFrame(
        [
            {
                "kind": "none",
                "label": "unedited",
                "attribute": 0.1,
                "utility": 0.5,
                "degenerate": 0.0,
                "degenerate_flag": False,
            },
            {
                "kind": "steer",
                "label": "steer gamma=1",
                "attribute": 0.3,
                "utility": 0.5,
                "degenerate": 0.1,
                "degenerate_flag": False,
            },
            {
                "kind": "steer",
                "label": "steer gamma=4",
                "attribute": 1.0,
                "utility": 0.5,
                "degenerate": 0.9,
                "degenerate_flag": True,
            },
            {
                "kind": "edit",
                "label": "e1",
                "attribute": 0.4,
                "utility": 0.5,
                "degenerate": 0.0,
                "degenerate_flag": False,
            },
        ]
    )
    run = Run(config={"behaviour": "safety", "model": "m"}, results=frame, plans={"e1": object()})  # type: ignore[dict-item]
    assert run.best_plan()[0] == "e1" and run.matched_steering("e1") == "steer gamma=1"
    _, lines = headline(run)
    text = " ".join(lines)
    assert "**steer gamma=4 (90% degenerate)**" in text
    assert "+0.200" in text  # e1 against gamma=1 and the unedited model: (0.1 + 0.3) / 2; gamma=4 ignored


def test_the_summary_table_states_each_comparison_with_its_interval() -> None:
    """Matched utility, matched KL and the paper's operating point, each against numbers
    worked out here from the per-prompt scores."""
    import numpy as np

    from s2e_lens.core.run import Run
    from s2e_lens.reporting.report import SUMMARY_COLUMNS, summary_table

    rng = np.random.default_rng(0)
    n = 40
    # attribute per prompt (0/1), utility per item (0/1); the edit refuses more at the same utility
    p_attr = {"unedited": 0.1, "steer gamma=1": 0.3, "steer gamma=2": 0.5, "e1": 0.6}
    p_util = {"unedited": 0.6, "steer gamma=1": 0.55, "steer gamma=2": 0.4, "e1": 0.5}
    kinds = {"unedited": "none", "steer gamma=1": "steer", "steer gamma=2": "steer", "e1": "edit"}
    items = {
        lab: {
            "attribute": (rng.random((n, 1)) < p_attr[lab]).astype(float),
            "utility": (rng.random((n, 1)) < p_util[lab]).astype(float),
        }
        for lab in kinds
    }
    frame = pd.DataFrame(
        [
            {
                "kind": kinds[lab],
                "label": lab,
                "attribute": float(items[lab]["attribute"].mean()),
                "utility": float(items[lab]["utility"].mean()),
                "degenerate": 0.0,
                "degenerate_flag": False,
            }
            for lab in kinds
        ]
    )
    run = Run(config={"behaviour": "safety", "model": "m"}, results=frame, plans={"e1": object()}, items=items)  # type: ignore[dict-item]
    table = summary_table(run)
    assert list(table.columns) == list(SUMMARY_COLUMNS) and len(table) == 3
    utility, kl, point = (table.iloc[i] for i in range(3))
    gap = run.frontier_gap()
    assert gap is not None and utility["compared"].startswith("matched utility")
    # the frontiers' means differ by the gap; the interval is the run's bootstrap
    edit, steer = float(utility["Steer2Edit"]), float(utility["steering"])
    assert edit - steer == pytest.approx(gap.gap.mean, abs=2e-3)
    assert utility["difference [95% interval]"] == (
        f"{gap.gap.mean:+.3f} [{gap.interval.low:+.3f}, {gap.interval.high:+.3f}]"
    )
    # no per-text KL was recorded: that comparison says so instead of a number
    assert kl["compared"] == "matched KL" and kl["verdict"] == "not recorded per item: not compared"
    # the operating point: e1 against the strongest steering with utility >= e1's
    best_steer = max(
        (
            lab
            for lab in kinds
            if kinds[lab] == "steer"
            and frame.set_index("label").loc[lab, "utility"] >= frame.set_index("label").loc["e1", "utility"]
        ),
        key=lambda lab: frame.set_index("label").loc[lab, "attribute"],
    )
    assert best_steer in point["compared"] and "e1" in point["compared"]
    diff = items["e1"]["attribute"].mean() - items[best_steer]["attribute"].mean()
    assert point["difference [95% interval]"].startswith(f"{diff:+.3f} [")
    assert float(point["Steer2Edit"]) == pytest.approx(items["e1"]["attribute"].mean(), abs=5e-4)
    low, high = (float(x) for x in point["difference [95% interval]"].split("[")[1].rstrip("]").split(","))
    words = "Steer2Edit ahead" if low > 0 else "steering ahead" if high < 0 else "no difference can be claimed"
    assert point["verdict"] == words
