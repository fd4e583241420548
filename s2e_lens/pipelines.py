"""End-to-end runs: behaviour data -> statistics -> vectors -> candidate interventions ->
cheap pruning -> held-out evaluation -> steering vs Steer2Edit comparison."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from s2e_lens import behaviours, datasets, interventions, sweep
from s2e_lens.cache import atomic_file
from s2e_lens.datasets import MultipleChoice
from s2e_lens.extraction import collect_statistics
from s2e_lens.loading import LoadedModel, load_model
from s2e_lens.plan import EditPlan
from s2e_lens.statistics import ContrastiveStatistics
from s2e_lens.steering import SteeringVectors


@dataclass
class RunConfig:
    """Knobs of a run. The defaults fit in minutes on a 2-core CPU for a 135M model."""

    model: str = "smollm2-135m-instruct"
    behaviour: str = "safety"
    gammas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    rho_attn: tuple[float, ...] = (0.08, 0.1, 0.12, 0.15, 0.2, 0.3)
    rho_mlp: tuple[float, ...] = (0.0, 1.0)
    alpha: tuple[float, ...] = (0.5, 0.7, 0.8)
    keep_edits: int = 7  # Steer2Edit candidates evaluated after pruning
    max_kl: float = 0.5  # pruning: candidates that move benign next-token distributions more are dropped
    baselines: bool = True  # also evaluate weight orthogonalisation and an ITI-style top-K-heads shift
    iti_k: int = 8
    iti_gamma: float = 2.0
    n_eval: int = 40  # held-out prompts (or questions) per evaluation set
    n_mc: int = 20  # multiple-choice items per utility set (ARC-Easy, PIQA, HellaSwag)
    max_new_tokens: int = 32
    batch_size: int = 16
    data_dir: str | None = None
    seed: int = 0


@dataclass
class RunResult:
    config: RunConfig
    model: LoadedModel
    data_provenance: dict[str, Any]
    stats: ContrastiveStatistics
    vectors: SteeringVectors
    screening: pd.DataFrame
    results: pd.DataFrame
    comparison: sweep.Comparison
    plans: dict[str, EditPlan]
    timings: dict[str, float] = field(default_factory=dict)

    def best_plan(self) -> tuple[str, EditPlan]:
        """The evaluated Steer2Edit plan with the highest attribute (utility breaks ties)."""
        edits = self.results[self.results["kind"] == "edit"]
        if edits.empty:
            raise ValueError("no Steer2Edit candidate survived pruning")
        best = edits.sort_values(["attribute", "utility"], ascending=False).iloc[0]
        return str(best["label"]), self.plans[str(best["label"])]

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        sweep.save(self.results, out / "results")
        sweep.save(self.screening, out / "screening")
        sweep.save(self.comparison.table(), out / "matched_utility")
        self.vectors.save(out / "steering_vectors")
        label, plan = self.best_plan()
        plan.save(out / "best_plan")
        summary = {
            "config": self.config.__dict__, "data": self.data_provenance, "timings_s": self.timings,
            "best_plan": label, "mean_gain_at_matched_utility": self.comparison.mean_gain,
            "model": self.model.card.to_dict(),
        }
        with atomic_file(out / "summary.json", "w") as fh:
            fh.write(json.dumps(summary, indent=2, default=str) + "\n")  # type: ignore[attr-defined]
        return out


def utility_items(config: RunConfig) -> list[MultipleChoice]:
    """A fixed, seeded draw of multiple-choice items (ARC-Easy, PIQA, HellaSwag)."""
    rng = random.Random(config.seed)
    items: list[MultipleChoice] = []
    for loader in (datasets.load_arc_easy, datasets.load_piqa, datasets.load_hellaswag):
        pool = loader(config.data_dir)
        items += rng.sample(pool, min(config.n_mc, len(pool)))
    return items


def benign_pairs(n: int = 24) -> list[tuple[str, str]]:
    """Benign (prompt, reference response) pairs for cross-entropy and KL: the first ``n``
    harmless rows of the project's prompt set in the tune split, the same for every behaviour
    (the safety evaluation draws its harmless prompts from the test split)."""
    rows = [r for r in datasets.load_safety_prompts()["harmless"] if behaviours.split_of(r["prompt"]) == "tune"]
    return [(r["prompt"], r["response"]) for r in rows[:n]]


def run(config: RunConfig, *, model: LoadedModel | None = None, progress: bool = True) -> RunResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    model = model or load_model(config.model, progress=progress)
    lap("load")
    if config.behaviour == "safety":
        data = behaviours.safety(part="tune")
        test = behaviours.safety_prompts("test")
        benign = benign_pairs()
        mc = utility_items(config)
        suite = sweep.safety_suite(
            model, test["harmful"][: config.n_eval], test["harmless"][: config.n_eval],
            scary_but_safe=test["scary_but_safe"], mc_items=mc, benign_pairs=benign,
            max_new_tokens=config.max_new_tokens,
        )
    elif config.behaviour == "truthfulness":
        items = datasets.load_truthfulqa(config.data_dir)
        data = behaviours.truthfulness(items, part="tune")
        test_items = behaviours.split(items, lambda it: it.question, "test")[: config.n_eval * 2]
        benign = benign_pairs()
        suite = sweep.truthfulness_suite(model, test_items, mc_items=utility_items(config), benign_pairs=benign)
    else:
        raise ValueError(f"behaviour must be safety or truthfulness here, got {config.behaviour!r}")
    lap("data")
    stats = collect_statistics(model, data, batch_size=config.batch_size, progress=progress)
    vectors = SteeringVectors.from_statistics(stats)
    lap("statistics")
    grid = interventions.grid(config.rho_attn, config.rho_mlp, config.alpha)
    edit_candidates = interventions.edits(model, stats, grid)
    lap("plans")
    assert suite.kl_reference is not None
    kept, screening = sweep.prune(model, edit_candidates, suite.kl_reference,
                                  max_kl=config.max_kl, keep=config.keep_edits)
    lap("pruning")
    candidates = interventions.steering(vectors, config.gammas) + kept
    if config.baselines:
        candidates += [interventions.orthogonalisation(model, vectors),
                       interventions.iti(model, stats, config.iti_k, config.iti_gamma)]
    results = sweep.run(model, suite, candidates, progress=progress)
    lap("evaluation")
    return RunResult(config, model, dict(data.provenance), stats, vectors, screening, results,
                     sweep.compare(results), {c.label: c.plan for c in kept if c.plan is not None}, timings)
