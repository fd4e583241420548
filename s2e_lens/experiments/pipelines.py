"""End-to-end runs: behaviour data -> statistics -> vectors -> candidate interventions ->
cheap pruning -> held-out evaluation -> steering vs Steer2Edit comparison, as a :class:`Run`
(settings: :class:`s2e_lens.experiments.config.RunConfig`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from s2e_lens.behaviours.base import Suite, get
from s2e_lens.behaviours.custom import custom_jsonl
from s2e_lens.behaviours.safety import generation_config_sampling, own_probe, prompt_contrast, read_prompt_list
from s2e_lens.core.contrastive import ContrastiveSet
from s2e_lens.core.judges import load_judge
from s2e_lens.core.plan import EditPlan
from s2e_lens.core.run import Run
from s2e_lens.core.settings import EditSettings
from s2e_lens.core.statistics import ContrastiveStatistics
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine import interventions
from s2e_lens.engine.calibration import CalibrationError, calibrate_plan, calibrate_steering
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.generation import GenerationSettings, generate
from s2e_lens.engine.scoring import KLReference
from s2e_lens.engine.sequential import sequential_plan
from s2e_lens.errors import InvalidInputError
from s2e_lens.experiments import health, sweep
from s2e_lens.experiments.config import RunConfig
from s2e_lens.experiments.health import Check
from s2e_lens.io import files
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.loading import load_model


def run(
    config: RunConfig,
    *,
    model: LoadedModel | None = None,
    progress: bool = True,
    prepared: Prepared | None = None,
    include_unedited: bool = True,
) -> Run:
    """Everything but the report: check the unedited model, build the behaviour's data,
    collect statistics, screen edit candidates, evaluate steering, the kept edits (and the
    baselines) on the test split. ``prepared`` (from :func:`prepare` on this model with the
    same probe and suite settings) skips the checks, the data, the statistics and the suites;
    ``include_unedited=False`` does not measure the unedited model (an ablation measures it
    once)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    behaviour = get(config.behaviour)  # an unknown behaviour fails before the model loads
    model = model or load_model(config.model, progress=progress, **config.placement())
    lap("load")
    assert behaviour.suite is not None
    if prepared is None:
        prepared = prepare(config, model, progress=progress, timings=timings)
        clock = time.perf_counter()
    else:
        prepared.check(config)
    data, stats, suite, checks = prepared.data, prepared.stats, prepared.suite, prepared.checks
    vectors = SteeringVectors.from_statistics(stats)
    planner = None
    if config.sequential:

        def planner(s: EditSettings) -> EditPlan:
            return sequential_plan(
                model,
                data,
                stats,
                s,
                block_size=config.sequential,
                max_pairs=config.sequential_pairs or None,
                seed=config.seed,
                **config.statistics_options(model.device),
                progress=False,
            )

    assert suite.kl_reference is not None
    calibration: list[dict[str, Any]] = []
    if config.target_kl:
        candidates, steering = calibrated(config, model, stats, vectors, suite.kl_reference, planner, calibration)
    else:
        settings = interventions.grid(config.rho_attn, config.rho_mlp, config.alpha, **config.edit_variant())
        candidates = interventions.edit_candidates(model, stats, settings, planner=planner)
        steering = interventions.steering_sweep(vectors, config.gammas)
    lap("plans")
    tune_results = None
    if config.selection == "paper":  # every candidate on the attribute; the top ones evaluated fully
        kept, screening = sweep.paper_selection(
            model, suite, candidates, top=config.keep_edits, progress=progress, shared=config.shared_batches
        )
    else:
        kept, screening = sweep.prune(
            model,
            candidates,
            suite.kl_reference,
            max_kl=config.max_kl,
            keep=config.keep_edits,
            shared=config.shared_batches,
        )
    if config.selection == "heldout":  # choose on the tune split, report on the test split
        tune_results = sweep.run(
            model,
            prepared.tune(model),
            steering + kept,
            progress=progress,
            max_degenerate=config.max_degenerate,
            include_unedited=include_unedited,
            shared=config.shared_batches,
        )
        kept = sweep.heldout_selection(tune_results, kept, keep=config.keep_edits)
    lap("pruning")
    evaluated = steering + kept
    if config.baselines:
        evaluated += [
            interventions.orthogonalisation(model, vectors),
            interventions.iti(model, stats, config.iti_k, config.iti_gamma),
        ]
    records: sweep.Records = {}
    results = sweep.run(
        model,
        suite,
        evaluated,
        progress=progress,
        max_degenerate=config.max_degenerate,
        records=records,
        include_unedited=include_unedited,
        shared=config.shared_batches,
    )
    lap("evaluation")
    speed: dict[str, float] = {}
    if "generated_tokens" in results:  # generation speed over the whole evaluation (scoring included)
        speed["generated_tokens"] = int(results["generated_tokens"].sum())
        speed["generated_tokens_per_s_of_evaluation"] = round(
            speed["generated_tokens"] / max(timings["evaluation"], 1e-9), 1
        )
    return Run(
        config=config.to_dict(),
        results=results,
        screening=screening,
        plans={c.label: c.plan for c in kept if c.plan is not None},
        stats=stats,
        vectors=vectors,
        data=dict(data.provenance),
        model=model.card.to_dict(),
        timings=timings,
        checks=[c.__dict__ for c in checks],
        stack=health.stack_versions(),
        items={label: r["items"] for label, r in records.items() if r["items"]},
        generations=[{"label": label, **g} for label, r in records.items() for g in r["generations"]],
        suite={**suite.notes, "selection": config.selection, **({"calibration": calibration} if calibration else {})},
        speed=speed,
        tune_results=tune_results if tune_results is not None else pd.DataFrame(),
    )


@dataclass
class Prepared:
    """What runs on one model with the same probe and suite settings share: the preflight
    checks, the probe data, its statistics and the evaluation suites (with their KL reference).
    Built by :func:`prepare`; an ablation passes one to every variant's :func:`run`."""

    data: ContrastiveSet
    stats: ContrastiveStatistics
    suite: Suite
    checks: list[Check]
    key: dict[str, Any]  # the settings the parts were built with (see _key)
    tune_suite: Suite | None = None  # held-out selection's tune split, built once when first needed

    def check(self, config: RunConfig) -> None:
        """Refuse a run whose probe or suite settings differ from those these parts were built with."""
        key = _key(config)
        differ = sorted(k for k in key if key[k] != self.key.get(k))
        if differ:
            raise InvalidInputError(
                f"these prepared data, statistics and suites were built with other settings ({', '.join(differ)}); "
                "prepare them again for this run (pipelines.prepare)"
            )

    def tune(self, model: LoadedModel) -> Suite:
        """The suite on the tune split (held-out selection chooses there)."""
        if self.tune_suite is None:
            behaviour = get(self.key["behaviour"])
            assert behaviour.suite is not None
            self.tune_suite = behaviour.suite(model, dataclasses.replace(self.key["suite"], part="tune"))
        return self.tune_suite


def _key(config: RunConfig) -> dict[str, Any]:
    probe = ("model", "dtype", "behaviour", "probe", "probe_prompts", "benign_prompts", "system_prompt",
             "reference_strip", "seed", "data_dir", "judge", "positions", "prompt_positions", "batch_size",
             "check_answers")  # fmt: skip
    return {name: getattr(config, name) for name in probe} | {"suite": config.suite_size()}


def prepare(
    config: RunConfig, model: LoadedModel, *, progress: bool = True, timings: dict[str, float] | None = None
) -> Prepared:
    """Check the unedited model, build the probe data and the suite, collect the statistics
    (each step's seconds into ``timings``: checks, data, statistics)."""
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        if timings is not None:
            timings[name] = round(now - clock, 1)
        clock = now

    behaviour = get(config.behaviour)
    assert behaviour.suite is not None
    checks = health.preflight(model, known=config.check_answers).checks
    lap("checks")
    data = probe_data(config, model)
    suite = behaviour.suite(model, config.suite_size())
    lap("data")
    stats = collect_statistics(model, data, **config.statistics_options(model.device), progress=progress)
    lap("statistics")
    return Prepared(data=data, stats=stats, suite=suite, checks=checks, key=_key(config))


def calibrated(
    config: RunConfig,
    model: LoadedModel,
    stats: ContrastiveStatistics,
    vectors: SteeringVectors,
    reference: KLReference,
    planner: Callable[[EditSettings], EditPlan] | None,
    log: list[dict[str, Any]],
) -> tuple[list[interventions.Intervention], list[interventions.Intervention]]:
    """Edits and steering calibrated to each of ``config.target_kl``: one edit per alpha (its
    budgets scaled from the first rho_attn / rho_mlp; none when both are off) and one steering
    strength per target (none when ``config.gammas`` is empty). A target an intervention cannot
    reach is left out and recorded in ``log``, as is every search."""
    edits_on = config.rho_attn[0] > 0 or config.rho_mlp[0] > 0
    base = interventions.grid(config.rho_attn[:1], config.rho_mlp[:1], config.alpha, **config.edit_variant())
    edits, steering = [], []
    for target in config.target_kl:
        for s in base if edits_on else []:
            try:
                found = calibrate_plan(model, stats, s, reference, target, planner=planner)
            except CalibrationError as err:
                log.append({"kind": "edit", "target_kl": target, "alpha": s.alpha, "error": str(err)})
                continue
            log.append({"kind": "edit", **found.to_dict()})
            edits.append(found.intervention)
        if not config.gammas:
            continue
        try:
            steer = calibrate_steering(model, vectors, reference, target)
        except CalibrationError as err:
            log.append({"kind": "steer", "target_kl": target, "error": str(err)})
            continue
        log.append({"kind": "steer", **steer.to_dict()})
        steering.append(steer.intervention)
    return edits, steering


def probe_data(config: RunConfig, model: LoadedModel) -> ContrastiveSet:
    """The contrastive data of a run: the behaviour's own builder (tune split), or for safety
    the paper's construction from the model's own answers (``probe="own"``) or the user's
    labelled JSONL."""
    if config.behaviour != "safety" or config.probe == "teacher-forced":
        return get(config.behaviour).build(model=model, data_dir=config.data_dir, part="tune")
    if config.probe == "prompts":
        return prompt_contrast("tune")
    if config.probe != "own":
        return custom_jsonl(config.probe)
    temperature, top_p = generation_config_sampling(model)
    return own_probe(
        model,
        harmful=read_prompt_list(config.probe_prompts) if config.probe_prompts else None,
        benign=read_prompt_list(config.benign_prompts) if config.benign_prompts else None,
        data_dir=config.data_dir,
        settings=GenerationSettings(
            max_new_tokens=128, temperature=temperature, top_p=top_p, seed=config.seed, system=config.system_prompt
        ),
        judge=load_judge(config.judge, timeout_s=config.judge_timeout),
    )


def example_generations(run: Run, model: LoadedModel, *, max_new_tokens: int = 48) -> list[dict[str, str]]:
    """Greedy answers to a few held-out prompts from the unedited model, the best edit and the
    steering run matched to it, side by side."""
    behaviour = get(run.behaviour)
    if behaviour.examples is None or run.vectors is None:
        return []
    config = RunConfig(**run.config)
    prompts = behaviour.examples(config.suite_size())
    edit_label, plan = run.best_plan()
    steer_label = run.matched_steering(edit_label)
    gamma = float(run.results.loc[run.results["label"] == steer_label, "gamma"].iloc[0])
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    texts = [p for _, p in prompts]
    columns: dict[str, list[str]] = {}
    for name, item in (
        ("unedited", interventions.unedited()),
        ("edit", interventions.editing(plan, label=edit_label, force=True)),
        ("steering", interventions.steering(run.vectors, gamma)),
    ):
        with item.active(model):
            columns[name] = [g.text for g in generate(model, texts, settings)]
    return [
        {
            "set": kind,
            "prompt": p,
            "unedited": columns["unedited"][i],
            "edit": columns["edit"][i],
            "steering": columns["steering"][i],
            "edit_label": edit_label,
            "steering_label": steer_label,
        }
        for i, (kind, p) in enumerate(prompts)
    ]


def main_job(config: RunConfig, out: str | Path, *, progress: bool = True, overwrite: bool = False) -> Run:
    """``s2e run``: data -> statistics -> vectors -> edit candidates -> evaluation against
    steering -> examples -> figures -> report, all in ``out`` (written as one output: nothing
    appears there until the report is complete)."""
    from s2e_lens.reporting import report

    out = Path(out)
    files.check_output(
        out, kind="dir", overwrite=overwrite, what="run directory", record=files.RUN_RECORD
    )  # before any work
    started = time.perf_counter()
    model = load_model(config.model, progress=progress, **config.placement())
    loading = round(time.perf_counter() - started, 1)
    result = run(config, model=model, progress=progress)
    result.timings["load"] = loading
    started = time.perf_counter()
    result.examples = example_generations(result, model)
    result.timings["examples"] = round(time.perf_counter() - started, 1)
    with files.atomic_directory(out, overwrite=overwrite, record=files.RUN_RECORD) as scratch:
        result.write_into(scratch)
        started = time.perf_counter()
        report.build(scratch, run=result, model=model)
        result.timings["report"] = round(time.perf_counter() - started, 1)
    return result
