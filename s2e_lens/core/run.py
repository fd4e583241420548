"""A run: every evaluated intervention, the kept plans, the statistics and vectors they came
from, and the record of how it was made. ``s2e run`` and ``s2e sweep`` return one and save it
as a directory; :meth:`Run.load` reads it back for reports, plots and comparisons.

A run directory holds ``results``, ``screening`` and ``matched_utility`` (CSV + JSON),
``statistics``, ``steering_vectors``, ``best_plan`` and ``plans/edit_NN`` (safetensors +
JSON), ``examples.json`` (when made), ``items.json`` (per-item scores behind every figure,
for intervals), ``generations.jsonl`` (every evaluated generation with each judge's verdict)
and ``summary.json`` (config, data provenance, timings,
checks, stack versions, model card, the best plan and the steering run matched to it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from s2e_lens.core.comparison import Comparison, GapEstimate, Items, compare, frontier_gap_with_interval, sane
from s2e_lens.core.intervals import paired_bootstrap, rate_interval
from s2e_lens.core.judges import NamedJudge, check_records, judge_summary, judged_records, verdicts_by_prompt
from s2e_lens.core.plan import EditPlan
from s2e_lens.core.statistics import ContrastiveStatistics
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.errors import S2EError
from s2e_lens.io import files
from s2e_lens.io.serialization import finite_json


class RunDirectoryError(S2EError):
    """A directory that is not (or no longer) a complete run."""


def save_table(frame: pd.DataFrame, path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """A results table as CSV and JSON (records), written as one output."""
    path = Path(path)
    csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
    records = json.dumps(json.loads(frame.to_json(orient="records")), indent=1) + "\n"
    files.write_all({csv_path: frame.to_csv(index=False), json_path: records}, overwrite=overwrite)
    return csv_path, json_path


@dataclass
class Run:
    config: dict[str, Any]  # the run's settings (behaviour, model, grids, sizes)
    results: pd.DataFrame  # one row per evaluated intervention
    plans: dict[str, EditPlan]  # the evaluated Steer2Edit plans, by label
    screening: pd.DataFrame = field(default_factory=pd.DataFrame)  # the KL screen of every candidate
    stats: ContrastiveStatistics | None = None
    vectors: SteeringVectors | None = None
    data: dict[str, Any] = field(default_factory=dict)  # provenance of the contrastive data
    model: dict[str, Any] = field(default_factory=dict)  # the model card, as a dict
    timings: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)  # the preflight checks it passed
    stack: dict[str, str] = field(default_factory=dict)  # package versions
    examples: list[dict[str, str]] = field(default_factory=list)  # example generations, side by side
    items: Items = field(default_factory=dict)  # label -> per-item scores ("attribute", "utility")
    generations: list[dict[str, Any]] = field(default_factory=list)  # every evaluated generation, judged
    suite: dict[str, Any] = field(default_factory=dict)  # what the evaluation measured (sets, judge, decoding)
    speed: dict[str, float] = field(default_factory=dict)  # generated tokens and tokens/s of the evaluation
    tune_results: pd.DataFrame = field(default_factory=pd.DataFrame)  # held-out selection: the tune split
    _gaps: dict[str, tuple[Any, GapEstimate | None]] = field(  # bootstraps, by what was matched
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def behaviour(self) -> str:
        return str(self.config["behaviour"])

    def comparison(self, utility: str = "utility") -> Comparison:
        """Steer2Edit vs steering at matched ``utility`` (degenerate interventions left out)."""
        return compare(self.results, utility)

    def frontier_gap(self) -> GapEstimate | None:
        """The headline: Steer2Edit's Pareto frontier minus steering's over the utility range
        both reach, with a paired bootstrap interval (None without per-item scores, e.g. a run
        made before they were recorded, or when the frontiers share no utility range)."""
        return self._gap("utility")

    def kl_gap(self) -> GapEstimate | None:
        """The same comparison matched on closeness to the unedited model (-KL on benign
        text) instead of utility, with its paired bootstrap interval (benign texts resampled
        with the attack prompts). None where KL was not recorded per text."""
        return self._gap("kl")

    def _gap(self, match: str) -> GapEstimate | None:
        key = (id(self.results), len(self.results), tuple(self.items))
        cached = self._gaps.get(match)
        if cached is None or cached[0] != key:  # a bootstrap: computed once per results table
            cached = self._gaps[match] = (key, frontier_gap_with_interval(self.results, self.items, match=match))
        return cached[1]

    def refusal_table(self, judge: NamedJudge | None = None) -> pd.DataFrame:
        """Refusal rate with its 95% interval per intervention and prompt set, from the recorded
        generations, by ``judge`` (re-judged from the texts: no model needed) or, if None, by
        every judge the run recorded."""
        judged = [r for r in self.generations if "judges" in r]  # refusal sets, not utility generations
        records = judged_records(judged, judge) if judge is not None else judged
        names = [judge.name] if judge is not None else sorted({n for r in records for n in r.get("judges", {})})
        rows = []
        for name in names:
            for (label, which), per_prompt in verdicts_by_prompt(records, name).items():
                ci = rate_interval(per_prompt)
                rows.append(
                    {
                        "judge": name,
                        "label": label,
                        "set": which,
                        "refusal": ci.estimate,
                        "low": ci.low,
                        "high": ci.high,
                        "n_prompts": len(per_prompt),
                    }  # fmt: skip
                )
        return pd.DataFrame(rows)

    def operating_point(self) -> dict[str, Any] | None:
        """The paper's way of reporting: its best edit (the highest attribute among the sane
        edits) against the strongest steering run with at least its utility, with a paired
        bootstrap interval of their attribute difference on the same prompts (None without
        per-item scores or without both kinds of result)."""
        try:
            edit, _ = self.best_plan()
            steer = self.matched_steering(edit)
        except RunDirectoryError:
            return None
        if edit not in self.items or steer not in self.items:
            return None
        diff = paired_bootstrap(self.items[edit]["attribute"], self.items[steer]["attribute"])
        return {"edit": edit, "steering": steer, "difference": diff.to_dict(), "excludes_zero": diff.excludes_zero()}

    def best_plan(self) -> tuple[str, EditPlan]:
        """The evaluated Steer2Edit plan with the highest attribute (utility breaks ties),
        among those whose generations are not mostly degenerate."""
        ok = sane(self.results)
        edits = ok[ok["kind"] == "edit"]
        if edits.empty:
            raise RunDirectoryError("no Steer2Edit candidate survived pruning with sane generations")
        best = edits.sort_values(["attribute", "utility"], ascending=False).iloc[0]
        return str(best["label"]), self.plans[str(best["label"])]

    def matched_steering(self, edit_label: str) -> str:
        """The steering run to set beside an edit: the strongest steering (highest attribute)
        whose utility is at least the edit's; the mildest steering if none is."""
        frame = self.results
        edit = frame[frame["label"] == edit_label].iloc[0]
        ok = sane(frame)
        steer = ok[ok["kind"] == "steer"]
        if steer.empty:
            raise RunDirectoryError("the run has no steering results with sane generations")
        above = steer[steer["utility"] >= edit["utility"]]
        pick = above.sort_values("attribute", ascending=False) if not above.empty else steer.sort_values("gamma")
        return str(pick.iloc[0]["label"])

    def summary(self) -> dict[str, Any]:
        label, _ = self.best_plan()
        return {
            "config": self.config,
            "data": self.data,
            "timings_s": self.timings,
            "best_plan": label,
            "matched_steering": self.matched_steering(label),
            "plan_files": {name: f"plans/edit_{i:02d}.safetensors" for i, name in enumerate(self.plans)},
            "mean_gain_at_matched_utility": self.comparison().mean_gain,
            "frontier_gap": gap.to_dict() if (gap := self.frontier_gap()) is not None else None,
            "kl_gap": kl.to_dict() if (kl := self.kl_gap()) is not None else None,
            "operating_point": self.operating_point(),
            "suite": self.suite,
            "judges": judge_summary(self.generations) if self.generations else None,
            "speed": self.speed,
            "degenerate_excluded": self.comparison().excluded,
            "checks": self.checks,
            "stack": self.stack,
            "model": self.model,
        }

    # ------------------------------------------------------------------------ files

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write the run directory as one output: built in a scratch directory beside ``out``
        and renamed into place when complete (a non-empty ``out`` needs ``overwrite``)."""
        with files.atomic_directory(out, overwrite=overwrite, record=files.RUN_RECORD) as scratch:
            self.write_into(scratch)
        return Path(out)

    def write_into(self, out: Path) -> None:
        """Every file of the run into the (new, empty) directory ``out``."""
        summary = self.summary()
        save_table(self.results, out / "results")
        save_table(self.screening, out / "screening")
        if not self.tune_results.empty:
            save_table(self.tune_results, out / "tune_results")
        save_table(self.comparison().table(), out / "matched_utility")
        if self.vectors is not None:
            self.vectors.save(out / "steering_vectors")
        if self.stats is not None:
            self.stats.save(out / "statistics")
        self.best_plan()[1].save(out / "best_plan")
        for name, plan in self.plans.items():
            plan.save(out / summary["plan_files"][name])
        if self.examples:
            files.write_text(out / "examples.json", finite_json(self.examples, indent=1) + "\n", overwrite=False)
        if self.items:
            files.write_text(out / "items.json", finite_json(self.items) + "\n", overwrite=False)
        if self.generations:
            lines = "".join(finite_json(g, ensure_ascii=False) + "\n" for g in self.generations)
            files.write_text(out / "generations.jsonl", lines, overwrite=False)
        files.write_text(out / files.RUN_RECORD, finite_json(summary, indent=2, default=str) + "\n", overwrite=False)

    @classmethod
    def load(cls, out: str | Path) -> Run:
        """Read a run directory back; a damaged or partial one is refused, naming what is wrong."""
        out = Path(out)
        if not (out / "summary.json").is_file() or not (out / "results.csv").is_file():
            raise RunDirectoryError(
                f"{out} is not a run directory (no summary.json / results.csv); make one with 's2e run' or 's2e sweep'"
            )
        try:
            summary = json.loads((out / "summary.json").read_text())
            results = pd.read_csv(out / "results.csv")
            screening = pd.read_csv(out / "screening.csv") if (out / "screening.csv").is_file() else pd.DataFrame()
            tune = out / "tune_results.csv"
            tune_results = pd.read_csv(tune) if tune.is_file() else pd.DataFrame()
            examples = json.loads((out / "examples.json").read_text()) if (out / "examples.json").is_file() else []
            items = json.loads((out / "items.json").read_text()) if (out / "items.json").is_file() else {}
            generations = (
                [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines() if line.strip()]
                if (out / "generations.jsonl").is_file()
                else []
            )
        except (json.JSONDecodeError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise RunDirectoryError(f"{out} holds a damaged run file ({type(err).__name__}: {err}); rerun it") from None
        missing = [
            k
            for k in ("config", "model", "best_plan", "plan_files")
            if not isinstance(summary, dict) or k not in summary
        ]
        if missing or not {"label", "kind", "attribute", "utility"} <= set(results.columns):
            raise RunDirectoryError(
                f"{out}: summary.json or results.csv lacks what a run writes "
                f"({missing or 'columns'}); rerun it with 's2e run' or 's2e sweep'"
            )
        check_records(generations, str(out / "generations.jsonl"), labels=set(results["label"].astype(str)))
        plans = {name: EditPlan.load(out / path) for name, path in summary["plan_files"].items()}
        stats = ContrastiveStatistics.load(out / "statistics") if (out / "statistics.safetensors").is_file() else None
        vectors = (
            SteeringVectors.load(out / "steering_vectors") if (out / "steering_vectors.safetensors").is_file() else None
        )
        return cls(
            config=summary["config"],
            results=results,
            plans=plans,
            screening=screening,
            stats=stats,
            vectors=vectors,
            data=summary.get("data", {}),
            model=summary["model"],
            timings=summary.get("timings_s", {}),
            checks=summary.get("checks", []),
            stack=summary.get("stack", {}),
            examples=examples,
            items=items,
            generations=generations,
            suite=summary.get("suite", {}),
            speed=summary.get("speed", {}),
            tune_results=tune_results,
        )
