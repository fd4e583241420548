"""``s2e run`` (the main job), ``s2e sweep`` and ``s2e eval``: everything that evaluates.
Their defaults come from :class:`s2e_lens.experiments.pipelines.RunConfig`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from s2e_lens.cli.app import (
    AnswerCheckOpt,
    AttackOpt,
    BehaviourArg,
    BenignPromptsOpt,
    DataDirOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    Gsm8kOpt,
    JsonOpt,
    JudgeOpt,
    MaxDegenerateOpt,
    MaxNewTokensOpt,
    ModelOpt,
    OverwriteOpt,
    ProbeOpt,
    ProbePromptsOpt,
    PromptFieldOpt,
    ReferenceStripOpt,
    SamplesOpt,
    SelectionOpt,
    SetOpt,
    SystemPromptOpt,
    TemperatureOpt,
    TopPOpt,
    UtilityOpt,
    app,
    check_data_dir,
    placement,
)
from s2e_lens.errors import InvalidInputError
from s2e_lens.experiments.config import RunConfig, config_overrides
from s2e_lens.io.files import ABLATION_RECORD, RUN_RECORD, check_output
from s2e_lens.models.registry import DEFAULT_MODEL

DEFAULTS = RunConfig()  # the one source of a run's defaults


def _floats(text: str, name: str) -> tuple[float, ...]:
    from s2e_lens.experiments.config import parse_grid

    return parse_grid(text, name)


def _given(**values: Any) -> dict[str, Any]:
    """The options the user gave (not None), as RunConfig fields: RunConfig checks them before
    any model loads, and a preset or protocol keeps its own choice for the rest."""
    return {k: v for k, v in values.items() if v is not None}


def _merged(sets: list[str] | None, **fields: Any) -> dict[str, Any]:
    """RunConfig fields from the command's options, then ``--set KEY=VALUE`` on top."""
    return {**fields, **config_overrides(sets or [])}


def _speed(speed: dict[str, float]) -> str:
    return (
        f"generated {int(speed['generated_tokens']):,} tokens, "
        f"{speed['generated_tokens_per_s_of_evaluation']:,.1f} per second of evaluation (scoring included)"
    )


def _listed(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


@app.command("sweep")
def sweep_cmd(
    behaviour: Annotated[str, typer.Argument(help="safety or truthfulness")] = "safety",
    model_name: ModelOpt = DEFAULT_MODEL,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    samples: SamplesOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    judge: JudgeOpt = None,
    attack: AttackOpt = None,
    prompt_field: PromptFieldOpt = None,
    system_prompt: SystemPromptOpt = None,
    reference_strip: ReferenceStripOpt = False,
    probe: ProbeOpt = None,
    probe_prompts: ProbePromptsOpt = None,
    benign_prompts: BenignPromptsOpt = None,
    utility: UtilityOpt = None,
    gsm8k: Gsm8kOpt = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory.")] = "runs/sweep",
    gammas: Annotated[str, typer.Option(help="Steering gammas, comma-separated.")] = _listed(DEFAULTS.gammas),
    rho_attn: Annotated[str, typer.Option(help="Attention budgets (<= 0: off).")] = _listed(DEFAULTS.rho_attn),
    rho_mlp: Annotated[str, typer.Option(help="MLP budgets (<= 0: off).")] = _listed(DEFAULTS.rho_mlp),
    alpha: Annotated[str, typer.Option(help="l1 shares in [0, 1).")] = _listed(DEFAULTS.alpha),
    selection: SelectionOpt = None,
    direction: Annotated[
        str | None, typer.Option(help="Edit rule, k: gradient (the paper's B^T v_hat), mu or svd.")
    ] = None,
    importance: Annotated[str | None, typer.Option(help="Edit rule, g: cosine (the paper's) or dot.")] = None,
    edit_selection: Annotated[
        str | None, typer.Option(help="Edit rule, which components: elastic_net (the paper's) or top_k.")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="With --edit-selection top_k: components per block type.")] = None,
    magnitude: Annotated[
        str | None,
        typer.Option(help="Edit rule, lambda: paper, or relative (in units of each component's own variation)."),
    ] = None,
    vectors: Annotated[
        str | None,
        typer.Option(help="Edit rule, directions: layer (the paper's v per layer) or component (each one's own)."),
    ] = None,
    sequential: Annotated[
        int | None, typer.Option(help="Layer-sequential plans in blocks of this many layers (0: off).")
    ] = None,
    target_kl: Annotated[
        str | None,
        typer.Option(
            help="Calibrate instead of a grid: KL targets on benign text (e.g. 0.05,0.1,0.2); one edit per "
            "alpha and target (budgets scaled from the first --rho-attn/--rho-mlp) and one steering per target."
        ),
    ] = None,
    positions: Annotated[
        str | None,
        typer.Option(
            help="Where statistics average: response (the paper's), prompt_end (the last --prompt-positions "
            "prompt tokens; with --probe prompts) or both."
        ),
    ] = None,
    prompt_positions: Annotated[int | None, typer.Option(help="Prompt tokens for --positions.")] = None,
    keep: Annotated[int, typer.Option(min=1, help="Edit candidates kept after KL screening.")] = DEFAULTS.keep_edits,
    max_kl: Annotated[
        float, typer.Option(help="Screening: drop edits with a larger KL on benign text.")
    ] = DEFAULTS.max_kl,
    n_eval: Annotated[int, typer.Option(min=2, help="Held-out prompts/questions per set.")] = DEFAULTS.n_eval,
    n_mc: Annotated[int, typer.Option(min=1, help="Multiple-choice items per utility set.")] = DEFAULTS.n_mc,
    data_dir: DataDirOpt = None,
    answer_check: AnswerCheckOpt = True,
    max_degenerate: MaxDegenerateOpt = DEFAULTS.max_degenerate,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Sweep activation steering (gamma) and Steer2Edit (rho_attn, rho_mlp, alpha) on a behaviour,
    evaluate on held-out data, and compare them at matched utility.

    Writes results.csv/json, screening.csv/json, matched_utility.csv/json, summary.json,
    steering_vectors and best_plan (safetensors + JSON) to --out.

    Example: s2e sweep safety --model smollm2-135m-instruct --out runs/safety-smollm2
    """
    from s2e_lens.experiments.pipelines import run

    config = RunConfig(
        **_merged(
            set_,
            model=model_name,
            behaviour=behaviour,
            gammas=_floats(gammas, "--gammas"),
            rho_attn=_floats(rho_attn, "--rho-attn"),
            rho_mlp=_floats(rho_mlp, "--rho-mlp"),
            alpha=_floats(alpha, "--alpha"),
            keep_edits=keep,
            max_kl=max_kl,
            n_eval=n_eval,
            n_mc=n_mc,
            data_dir=data_dir,
            check_answers=answer_check,
            max_degenerate=max_degenerate,
            system_prompt=system_prompt,
            reference_strip=reference_strip,
            **_given(
                dtype=dtype,
                device=device,
                device_map=device_map,
                samples=samples,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                judge=judge,
                attacks=tuple(attack) if attack else None,
                prompt_field=prompt_field,
                probe=probe,
                probe_prompts=probe_prompts,
                benign_prompts=benign_prompts,
                utility=utility,
                n_gsm8k=gsm8k,
                selection=selection,
                direction=direction,
                importance=importance,
                edit_selection=edit_selection,
                top_k=top_k,
                magnitude=magnitude,
                vectors=vectors,
                sequential=sequential,
                target_kl=_floats(target_kl, "--target-kl") if target_kl is not None else None,
                positions=positions,
                prompt_positions=prompt_positions,
            ),
        )
    )
    check_data_dir(data_dir)
    check_output(out, kind="dir", overwrite=overwrite, what="sweep directory", record=RUN_RECORD)
    result = run(config, progress=not as_json)
    path = result.save(out, overwrite=overwrite)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "out": str(path),
                    "timings_s": result.timings,
                    "speed": result.speed,
                    "mean_gain": result.comparison().mean_gain,
                    "frontier_gap": gap.to_dict() if (gap := result.frontier_gap()) is not None else None,
                    "results": json.loads(result.results.to_json(orient="records")),
                }
            )
        )
        return
    cols = [
        c
        for c in ("label", "attribute", "utility", "over_refusal_harmless", "mc1", "kl", "degenerate", "seconds")
        if c in result.results
    ]
    typer.echo(result.results[cols].to_string(index=False))
    estimate = result.frontier_gap()
    if estimate is not None:
        iv = estimate.interval
        typer.echo(
            f"\nfrontiers over the utility range both reach ({estimate.gap.low:.3f}-{estimate.gap.high:.3f}): "
            f"Steer2Edit minus steering {estimate.gap.mean:+.3f} [95% {iv.low:+.3f}, {iv.high:+.3f}]: "
            f"{estimate.verdict()}"
        )
    else:
        typer.echo("\nthe two frontiers share no utility range: no matched comparison")
    typer.echo(f"stage timings (s): {result.timings}")
    if result.speed:
        typer.echo(_speed(result.speed))
    typer.echo(f"written to {path}")


@app.command("run")
def run_cmd(
    behaviour: BehaviourArg = "safety",
    model_name: ModelOpt = DEFAULT_MODEL,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    samples: SamplesOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    judge: JudgeOpt = None,
    attack: AttackOpt = None,
    prompt_field: PromptFieldOpt = None,
    system_prompt: SystemPromptOpt = None,
    reference_strip: ReferenceStripOpt = False,
    probe: ProbeOpt = None,
    probe_prompts: ProbePromptsOpt = None,
    benign_prompts: BenignPromptsOpt = None,
    utility: UtilityOpt = None,
    gsm8k: Gsm8kOpt = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Output directory (default runs/BEHAVIOUR-MODEL).")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="quick (minutes on 2 CPU cores) or full (the README's sweeps).")
    ] = "quick",
    protocol: Annotated[
        str,
        typer.Option(
            help="ours (teacher-forced probes, plain prompts, greedy, our judge, KL screen) or paper (safety: the "
            "model's own probe answers, the adversarial prompts, sampled completions, the paper's judge, the "
            "top 10 by attribute). Options given beside it override its choices."
        ),
    ] = "ours",
    selection: SelectionOpt = None,
    n_eval: Annotated[int | None, typer.Option(min=2, help="Override: held-out prompts/questions per set.")] = None,
    n_mc: Annotated[int | None, typer.Option(min=1, help="Override: multiple-choice items per utility set.")] = None,
    data_dir: DataDirOpt = None,
    answer_check: AnswerCheckOpt = True,
    max_degenerate: MaxDegenerateOpt = DEFAULTS.max_degenerate,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The main job: data -> statistics -> steering vectors -> Steer2Edit candidates ->
    held-out evaluation against activation steering -> example generations -> figures ->
    report.html and report.md in --out.

    Example: s2e run safety --model smollm2-135m-instruct --out runs/demo
    """
    from s2e_lens.experiments.pipelines import main_job
    from s2e_lens.reporting.report import headline, summary_table

    config = RunConfig.preset(
        behaviour,
        preset,
        protocol=protocol,
        **_merged(
            set_,
            model=model_name,
            data_dir=data_dir,
            check_answers=answer_check,
            max_degenerate=max_degenerate,
            system_prompt=system_prompt,
            reference_strip=reference_strip,
            **_given(
                dtype=dtype,
                device=device,
                device_map=device_map,
                samples=samples,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                judge=judge,
                attacks=tuple(attack) if attack else None,
                prompt_field=prompt_field,
                probe=probe,
                probe_prompts=probe_prompts,
                benign_prompts=benign_prompts,
                utility=utility,
                n_gsm8k=gsm8k,
                n_eval=n_eval,
                n_mc=n_mc,
                selection=selection,
            ),
        ),
    )
    check_data_dir(data_dir)
    target = out or f"runs/{behaviour}-{model_name.replace('/', '_')}"
    started = time.perf_counter()
    result = main_job(config, target, progress=not as_json, overwrite=overwrite)
    report_path = Path(target) / "report.html"
    summary = result.summary()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "report": str(report_path),
                    "out": target,
                    "best_plan": summary["best_plan"],
                    "matched_steering": summary["matched_steering"],
                    "mean_gain": summary["mean_gain_at_matched_utility"],
                    "frontier_gap": summary["frontier_gap"],
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
        )
        return
    _, lines = headline(result)
    typer.echo(summary_table(result).to_markdown(index=False, disable_numparse=True, tablefmt="simple"))
    typer.echo("")
    typer.echo("\n".join(line.replace("**", "") for line in lines))
    typer.echo(f"\nfinished in {time.perf_counter() - started:.0f} s")
    if result.speed:
        typer.echo(_speed(result.speed))
    typer.echo(f"report: {report_path}\n        {report_path.with_suffix('.md')}")


@app.command("eval")
def eval_cmd(
    behaviour: BehaviourArg = "safety",
    model_name: ModelOpt = DEFAULT_MODEL,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    samples: SamplesOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    judge: JudgeOpt = None,
    attack: AttackOpt = None,
    prompt_field: PromptFieldOpt = None,
    system_prompt: SystemPromptOpt = None,
    plan: Annotated[str | None, typer.Option(help="Evaluate with this edit plan applied.")] = None,
    vectors: Annotated[str | None, typer.Option(help="Steering vectors (with --gamma).")] = None,
    gamma: Annotated[float, typer.Option(help="Steering strength for --vectors.")] = 1.0,
    n_eval: Annotated[int | None, typer.Option(min=2, help="Held-out prompts per set (default: s2e run's).")] = None,
    n_mc: Annotated[int | None, typer.Option(min=1, help="Multiple-choice items per set (default: s2e run's).")] = None,
    data_dir: DataDirOpt = None,
    answer_check: AnswerCheckOpt = True,
    force: Annotated[
        bool, typer.Option("--force", help="Apply a plan even if its updates dwarf the weights they edit.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure a behaviour's attribute and utility on held-out data, for the unedited model,
    an edit plan, or steering.

    Example: s2e eval safety --plan runs/demo/best_plan.safetensors --json
    """
    from s2e_lens.behaviours import get
    from s2e_lens.core.plan import EditPlan
    from s2e_lens.core.vectors import SteeringVectors
    from s2e_lens.engine import interventions
    from s2e_lens.engine.mapper import check_plan_is_safe
    from s2e_lens.experiments import health
    from s2e_lens.models.loading import load_model

    if plan and vectors:
        raise InvalidInputError("give --plan or --vectors, not both")
    where = placement(dtype, device, device_map)
    config = RunConfig.preset(
        behaviour,
        "quick",
        model=model_name,
        data_dir=data_dir,
        system_prompt=system_prompt,
        **_given(
            n_eval=n_eval,
            n_mc=n_mc,
            samples=samples,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            judge=judge,
            attacks=tuple(attack) if attack else None,
            prompt_field=prompt_field,
        ),
    )
    check_data_dir(data_dir)
    gamma = interventions.check_gamma(gamma)
    edit_plan = EditPlan.load(plan) if plan else None
    steering_vectors = SteeringVectors.load(vectors) if vectors else None
    model = load_model(model_name, progress=False, **where)
    health.preflight(model, known=answer_check)
    suite = get(behaviour).suite(model, config.suite_size())  # type: ignore[misc]
    if edit_plan is not None:
        check_plan_is_safe(model, edit_plan, force=force)
        item = interventions.editing(edit_plan, label=f"plan {plan}", force=force)
    elif steering_vectors is not None:
        item = interventions.steering(steering_vectors, gamma) if gamma else interventions.unedited()
    else:
        item = interventions.unedited()
    with item.active(model):
        row = {"label": item.label, **suite.measure(model)}
    if as_json:
        typer.echo(json.dumps(row, default=str))
        return
    for k, v in row.items():
        typer.echo(f"{k:<24}{v:.4f}" if isinstance(v, float) else f"{k:<24}{v}")


@app.command("rescore")
def rescore_cmd(
    run_dir: Annotated[str, typer.Argument(help="A run directory (s2e run, sweep) or an ablation (s2e ablate).")],
    judge: Annotated[
        str, typer.Option("--judge", help="paper, strict, reading, or MODULE:function / FILE.py:function.")
    ],
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Ablations: also save the re-judged ablation here.")
    ] = None,
    judge_timeout: Annotated[
        float, typer.Option(help="Seconds a user judge may take per response before the re-scoring stops.")
    ] = 30.0,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-score a run's recorded generations with another refusal judge, without a model:
    refusal per intervention and prompt set with 95% intervals, and how the judges compare.
    For an ablation directory: the whole table (best edits, scores, both gaps) re-judged.

    Example: s2e rescore runs/demo --judge paper
    """
    from s2e_lens.core.judges import judge_summary, judged_records, load_judge
    from s2e_lens.core.run import Run

    chosen = load_judge(judge, timeout_s=judge_timeout)
    if (Path(run_dir) / "ablation.json").is_file():
        _rescore_ablation(run_dir, chosen, out=out, overwrite=overwrite, as_json=as_json)
        return
    if out is not None:
        raise InvalidInputError("--out saves a re-judged ablation; a run's re-scoring is printed only")
    run = Run.load(run_dir)
    if not run.generations:
        raise InvalidInputError(
            f"{run_dir} has no generations.jsonl (a run made before generations were recorded, or one with "
            "no generated attribute); rerun it to re-score"
        )
    table = run.refusal_table(chosen)
    names = tuple(dict.fromkeys([chosen.name, "paper", "strict"]))
    summary = judge_summary(judged_records(run.generations, chosen), names)
    if as_json:
        typer.echo(json.dumps({"refusal": json.loads(table.to_json(orient="records")), "judges": summary}))
        return
    typer.echo(table.drop(columns="judge").to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    typer.echo(_judges_line(summary))


def _rescore_ablation(run_dir: str, judge: Any, *, out: str | None, overwrite: bool, as_json: bool) -> None:
    from s2e_lens.core.judges import judge_summary, judged_records
    from s2e_lens.experiments.ablation import Ablation

    if out is not None:
        check_output(out, kind="dir", overwrite=overwrite, what="ablation directory", record=ABLATION_RECORD)
    rejudged = Ablation.load(run_dir).rejudged(judge)
    attacks = rejudged.config["attacks"][0]
    names = tuple(dict.fromkeys([judge.name, "paper", "strict"]))
    on_attacks = [g for g in rejudged.generations if g["set"] == attacks]
    summary = judge_summary(judged_records(on_attacks, judge), names)
    if out is not None:
        rejudged.save(out, overwrite=overwrite)
    if as_json:
        table = json.loads(rejudged.table.to_json(orient="records"))
        typer.echo(json.dumps({"table": table, "judges": summary, "out": out}))
        return
    typer.echo(f"{run_dir} re-judged by {judge.name} ({attacks}):\n")
    typer.echo(rejudged.markdown())
    typer.echo(_judges_line(summary))


def _judges_line(summary: dict[str, Any]) -> str:
    names = [k for k, v in summary.items() if isinstance(v, dict)]
    parts = [
        f"{summary['n']} generations ({summary.get('n_degenerate', 0)} degenerate, "
        f"{summary.get('n_cut_off', 0)} cut off at the token limit)"
    ]
    for name in names:
        s = summary[name]
        extra = [f"{s[k]:.1%} of the {w}" for k, w in (("when_degenerate", "degenerate"), ("when_cut_off", "cut off"))
                 if s.get(k) is not None]  # fmt: skip
        parts.append(f"{name}: {s['refusal']:.1%} refusals" + (f" ({', '.join(extra)})" if extra else ""))
    if "disagreement" in summary:
        parts.append(f"{names[0]} and {names[1]} disagree on {summary['disagreement']:.1%}")
    return "; ".join(parts)


@app.command("ablate")
def ablate_cmd(
    behaviour: BehaviourArg = "safety",
    model_name: ModelOpt = DEFAULT_MODEL,
    preset: Annotated[str, typer.Option(help="quick or full: sizes the sets, grids and decoding.")] = "quick",
    protocol: Annotated[str, typer.Option(help="ours or paper (safety), as for s2e run.")] = "ours",
    variants: Annotated[
        str,
        typer.Option(
            help="Comma-separated: the paper's full, k=mu, k=svd, g=dot, top-K (l0), l2 (alpha=0) (the default; "
            "aliases mu, svd, dot, l0, l2), and ours: relative, component, sequential, calibrated, "
            "'calibrated relative' (budgets bisected to --set target_kl=..., default 0.05,0.1,0.2)."
        ),
    ] = "full,k=mu,k=svd,g=dot,top-K (l0),l2 (alpha=0)",
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory.")] = "runs/ablation",
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The ablation table: the edit rule with one part changed at a time, each variant at its
    best budget on the grid (attribute x utility, as the paper scores it, with a 95% interval),
    and each against activation steering on the same prompts (the gain at matched utility and
    at matched KL, with paired 95% intervals). One statistics pass and one steering sweep serve
    every variant.

    Example: s2e ablate safety --set selection=heldout --out runs/ablation-smollm2
    """
    from s2e_lens.experiments.ablation import ablate, variant_names

    names = variant_names(variants)
    overrides = config_overrides(set_ or [])
    config = RunConfig.preset(behaviour, preset, protocol=protocol, model=model_name, data_dir=data_dir, **overrides)
    check_data_dir(data_dir)
    check_output(out, kind="dir", overwrite=overwrite, what="ablation directory", record=ABLATION_RECORD)
    started = time.perf_counter()
    result = ablate(config, names, progress=not as_json)
    path = result.save(out, overwrite=overwrite)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "out": str(path),
                    "timings_s": result.timings,
                    "table": json.loads(result.table.to_json(orient="records")),
                }
            )
        )
        return
    typer.echo(result.markdown())
    typer.echo(f"finished in {time.perf_counter() - started:.0f} s; {path / 'ablation.md'}")
