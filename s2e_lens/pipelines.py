"""End-to-end runs: behaviour data -> statistics -> vectors -> candidate interventions ->
cheap pruning -> held-out evaluation -> steering vs Steer2Edit comparison."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from s2e_lens.errors import InvalidInputError
from s2e_lens import behaviours, datasets, files, health, interventions, sweep
from s2e_lens.datasets import MultipleChoice
from s2e_lens.extraction import collect_statistics
from s2e_lens.loading import LoadedModel, load_model
from s2e_lens.plan import EditPlan
from s2e_lens.statistics import ContrastiveStatistics
from s2e_lens.steering import SteeringVectors


BEHAVIOURS = ("safety", "truthfulness")  # the behaviours with an evaluation suite


def check_behaviour(name: str) -> None:
    if name not in BEHAVIOURS:
        raise InvalidInputError(f"behaviour must be one of {', '.join(BEHAVIOURS)}, got {name!r}")


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
    # before any evaluation, the unedited model must decode the same with and without its KV
    # cache (always) and answer known questions sanely (this flag; off for models that cannot)
    check_answers: bool = True
    # interventions with more than this share of degenerate generations are excluded
    max_degenerate: float = sweep.DEGENERATE_LIMIT

    def __post_init__(self) -> None:
        """Bad settings are refused here, before any model is loaded."""
        check_behaviour(self.behaviour)
        interventions.grid(self.rho_attn, self.rho_mlp, self.alpha)  # EditSettings checks each point
        bad = [g for g in self.gammas if not math.isfinite(g)]
        if bad:
            raise InvalidInputError(f"steering gammas must be finite numbers, got {bad}")
        if not 0.0 <= self.max_degenerate <= 1.0:
            raise InvalidInputError(f"max_degenerate must be in [0, 1], got {self.max_degenerate}")

    @classmethod
    def preset(cls, behaviour: str = "safety", size: str = "quick", **overrides: Any) -> RunConfig:
        """Settings by behaviour and size. ``quick`` (what ``s2e run`` and ``make demo`` use)
        evaluates 3 steering strengths and 3 edits on small held-out sets, a few minutes for
        a 135M model on 2 CPU cores; ``full`` is the sweep behind the README's tables.
        Truthfulness edits need larger budgets (rho) than safety edits to stay gentle: its
        steering vector lines up with many heads' mean outputs, so small rho edits too much."""
        check_behaviour(behaviour)
        if size not in ("quick", "full"):
            raise InvalidInputError(f"size must be quick or full, got {size!r}")
        base: dict[str, Any] = {"behaviour": behaviour}
        if behaviour == "truthfulness":
            base.update(gammas=(0.5, 1.0, 2.0, 4.0), rho_attn=(0.3, 0.5, 0.75, 1.0, 1.5, 2.0), rho_mlp=(0.0,),
                        alpha=(0.5, 0.7))
        if size == "quick":
            base.update(gammas=base.get("gammas", (0.5, 1.0, 2.0))[:3], keep_edits=3, baselines=False,
                        n_eval=24, n_mc=10, alpha=(0.5, 0.8))
            if behaviour == "safety":
                base.update(rho_attn=(0.1, 0.15, 0.2, 0.3), rho_mlp=(0.0,))
        base.update(overrides)
        return cls(**base)


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
    checks: list[dict[str, Any]] = field(default_factory=list)  # the preflight checks it passed

    def best_plan(self) -> tuple[str, EditPlan]:
        """The evaluated Steer2Edit plan with the highest attribute (utility breaks ties),
        among those whose generations are not mostly degenerate."""
        ok = sweep.sane(self.results)
        edits = ok[ok["kind"] == "edit"]
        if edits.empty:
            raise InvalidInputError("no Steer2Edit candidate survived pruning with sane generations")
        best = edits.sort_values(["attribute", "utility"], ascending=False).iloc[0]
        return str(best["label"]), self.plans[str(best["label"])]

    def matched_steering(self, edit_label: str) -> str:
        """The steering run to set beside an edit: the strongest steering (highest attribute)
        whose utility is at least the edit's; the mildest steering if none is."""
        frame = self.results
        edit = frame[frame["label"] == edit_label].iloc[0]
        ok = sweep.sane(frame)
        steer = ok[ok["kind"] == "steer"]
        if steer.empty:
            raise InvalidInputError("the run has no steering results with sane generations")
        ok = steer[steer["utility"] >= edit["utility"]]
        pick = ok.sort_values("attribute", ascending=False) if not ok.empty else steer.sort_values("gamma")
        return str(pick.iloc[0]["label"])

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write the run directory as one output: built in a scratch directory beside ``out``
        and renamed into place when complete (an existing non-empty ``out`` needs
        ``overwrite``)."""
        with files.atomic_directory(out, overwrite=overwrite) as scratch:
            self.write_into(scratch)
        return Path(out)

    def write_into(self, out: Path) -> None:
        """Every file of the run into the (new, empty) directory ``out``."""
        sweep.save(self.results, out / "results")
        sweep.save(self.screening, out / "screening")
        sweep.save(self.comparison.table(), out / "matched_utility")
        self.vectors.save(out / "steering_vectors")
        self.stats.save(out / "statistics")
        label, plan = self.best_plan()
        plan.save(out / "best_plan")
        plan_files = {}
        for i, (name, p) in enumerate(self.plans.items()):
            plan_files[name] = f"plans/edit_{i:02d}.safetensors"
            p.save(out / plan_files[name])
        summary = {
            "config": self.config.__dict__, "data": self.data_provenance, "timings_s": self.timings,
            "best_plan": label, "matched_steering": self.matched_steering(label),
            "plan_files": plan_files, "mean_gain_at_matched_utility": self.comparison.mean_gain,
            "degenerate_excluded": self.comparison.excluded, "checks": self.checks,
            "stack": health.stack_versions(), "model": self.model.card.to_dict(),
        }
        files.write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n", overwrite=False)


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


N_PROBE = 8  # benign prompts answered by every intervention of a log-likelihood suite (degeneracy)


def make_suite(config: RunConfig, model: LoadedModel) -> sweep.Suite:
    """What a run measures, on the test split: attribute, utility, benign CE and KL."""
    check_behaviour(config.behaviour)
    if config.behaviour == "safety":
        test = behaviours.safety_prompts("test")
        return sweep.safety_suite(
            model, test["harmful"][: config.n_eval], test["harmless"][: config.n_eval],
            scary_but_safe=test["scary_but_safe"][: config.n_eval], mc_items=utility_items(config), benign_pairs=benign_pairs(),
            max_new_tokens=config.max_new_tokens,
        )
    items = datasets.load_truthfulqa(config.data_dir)
    test_items = behaviours.split(items, lambda it: it.question, "test")[: config.n_eval * 2]
    probes = behaviours.safety_prompts("test")["harmless"][:N_PROBE]
    return sweep.truthfulness_suite(model, test_items, mc_items=utility_items(config), benign_pairs=benign_pairs(),
                                    probe_prompts=probes, max_new_tokens=config.max_new_tokens)


def run(config: RunConfig, *, model: LoadedModel | None = None, progress: bool = True) -> RunResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    check_behaviour(config.behaviour)
    model = model or load_model(config.model, progress=progress)
    lap("load")
    checks = health.preflight(model, known=config.check_answers).checks
    lap("checks")
    data = behaviours.by_name(config.behaviour, data_dir=config.data_dir)
    suite = make_suite(config, model)
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
    results = sweep.run(model, suite, candidates, progress=progress, max_degenerate=config.max_degenerate)
    lap("evaluation")
    return RunResult(config, model, dict(data.provenance), stats, vectors, screening, results,
                     sweep.compare(results), {c.label: c.plan for c in kept if c.plan is not None}, timings,
                     [c.__dict__ for c in checks])


def example_generations(result: RunResult, *, n_attribute: int = 4, n_benign: int = 2,
                        max_new_tokens: int = 48) -> list[dict[str, str]]:
    """Greedy answers to a few held-out prompts from the unedited model, the best edit and the
    steering run matched to it, side by side."""
    from s2e_lens.generation import GenerationSettings, generate

    model = result.model
    if result.config.behaviour == "safety":
        test = behaviours.safety_prompts("test")
        prompts = [("harmful", p) for p in test["harmful"][:n_attribute]]
        prompts += [("harmless", p) for p in test["harmless"][:n_benign]]
    else:
        items = behaviours.split(datasets.load_truthfulqa(result.config.data_dir), lambda it: it.question, "test")
        prompts = [("question", it.question) for it in items[:n_attribute]]
    edit_label, plan = result.best_plan()
    steer_label = result.matched_steering(edit_label)
    steer = interventions.steering(result.vectors, [_gamma(result.results, steer_label)])[0]
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    texts = [p for _, p in prompts]
    columns: dict[str, list[str]] = {}
    for name, item in (("unedited", interventions.unedited()),
                       ("edit", interventions.Intervention("edit", edit_label, plan=plan, force=True)),
                       ("steering", steer)):
        with item.active(model):
            columns[name] = [g.text for g in generate(model, texts, settings)]
    return [{"set": kind, "prompt": p, "unedited": columns["unedited"][i], "edit": columns["edit"][i],
             "steering": columns["steering"][i], "edit_label": edit_label, "steering_label": steer_label}
            for i, (kind, p) in enumerate(prompts)]


def _gamma(frame: pd.DataFrame, label: str) -> float:
    return float(frame.loc[frame["label"] == label, "gamma"].iloc[0])


def main_job(config: RunConfig, out: str | Path, *, progress: bool = True, overwrite: bool = False) -> Path:
    """``s2e run``: data -> statistics -> vectors -> edit candidates -> evaluation against
    steering -> examples -> figures -> report. Returns the path of the HTML report."""
    from s2e_lens import report

    out = Path(out)
    files.check_output(out, kind="dir", overwrite=overwrite, what="run directory")  # before any work
    result = run(config, progress=progress)
    with files.atomic_directory(out, overwrite=overwrite) as scratch:  # nothing at out until complete
        result.write_into(scratch)
        started = time.perf_counter()
        examples = example_generations(result)
        files.write_text(scratch / "examples.json", json.dumps(examples, indent=1) + "\n", overwrite=False)
        result.timings["examples"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        report.build(scratch, model=result.model, timings=result.timings)
        result.timings["report"] = round(time.perf_counter() - started, 1)
    return out / "report.html"
