"""The building blocks: ``s2e extract``, ``edit``, ``plot``, ``report``, ``export``, ``compare``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from s2e_lens.cli.app import (
    BenignPromptsOpt,
    DataDirOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    JudgeOpt,
    ModelOpt,
    OutOpt,
    OverwriteOpt,
    ProbeOpt,
    ProbePromptsOpt,
    ReferenceStripOpt,
    SystemPromptOpt,
    app,
    check_data_dir,
    placement,
)
from s2e_lens.errors import InvalidInputError
from s2e_lens.io.files import EXPORT_RECORD, OutputError, check_output, expand_user, real_path, write_all
from s2e_lens.models.registry import DEFAULT_MODEL


@app.command("extract")
def extract_cmd(
    behaviour: Annotated[str, typer.Argument(help="safety, truthfulness, concise, or custom (with --data)")],
    model_name: ModelOpt = DEFAULT_MODEL,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    out: OutOpt = "runs/extract",
    data: Annotated[str | None, typer.Option(help="custom: a JSONL of prompt, response, label rows.")] = None,
    data_dir: DataDirOpt = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    system_prompt: SystemPromptOpt = None,
    reference_strip: ReferenceStripOpt = False,
    probe: ProbeOpt = None,
    probe_prompts: ProbePromptsOpt = None,
    benign_prompts: BenignPromptsOpt = None,
    judge: JudgeOpt = None,
    positions: Annotated[
        str,
        typer.Option(
            help="Where statistics average: response (the paper's), prompt_end (the last --prompt-positions "
            "prompt tokens; with --probe prompts) or both."
        ),
    ] = "response",
    prompt_positions: Annotated[int, typer.Option(help="Prompt tokens for --positions.")] = 4,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Contrastive statistics and steering vectors of a behaviour (tune split), saved as
    statistics.safetensors and steering_vectors.safetensors (+ JSON) in --out. For safety,
    --probe chooses the data: our teacher-forced texts, the model's own answers (the paper's
    construction; --judge counts its refusals), harmful vs harmless prompts, or your JSONL.

    Example: s2e extract safety --probe own --out runs/safety-own-stats
    """
    from s2e_lens.behaviours import by_name, names
    from s2e_lens.core.vectors import SteeringVectors
    from s2e_lens.engine.extraction import collect_statistics
    from s2e_lens.io.serialization import check_save_target
    from s2e_lens.models.loading import load_model

    if behaviour not in names():
        raise InvalidInputError(f"unknown behaviour {behaviour!r}: use {', '.join(names())} (custom with --data)")
    where = placement(dtype, device, device_map)
    folder = expand_user(out)
    if real_path(folder) in (Path("/"), real_path(expand_user("~")) if "HOME" in os.environ else None):
        raise OutputError(
            f"refusing to write the statistics and vectors straight into {out}: give a folder for them, "
            "e.g. --out runs/extract"
        )
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {out} is a file; give a directory for the statistics and vectors")
    inputs = (data,) if data else ()
    for stem in ("statistics", "steering_vectors"):
        check_save_target(folder / stem, overwrite=overwrite, inputs=inputs)
    data_set = None
    probe_config = None
    if behaviour == "safety" and (probe or positions != "response"):  # the run's probe settings, checked now
        from s2e_lens.experiments.config import RunConfig

        given: dict[str, Any] = {"probe": probe, "probe_prompts": probe_prompts, "benign_prompts": benign_prompts}
        given["judge"] = judge
        probe_config = RunConfig(
            behaviour="safety",
            model=model_name,
            data_dir=data_dir,
            system_prompt=system_prompt,
            positions=positions,
            prompt_positions=prompt_positions,
            **{k: v for k, v in given.items() if v is not None},
        )
    elif probe or probe_prompts or benign_prompts or judge:
        raise InvalidInputError("--probe, --probe-prompts, --benign-prompts and --judge choose safety probe data")
    elif behaviour == "custom" or behaviour == "safety":  # read before the model loads
        data_set = by_name(behaviour, data=data)
    else:
        check_data_dir(data_dir)
    model = load_model(model_name, progress=False, **where)
    if probe_config is not None:
        from s2e_lens.experiments.pipelines import probe_data

        data_set = probe_data(probe_config, model)
    data_set = data_set or by_name(behaviour, model=model, data=data, data_dir=data_dir)
    stats = collect_statistics(
        model,
        data_set,
        batch_size=batch_size,
        system=system_prompt,
        reference_strip=reference_strip,
        positions=positions,
        prompt_positions=prompt_positions,
        progress=not as_json,
    )
    vectors = SteeringVectors.from_statistics(stats)
    # statistics and vectors (four files) as one output: all of them or none, signals included
    outputs = {**stats.encode(folder / "statistics"), **vectors.encode(folder / "steering_vectors")}
    write_all(outputs, overwrite=overwrite)
    written = [p for p in outputs if p.suffix == ".safetensors"]
    norms = vectors.norms()
    files = [str(p) for p in written]
    attn_norms = [round(float(x), 4) for x in norms["attn"]]
    mlp_norms = [round(float(x), 4) for x in norms["mlp"]]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "out": out,
                    "files": files,
                    "n_positive": stats.positive.n_samples,
                    "n_negative": stats.negative.n_samples,
                    "data": stats.provenance,
                    "v_attn_norm": attn_norms,
                    "v_mlp_norm": mlp_norms,
                }
            )
        )
        return
    typer.echo(
        f"{stats.positive.n_samples} positive / {stats.negative.n_samples} negative samples; "
        f"||v_attn|| max {max(attn_norms):.3f}, ||v_mlp|| max {max(mlp_norms):.3f}"
    )
    typer.echo("written: " + ", ".join(files))


@app.command("edit")
def edit_cmd(
    source: Annotated[str, typer.Argument(help="statistics.safetensors (compute a plan) or a saved plan (apply it).")],
    model_name: ModelOpt = DEFAULT_MODEL,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    rho_attn: Annotated[
        float | None,
        typer.Option(help="Attention budget (<= 0: no head edits). Default: EditSettings().rho_attn (0.15)."),
    ] = None,
    rho_mlp: Annotated[
        float | None, typer.Option(help="MLP budget (<= 0: no neuron edits). Default: EditSettings().rho_mlp (0).")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option(help="l1 share in [0, 1). Default: EditSettings().alpha (0.5).")
    ] = None,
    direction: Annotated[str | None, typer.Option(help="k: gradient (the paper's), mu or svd.")] = None,
    importance: Annotated[str | None, typer.Option(help="g: cosine (the paper's) or dot.")] = None,
    magnitude: Annotated[
        str | None, typer.Option(help="lambda: paper, or relative (in units of each component's own variation).")
    ] = None,
    vectors: Annotated[
        str | None, typer.Option(help="Directions: layer (the paper's) or component (each head's and neuron's own).")
    ] = None,
    layers: Annotated[str | None, typer.Option(help="Edit only these layers, comma-separated (e.g. 8,9,10).")] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Where to save the computed plan (a file name).")
    ] = None,
    prompt: Annotated[
        list[str] | None, typer.Option(help="Answer this before and after the edit (repeatable).")
    ] = None,
    export: Annotated[str | None, typer.Option(help="Also export the edited model to this directory.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 48,
    force: Annotated[
        bool, typer.Option("--force", help="Apply a plan even if its updates dwarf the weights they edit.")
    ] = False,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Compute a Steer2Edit plan from saved statistics, or load a saved plan; then optionally
    show before/after answers and export the edited model.

    Example: s2e edit runs/stats/statistics.safetensors --rho-attn 0.15 --out runs/plan --prompt "Pick a lock?"
    """
    from s2e_lens.core.plan import EditPlan
    from s2e_lens.core.settings import EditSettings
    from s2e_lens.core.statistics import ContrastiveStatistics
    from s2e_lens.engine.generation import GenerationSettings, generate
    from s2e_lens.engine.mapper import apply_plan
    from s2e_lens.engine.planning import compute_plan
    from s2e_lens.io import serialization
    from s2e_lens.io.serialization import check_save_target, kind_of
    from s2e_lens.models.loading import load_model

    where = placement(dtype, device, device_map)
    kind = kind_of(source)
    if kind not in ("contrastive_statistics", "edit_plan"):
        raise InvalidInputError(f"{source} holds {kind!r}; give statistics (from s2e extract) or an edit plan")
    given = {
        k: v
        for k, v in {
            "--rho-attn": rho_attn,
            "--rho-mlp": rho_mlp,
            "--alpha": alpha,
            "--direction": direction,
            "--importance": importance,
            "--magnitude": magnitude,
            "--vectors": vectors,
            "--layers": layers,
            "--out": out,
        }.items()
        if v is not None
    }
    if kind == "edit_plan" and given:
        raise InvalidInputError(
            f"{source} is already a plan: {', '.join(given)} apply only when computing a plan "
            "from statistics (give statistics.safetensors, or drop them)"
        )
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    defaults = EditSettings()  # the one source of the budgets' defaults
    rule: dict[str, Any] = {"direction": direction, "importance": importance, "magnitude": magnitude}
    rule["vectors"] = vectors
    if layers is not None:
        try:
            rule["layers"] = tuple(int(x) for x in layers.split(",") if x.strip())
        except ValueError:
            raise InvalidInputError(
                f"--layers takes layer indices, comma-separated (e.g. 8,9,10), got {layers!r}"
            ) from None
    edit_settings = EditSettings(
        rho_attn=defaults.rho_attn if rho_attn is None else rho_attn,
        rho_mlp=defaults.rho_mlp if rho_mlp is None else rho_mlp,
        alpha=defaults.alpha if alpha is None else alpha,
        **{k: v for k, v in rule.items() if v is not None},
    )
    if out:
        check_save_target(out, overwrite=overwrite, inputs=(source,))
    if export:
        check_output(
            export, kind="dir", overwrite=overwrite, inputs=(source,), what="export directory", record=EXPORT_RECORD
        )
    if kind == "contrastive_statistics":
        stats = ContrastiveStatistics.load(source)
        model = load_model(model_name, progress=False, **where)
        plan = compute_plan(model, stats, edit_settings)
    else:
        plan = EditPlan.load(source)
        model = load_model(model_name, progress=False, **where)
    before = [g.text for g in generate(model, prompt, settings)] if prompt else []
    apply_plan(model, plan, force=force)
    after = [g.text for g in generate(model, prompt, settings)] if prompt else []
    written: Path | None = None

    def save_plan() -> list[Path]:
        nonlocal written
        if not out:
            return []
        written = plan.save(out, overwrite=overwrite)
        return list(serialization.paths(written))

    if export:  # the plan and the export land together or not at all
        from s2e_lens.models.export import export_model
        from s2e_lens.reporting import model_card

        measured = model_card.run_measurements(source) if kind != "contrastive_statistics" else None

        def card(directory: Path) -> None:
            text = model_card.render(
                model, [plan], fmt="checkpoint", measured=measured, base_sha256=model.card.source_sha256
            )
            (directory / "README.md").write_text(text)

        export_model(model, export, overwrite=overwrite, card=card, companion=save_plan)
    else:
        save_plan()
    answers = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompt or [], before, after, strict=True)]
    if as_json:
        typer.echo(
            json.dumps(
                {"n_edited": plan.n_edited, "plan": str(written or source), "export": export, "answers": answers}
            )
        )
        return
    typer.echo(plan.describe())
    for row in answers:
        typer.echo(f"\nuser: {row['prompt']}\nbefore: {row['before']}\nafter:  {row['after']}")
    if written:
        typer.echo(f"plan written to {written} (+ .json)")
    if export:
        typer.echo(f"edited model exported to {export} (transformers checkpoint)")


@app.command("plot")
def plot_cmd(
    source: Annotated[str, typer.Argument(help="A run directory or a saved edit plan.")],
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Folder for the images (default: SOURCE/figures).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="png, svg or html.")] = "png",
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Draw the figures of a run directory (frontiers, heatmaps, neuron views, edit mass) or of
    one plan (heatmaps, neuron views, edit mass).

    Example: s2e plot runs/demo --format svg
    """
    from s2e_lens.core.plan import EditPlan
    from s2e_lens.core.run import Run
    from s2e_lens.reporting import figures
    from s2e_lens.reporting.report import plan_figures, run_figures

    if fmt not in ("png", "svg", "html"):
        raise InvalidInputError(f"--format must be png, svg or html, got {fmt!r}")
    src = Path(source)
    if src.is_dir():
        figs = run_figures(Run.load(src))
        folder = Path(out) if out else src / "figures"
    else:
        figs = plan_figures(EditPlan.load(src))
        folder = Path(out) if out else src.parent / "figures"
    targets = {stem: folder / f"{stem}.{fmt}" for stem in figs}
    for path in targets.values():
        check_output(path, kind="file", overwrite=overwrite, inputs=(source,), what="figure")
    if fmt != "html" and not figures.can_export_static():
        raise figures.StaticExportError(f"cannot write {fmt} figures here: {figures.BROWSER_HINT}")
    written = [str(figures.save_figure(figs[stem], path, overwrite=overwrite)) for stem, path in targets.items()]
    typer.echo(json.dumps(written) if as_json else "\n".join(written))


@app.command("report")
def report_cmd(
    run_dir: Annotated[str, typer.Argument(help="A run directory (from s2e run or s2e sweep).")],
    model_name: Annotated[
        str | None, typer.Option("--model", "-m", help="Also draw attention of the top edited heads with this model.")
    ] = None,
) -> None:
    """(Re)build report.html and report.md of a run directory (its own files are replaced).

    Example: s2e report runs/demo
    """
    from s2e_lens.core.run import Run
    from s2e_lens.models.loading import load_model
    from s2e_lens.reporting import report

    run = Run.load(run_dir)  # a run directory, before any model loads
    model = load_model(model_name, progress=False) if model_name else None
    paths = report.build(run_dir, run=run, model=model)
    typer.echo(f"report: {paths['html']}\n        {paths['md']}")


@app.command("export")
def export_cmd(
    plan: Annotated[str, typer.Argument(help="A saved edit plan (.safetensors).")],
    out: OutOpt = "exported",
    model_name: ModelOpt = DEFAULT_MODEL,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Apply a plan even if its updates dwarf the weights they edit.")
    ] = False,
    overwrite: OverwriteOpt = False,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="checkpoint: the edited model as a full transformers checkpoint; peft: a LoRA adapter of the "
            "edited output projections (rank = distinct write directions) for PEFT, vLLM, SGLang, TGI.",
        ),
    ] = "checkpoint",
) -> None:
    """Write an edit for use outside s2e_lens, with a model card (README.md): the edited model
    as a plain transformers checkpoint (AutoModelForCausalLM.from_pretrained), or a PEFT LoRA
    adapter (PeftModel.from_pretrained on the unedited base). Records the edit in s2e_edits.json.

    Example: s2e export runs/demo/best_plan.safetensors --out smollm2-refusal --format peft
    """
    from s2e_lens.core.plan import EditPlan
    from s2e_lens.engine.mapper import apply_plan, check_plan_is_safe
    from s2e_lens.models.export import export_model
    from s2e_lens.models.loading import load_model
    from s2e_lens.reporting import model_card

    if fmt not in ("checkpoint", "peft"):
        raise InvalidInputError(f"--format must be checkpoint or peft, got {fmt!r}")
    where = placement(dtype, device, device_map)
    check_output(out, kind="dir", overwrite=overwrite, inputs=(plan,), what="export directory", record=EXPORT_RECORD)
    p = EditPlan.load(plan)
    model = load_model(model_name, progress=False, **where)
    measured = model_card.run_measurements(plan)

    def card(directory: Path) -> None:
        text = model_card.render(model, [p], fmt=fmt, measured=measured, base_sha256=model.card.source_sha256)
        (directory / "README.md").write_text(text)

    if fmt == "peft":
        from s2e_lens.engine.adapters import export_adapter

        check_plan_is_safe(model, p, force=force)
        path = export_adapter(model, [p], out, overwrite=overwrite, card=card)
        what = "as a PEFT LoRA adapter"
    else:
        apply_plan(model, p, force=force)
        path = export_model(model, out, overwrite=overwrite, card=card)
        what = "as a checkpoint"
    typer.echo(
        f"exported {p.n_edited['heads']} head and {p.n_edited['neurons']} neuron edits of {model_name} {what} to {path}"
    )


@app.command("compare")
def compare_cmd(
    sources: Annotated[list[str], typer.Argument(help="Two or more run directories or plans, optionally NAME=PATH.")],
    out: OutOpt = "runs/compare",
    fmt: Annotated[str, typer.Option("--format", help="png, svg or html.")] = "png",
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare plans: across models (depth-normalised edit placement, heatmaps side by side) or
    across behaviours in one model (overlap of edited components, lambda correlation).

    Example: s2e compare smollm2=runs/safety-smollm2 gemma=runs/safety-gemma --out runs/compare
    """
    from s2e_lens.core.plan import EditPlan
    from s2e_lens.reporting import figures

    if len(sources) < 2:
        raise InvalidInputError("give at least two run directories or plans to compare")
    if fmt not in ("png", "svg", "html"):
        raise InvalidInputError(f"--format must be png, svg or html, got {fmt!r}")
    plans: dict[str, EditPlan] = {}
    inputs = []
    for src in sources:
        name, _, path = src.rpartition("=") if "=" in src else ("", "", src)
        p = Path(path)
        file = p / "best_plan" if p.is_dir() else p
        inputs.append(file)
        plan = EditPlan.load(file)
        plans[name or f"{plan.model.get('name', p.name)} · {plan.provenance.get('behaviour', 'custom')}"] = plan
    folder = Path(out)
    same_model = len({p.model.get("fingerprint") for p in plans.values()}) == 1
    stems = ["heads_side_by_side", "behaviours" if same_model else "depth_profile"]
    for stem in stems:
        check_output(folder / f"{stem}.{fmt}", kind="file", overwrite=overwrite, inputs=inputs, what="figure")
    if fmt != "html" and not figures.can_export_static():
        raise figures.StaticExportError(f"cannot write {fmt} figures here: {figures.BROWSER_HINT}")
    figs = {"heads_side_by_side": figures.compare_heatmaps(plans)}
    doc: dict = {"same_model": same_model}
    if same_model:
        figs["behaviours"] = figures.compare_behaviours(plans)
        table = figures.overlap_matrix(plans)
        doc["overlap"] = json.loads(table.to_json(orient="records"))
    else:
        figs["depth_profile"] = figures.compare_models(plans)
    doc["figures"] = [
        str(figures.save_figure(f, folder / f"{stem}.{fmt}", overwrite=overwrite)) for stem, f in figs.items()
    ]
    if as_json:
        typer.echo(json.dumps(doc))
        return
    if same_model:
        typer.echo(table.to_string(index=False))
    typer.echo("\n".join(doc["figures"]))
