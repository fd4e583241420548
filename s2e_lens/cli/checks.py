"""``s2e doctor`` and ``s2e bench``: is the installation sane, and how fast is it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from s2e_lens.cli.app import JsonOpt, ModelOpt, SetOpt, app, bench_app
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.registry import DEFAULT_MODEL


@bench_app.command("load")
def bench_load_cmd(
    model_name: ModelOpt = DEFAULT_MODEL,
    repeats: Annotated[int, typer.Option(min=1, help="Warm loads to time.")] = 3,
) -> None:
    """Time a packaged model's cold load (empty temporary cache) and warm loads.

    Example: OMP_WAIT_POLICY=PASSIVE s2e bench load --model smollm2-135m-instruct
    """
    from s2e_lens.experiments.bench import bench_load

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
    from s2e_lens.experiments.bench import bench_generate

    typer.echo("\n".join(bench_generate(model_name, batch_size=batch_size, max_new_tokens=max_new_tokens, n=n)))


@bench_app.command("evaluate")
def bench_evaluate_cmd(
    behaviour: Annotated[str, typer.Argument(help="safety or truthfulness")] = "safety",
    model_name: ModelOpt = DEFAULT_MODEL,
    set_: SetOpt = None,
    batch_sizes: Annotated[str, typer.Option(help="The batch-size curve's sizes, comma-separated.")] = "1,8,24,64",
    json_out: JsonOpt = False,
) -> None:
    """The main job's evaluation one intervention at a time vs in shared batches (tokens/s and
    where the time goes), plain transformers generate at the same batch, the batch-size curve,
    and PEFT's mixed-adapter batches vs per-row hooks: all measured in one run.

    The quick preset's settings, as s2e run uses them; --set changes any (a smaller bench,
    e.g. --set n_mc=10, no longer describes the main job).

    Example: OMP_WAIT_POLICY=PASSIVE s2e bench evaluate safety --model smollm2-135m-instruct
    """
    from dataclasses import asdict

    from s2e_lens.experiments.config import config_overrides
    from s2e_lens.experiments.evaluation_bench import bench_evaluate

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise InvalidInputError(f"--batch-sizes must be integers separated by commas, got {batch_sizes!r}") from None
    result = bench_evaluate(model_name, behaviour, overrides=config_overrides(set_ or []), batch_sizes=sizes)
    typer.echo(json.dumps(asdict(result), indent=2) if json_out else "\n".join(result.lines()))


@bench_app.command("engine")
def bench_engine_cmd(
    model_name: ModelOpt = DEFAULT_MODEL,
    n: Annotated[int, typer.Option(min=2, help="Samples per set (N); memory is also measured at 4N.")] = 64,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    repeats: Annotated[int, typer.Option(min=1, help="Repeats per timing (best of).")] = 3,
    config: Annotated[
        str | None,
        typer.Option(help="Instead of --model: random weights of a real model's shape, e.g. llama-3-8b."),
    ] = None,
    layers: Annotated[int | None, typer.Option(min=1, help="With --config: this many layers (a reduced run).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
) -> None:
    """Time statistics extraction, the naive approach, edit computation, memory, inference,
    apply/revert and export.

    A real model's shape with random weights: --config llama-3-8b --device cuda --dtype bfloat16
    (on a CPU, a reduced run: --config llama-3-8b --layers 2 --n 4 --batch-size 4).

    Example: OMP_WAIT_POLICY=PASSIVE s2e bench engine --n 64
    """
    from s2e_lens.experiments.bench import CONFIGS, ModelSpec, bench_engine

    if config is not None and config not in CONFIGS:
        raise InvalidInputError(f"unknown --config {config!r}; known: {', '.join(CONFIGS)}")
    if layers is not None and config is None:
        raise InvalidInputError("--layers goes with --config (a packaged model has its own depth)")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise InvalidInputError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    spec = ModelSpec(model_name, config, layers, device, dtype)
    bench_engine(spec, n=n, batch_size=batch_size, repeats=repeats, emit=typer.echo)  # each line as measured


@app.command("doctor")
def doctor_cmd(
    model_name: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model to check generation on (default: the default packaged model)."),
    ] = None,
    figures: Annotated[bool, typer.Option(help="Also check static (PNG) figure export.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Check the installation: versions, threads and device; the packaged models' files
    (sha256, the converted cache); bridge logits vs plain transformers; cached vs uncached
    generation; known answers; static figure export. One line per failure with its fix; exit
    code 1 if any check fails.

    Example: s2e doctor
    """
    from s2e_lens.experiments import health

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
