"""Benchmarks that print figures (never asserted on in tests: timings vary by machine)."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2e_lens.errors import InvalidInputError
from s2e_lens.models.registry import DEFAULT_MODEL, PACKAGED_MODELS

if TYPE_CHECKING:
    from s2e_lens.core.contrastive import ContrastiveSet
    from s2e_lens.core.plan import EditPlan
    from s2e_lens.models.loaded import LoadedModel


@dataclass(frozen=True)
class LoadTimes:
    model: str
    import_seconds: float  # `import s2e_lens.models.loading` (torch, transformers, TransformerLens) in a new process
    cold_seconds: float  # empty cache: sha256 + dequantise + save + load + boot
    warm_seconds: list[float]  # cached checkpoint: load + boot, repeated

    def lines(self) -> list[str]:
        warm = statistics.median(self.warm_seconds)
        return [
            f"model                      {self.model}",
            f"import (new process)       {self.import_seconds:6.2f} s",
            f"cold load (empty cache)    {self.cold_seconds:6.2f} s",
            f"warm load (cached), median {warm:6.2f} s  over {len(self.warm_seconds)} runs "
            f"({', '.join(f'{t:.2f}' for t in self.warm_seconds)})",
            f"cold / warm                {self.cold_seconds / warm:6.1f} x",
        ]


def bench_load(name: str, repeats: int = 3) -> LoadTimes:
    """Time the first load of a packaged model into an empty cache, then cached loads."""
    if name not in PACKAGED_MODELS:
        raise InvalidInputError(f"load benchmark needs a packaged model, one of {', '.join(PACKAGED_MODELS)}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "s2e_lens.experiments.bench", "import"], check=True)
    import_s = time.perf_counter() - started

    from s2e_lens.models.loading import load_model

    saved = os.environ.get("S2E_CACHE")
    with tempfile.TemporaryDirectory(prefix="s2e-bench-cache-") as tmp:
        os.environ["S2E_CACHE"] = tmp
        try:
            started = time.perf_counter()
            load_model(name, progress=False)
            cold = time.perf_counter() - started
            warm = []
            for _ in range(repeats):
                started = time.perf_counter()
                load_model(name, progress=False)
                warm.append(time.perf_counter() - started)
        finally:
            if saved is None:
                os.environ.pop("S2E_CACHE", None)
            else:
                os.environ["S2E_CACHE"] = saved
    return LoadTimes(name, import_s, cold, warm)


# ---------------------------------------------------------------------------------- engine

_WORDS = (
    "the model answer question people water city light house time work river music paper "
    "learn build quickly carefully small large green bright history science market garden "
    "explain write describe compare because although however therefore simple clear useful"
).split()


def synthetic_set(n: int, seed: int = 0) -> ContrastiveSet:
    """``n`` positive and ``n`` negative pairs of English-like text, 12-40 word prompts and
    8-36 word responses: realistic lengths for timing, no meaning needed."""
    from s2e_lens.core.contrastive import ContrastiveSet

    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    prompts = [text(12, 40) for _ in range(n)]
    return ContrastiveSet.from_pairs(
        [(p, text(8, 36)) for p in prompts],
        [(p, text(8, 36)) for p in prompts],
        {"source": f"synthetic timing set, n={n}, seed={seed}"},
    )


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


# Shapes of real models, for benchmarks on randomly initialised weights built in-process (no
# download): the engine's cost depends on the shapes, not on the values.
CONFIGS: dict[str, dict[str, Any]] = {
    "llama-3-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_hidden_layers": 32,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
}


@dataclass(frozen=True)
class ModelSpec:
    """What a benchmark runs on: a model name, or a config from :data:`CONFIGS` with random
    weights (``layers`` overrides its depth, for a reduced run), in ``dtype`` on ``device``."""

    name: str = DEFAULT_MODEL
    config: str | None = None
    layers: int | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def args(self) -> list[str]:
        return [self.name, str(self.config), str(self.layers), self.device, self.dtype]

    @classmethod
    def from_args(cls, args: list[str]) -> ModelSpec:
        name, config, layers, device, dtype = args
        return cls(name, None if config == "None" else config, None if layers == "None" else int(layers), device, dtype)

    def load(self) -> LoadedModel:
        import torch

        from s2e_lens.models.loading import load_model

        dtype = getattr(torch, self.dtype)
        if self.config is None:
            return load_model(self.name, device=self.device, dtype=dtype, progress=False)
        model, tokenizer = random_model(self.config, self.layers, dtype, self.device)
        return load_model(model, tokenizer=tokenizer, name=self.label, progress=False)

    @property
    def label(self) -> str:
        if self.config is None:
            return self.name
        depth = f", {self.layers} of {CONFIGS[self.config]['num_hidden_layers']} layers" if self.layers else ""
        return f"random {self.config}{depth}"


def random_model(config: str, layers: int | None, dtype: Any, device: str) -> tuple[Any, Any]:
    """A randomly initialised model of ``config``'s shape, built on ``device`` in ``dtype``, and
    the default packaged model's tokenizer (its ids fit any of these vocabularies)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from s2e_lens.models.gguf import ensure_converted
    from s2e_lens.models.registry import DEFAULT_MODEL, PACKAGED_MODELS

    if config not in CONFIGS:
        raise InvalidInputError(f"unknown benchmark config {config!r}; known: {', '.join(CONFIGS)}")
    settings = dict(CONFIGS[config])
    if layers is not None:
        settings["num_hidden_layers"] = layers
    cfg = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(ensure_converted(PACKAGED_MODELS[DEFAULT_MODEL], progress=False))
    return model.eval(), tokenizer


class _Lines(list[str]):
    """The figures so far; each is also handed to ``emit`` as soon as it is measured."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        super().__init__()
        self.emit = emit

    def append(self, line: str) -> None:
        super().append(line)
        self.emit(line)


BENCH_BUDGETS = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)  # the first that edits heads and neurons is timed


def bench_engine(
    name: str | ModelSpec = DEFAULT_MODEL,
    n: int = 64,
    batch_size: int = 8,
    repeats: int = 3,
    emit: Callable[[str], None] = lambda line: None,
) -> list[str]:
    """The engine's performance figures on one model, measured in one run (``emit`` gets each
    line as soon as it is measured)."""
    import torch

    from s2e_lens.core.plan import compute_plan_from_tensors
    from s2e_lens.core.settings import EditSettings
    from s2e_lens.core.vectors import SteeringVectors
    from s2e_lens.engine.extraction import collect_statistics
    from s2e_lens.engine.hooks import hook_name
    from s2e_lens.engine.interventions import steered
    from s2e_lens.engine.mapper import apply_plan, revert
    from s2e_lens.engine.planning import model_weights
    from s2e_lens.models.export import export_model
    from s2e_lens.models.tokens import encode_pairs, encode_prompt, make_batches, pad_token_id

    spec = name if isinstance(name, ModelSpec) else ModelSpec(name)
    model = spec.load()
    card = model.card
    data = synthetic_set(n)
    tok = model.tokenizer
    device = model.device
    cuda = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, torch threads {torch.get_num_threads()}"
    lines = _Lines(emit)
    lines.append(
        f"model {card.name}: {card.n_layers} layers, {card.n_heads_total} heads, "
        f"{card.n_neurons_total:,} neurons, {card.dtype}; {n}+{n} samples, batch {batch_size}; {where}"
    )

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    # 1. extraction vs a plain forward over the same batches
    pad_id = pad_token_id(tok)
    samples = sorted(encode_pairs(tok, data.positive) + encode_pairs(tok, data.negative), key=lambda s: s.end)
    batches = make_batches(samples, batch_size, pad_id)
    n_tokens = sum(s.end for s in samples)

    def plain_forward() -> None:
        with torch.inference_mode():
            for b in batches:
                model.hf_model(
                    input_ids=b.input_ids.to(device),
                    attention_mask=b.attention_mask.to(device),
                    position_ids=b.position_ids.to(device),
                    use_cache=False,
                )
        sync()

    def extract() -> None:
        collect_statistics(model, data, batch_size=batch_size, progress=False)
        sync()

    def body_forward() -> None:
        with torch.inference_mode():
            for b in batches:
                model.hf_model.base_model(
                    input_ids=b.input_ids.to(device),
                    attention_mask=b.attention_mask.to(device),
                    position_ids=b.position_ids.to(device),
                    use_cache=False,
                )
        sync()

    plain_forward()  # warm-up
    t_plain = _best_of(plain_forward, repeats)
    t_body = _best_of(body_forward, repeats)
    t_extract = _best_of(extract, repeats)
    lines.append(
        f"statistics extraction       {t_extract:7.2f} s  ({n_tokens / t_extract:,.0f} tokens/s, {n_tokens:,} tokens)"
    )
    lines.append(
        f"plain forward, same batches {t_plain:7.2f} s  -> extraction / forward = "
        f"{t_extract / t_plain:.2f} (goal <= 1.1)"
    )
    lines.append(
        f"body-only forward (no LM head, no hooks) {t_body:.2f} s -> extraction / body = "
        f"{t_extract / t_body:.2f} (the hooks' own cost)"
    )

    # 2. naive: batch size 1, full activation cache, then slice (the reference's way)
    naive_n = min(n, 16)
    naive_samples = encode_pairs(tok, data.positive[:naive_n]) + encode_pairs(tok, data.negative[:naive_n])

    from s2e_lens.engine.extraction import STATISTICS

    wanted = {hook_name(point, layer) for point in STATISTICS for layer in range(card.n_layers)}

    def naive() -> None:  # full activations of the four hooked kinds at every position
        with torch.inference_mode():
            for s in naive_samples:
                ids = torch.tensor([s.ids], device=device)
                _, cache = model.bridge.run_with_cache(ids, names_filter=lambda k: k in wanted)
                for key in wanted:
                    cache[key][0, s.start - 1 : s.end - 1].mean(0)
        sync()

    t_naive = _best_of(naive, 1) * (2 * n) / len(naive_samples)
    lines.append(
        f"naive batch-1 full cache   {t_naive:7.2f} s  (timed on {len(naive_samples)} samples, "
        f"scaled) -> ours is {t_naive / t_extract:.1f}x faster (goal >= 10x)"
    )

    # 3. edit computation for every head and neuron
    stats = collect_statistics(model, data, batch_size=batch_size, progress=False)
    W_O, W_out = model_weights(model)
    v_attn, v_mlp = stats.difference.attn_out, stats.difference.mlp_out
    settings = EditSettings(rho_attn=0.3, rho_mlp=0.6, alpha=0.8)
    for rho in BENCH_BUDGETS:  # random weights scale lambda differently: budgets that edit something
        trial = EditSettings(rho_attn=rho, rho_mlp=2 * rho, alpha=0.8)
        found = compute_plan_from_tensors(W_O, W_out, v_attn, v_mlp, stats.mu_z, stats.mu_post, trial)
        if found.n_edited["heads"] and found.n_edited["neurons"]:
            settings = trial
            break

    def plan_only() -> EditPlan:
        plan = compute_plan_from_tensors(W_O, W_out, v_attn, v_mlp, stats.mu_z, stats.mu_post, settings)
        sync()
        return plan

    t_plan = _best_of(plan_only, repeats)
    t_weights = _best_of(lambda: model_weights(model), repeats)
    lines.append(
        f"edit computation           {t_plan * 1e3:7.1f} ms for {card.n_heads_total} heads and "
        f"{card.n_neurons_total:,} neurons (+{t_weights * 1e3:.0f} ms reading W_O, W_out) (goal < 1 s); "
        f"rho_attn={settings.rho_attn:g}, rho_mlp={settings.rho_mlp:g}"
    )

    # 4. peak memory with N and 4N samples: on CUDA the allocator's peak, on the CPU the peak
    # RSS of a fresh process each
    if cuda:
        peaks = {k: _peak_cuda(model, k, batch_size) for k in (n, 4 * n)}
        what = "peak GPU memory allocated during extraction"
    else:
        peaks = {k: _peak_rss(spec, k, batch_size) for k in (n, 4 * n)}
        what = "peak RSS during extraction (sampled every 2 ms, fresh process each)"
    base = {k: v["before_mb"] for k, v in peaks.items()}
    top = {k: v["peak_mb"] for k, v in peaks.items()}
    lines.append(
        f"{what}: N={n}: {top[n]:.0f} MB, 4N={4 * n}: {top[4 * n]:.0f} MB -> ratio {top[4 * n] / top[n]:.3f} "
        f"(goal <= 1.05); growth over the memory before extraction: {top[n] - base[n]:.0f} MB vs "
        f"{top[4 * n] - base[4 * n]:.0f} MB"
    )

    # 5. inference: edited vs unedited weights (no hooks) vs activation steering (hooks)
    encoded = [encode_prompt(tok, p.prompt) for p in data.positive]
    ids = torch.tensor([e[:48] for e in encoded if len(e) >= 48][:8] or [[1] * 48], device=device)

    def forward() -> None:
        with torch.inference_mode():
            model.hf_model(input_ids=ids, use_cache=False)
        sync()

    plan = plan_only()
    plan.model = stats.model
    vectors = SteeringVectors.from_statistics(stats)
    forward()
    t_base, t_edit, t_steer = [], [], []
    for _ in range(max(9, 3 * repeats)):  # interleaved, to share any drift of the machine
        t_base.append(_best_of(forward, 2))
        apply_plan(model, plan)
        t_edit.append(_best_of(forward, 2))
        revert(model)
        with steered(model, vectors, 4.0):
            t_steer.append(_best_of(forward, 2))
    b, e, s = statistics.median(t_base), statistics.median(t_edit), statistics.median(t_steer)
    lines.append(
        f"inference, batch {tuple(ids.shape)}: unedited {b * 1e3:.1f} ms, edited {e * 1e3:.1f} ms, "
        f"steered (hooks) {s * 1e3:.1f} ms -> edited / unedited = {e / b:.3f} (goal 1.00 +- 0.03), "
        f"steered / unedited = {s / b:.3f}"
    )

    # 6. apply + revert, and export of the edited model
    def apply_revert() -> None:
        apply_plan(model, plan)
        revert(model)
        sync()

    t_apply = _best_of(apply_revert, repeats)
    with tempfile.TemporaryDirectory() as scratch:
        applied = apply_plan(model, plan)
        started = time.perf_counter()
        export_model(model, Path(scratch) / "edited")
        t_export = time.perf_counter() - started
        applied.remove()
    lines.append(
        f"apply + revert {t_apply * 1e3:.1f} ms ({plan.n_edited['heads']} heads, {plan.n_edited['neurons']:,} "
        f"neurons); export of the edited model {t_export:.1f} s"
    )
    return list(lines)


def _peak_cuda(model: LoadedModel, n: int, batch_size: int) -> dict[str, float]:
    import torch

    from s2e_lens.engine.extraction import collect_statistics

    collect_statistics(model, synthetic_set(2), batch_size=batch_size, progress=False)  # warm-up allocations
    torch.cuda.synchronize(model.device)
    torch.cuda.reset_peak_memory_stats(model.device)
    before = torch.cuda.memory_allocated(model.device) / 2**20
    collect_statistics(model, synthetic_set(n), batch_size=batch_size, progress=False)
    torch.cuda.synchronize(model.device)
    return {"before_mb": before, "peak_mb": torch.cuda.max_memory_allocated(model.device) / 2**20}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss(spec: ModelSpec, n: int, batch_size: int) -> dict[str, float]:
    """Resident memory before and at the peak of one statistics pass over ``n`` + ``n``
    samples (run in a fresh process by :func:`_peak_rss`, so earlier work does not count)."""
    import threading

    from s2e_lens.engine.extraction import collect_statistics

    model = spec.load()
    data = synthetic_set(n)
    collect_statistics(model, synthetic_set(2), batch_size=batch_size, progress=False)  # warm-up allocations
    before = _rss_mb()
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    collect_statistics(model, data, batch_size=batch_size, progress=False)
    done.set()
    thread.join()
    return {"before_mb": before, "peak_mb": peak[0]}


def _peak_rss(spec: ModelSpec, n: int, batch_size: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "s2e_lens.experiments.bench", "peak-rss", *spec.args(), str(n), str(batch_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_generate(name: str, batch_size: int = 48, max_new_tokens: int = 32, n: int = 96) -> list[str]:
    """Tokens/s of s2e_lens generation (bridge-wrapped model, hooks available) against
    transformers' own ``generate`` on an unwrapped copy of the same checkpoint, same prompts,
    same batch size, greedy, a fixed number of new tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from s2e_lens.engine.generation import GenerationSettings, generate
    from s2e_lens.models.loading import load_model
    from s2e_lens.models.tokens import encode_prompt, pad, pad_token_id

    model = load_model(name, progress=False)
    if model.card.checkpoint is None:
        raise InvalidInputError("the generation benchmark needs a model with a local checkpoint")
    plain = AutoModelForCausalLM.from_pretrained(model.card.checkpoint, attn_implementation="eager").eval()
    prompts = [p.prompt for p in synthetic_set(n).positive]
    tok = model.tokenizer
    pad_id = pad_token_id(tok)

    def ours() -> int:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
        return sum(g.n_tokens for g in generate(model, prompts, settings))

    def theirs() -> int:
        total = 0
        for lo in range(0, len(prompts), batch_size):
            batch = pad([encode_prompt(tok, p) for p in prompts[lo : lo + batch_size]], pad_id, "left")
            width = batch.input_ids.shape[1]
            with torch.inference_mode():
                out = plain.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                )
            total += int((out[:, width:] != pad_id).sum())
        return total

    lines = [f"model {model.card.name}: {n} prompts, batch {batch_size}, up to {max_new_tokens} new tokens, greedy"]
    results = {}
    for label, fn in (("s2e_lens generate (bridge)", ours), ("transformers generate (plain)", theirs)):
        started = time.perf_counter()
        tokens = fn()
        seconds = time.perf_counter() - started
        results[label] = tokens / seconds
        lines.append(f"{label:32s} {tokens:6d} tokens in {seconds:6.1f} s = {tokens / seconds:6.1f} tokens/s")
    a, b = results.values()
    lines.append(f"ratio s2e_lens / transformers = {a / b:.2f}")
    return lines


if __name__ == "__main__":  # the helpers the benchmarks run in a fresh process
    if sys.argv[1:] == ["import"]:
        import s2e_lens.models.loading  # noqa: F401  (what the import time measures)
    elif sys.argv[1:2] == ["peak-rss"]:
        spec = ModelSpec.from_args(sys.argv[2:7])
        print(json.dumps(peak_rss(spec, int(sys.argv[7]), int(sys.argv[8]))))
    else:
        raise SystemExit(
            "usage: python -m s2e_lens.experiments.bench import | peak-rss NAME CONFIG LAYERS DEVICE DTYPE N BATCH_SIZE"
        )
