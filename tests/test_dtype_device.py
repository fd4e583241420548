"""Any dtype, any placement, the user's own model (issue 13), on the CPU.

The whole path (statistics, plan, DataFrame, summary, figures, apply, generate, revert, export
and reload, steering) in bfloat16 and float16; the cross-dtype identity; model objects and
bridges; device_map; vector arithmetic and the GGUF control vector; "auto" batch sizes; and
bad input. Expected values come from independent computations (float32 runs, hand-made
tensors, the gguf package's own reader), never from the code under test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import safety_set, tiny_set
from tiny import FAMILIES
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer

import s2e_lens as s2e
from s2e_lens.core.control_vector import load_control_vector, save_control_vector
from s2e_lens.core.vectors import SteeringVectors, VectorMismatchError
from s2e_lens.engine import extraction
from s2e_lens.engine import scoring as s2e_scoring
from s2e_lens.engine.batching import OutOfMemoryError
from s2e_lens.engine.generation import GenerationSettings, generate
from s2e_lens.engine.mapper import apply_plan
from s2e_lens.errors import InvalidInputError
from s2e_lens.experiments import health
from s2e_lens.io.files import OutputError
from s2e_lens.models.identity import IdentityMismatchError
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.reporting import figures

LOW = [torch.bfloat16, torch.float16]
GREEDY = GenerationSettings(max_new_tokens=4)


def weights(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    return model.bridge.W_O.detach().clone(), model.bridge.W_out.detach().clone()


def whole_path(model: LoadedModel, data: s2e.ContrastiveSet, settings: s2e.EditSettings, tmp: Path) -> None:
    """Statistics -> plan -> tables and figures -> apply/generate/revert -> export/reload -> steering."""
    dtype = model.hf_model.dtype
    stats = s2e.collect_statistics(model, data, progress=False)
    assert stats.positive.z.dtype == torch.float32 and stats.positive.z.device.type == "cpu"
    plan = s2e.compute_plan(model, stats, settings)
    assert plan.head_lambda.dtype == torch.float32 and sum(plan.n_edited.values()) > 0
    assert len(plan.to_dataframe()) > 0 and len(plan.summary()) == model.card.n_layers
    for fig in (figures.lambda_heatmap(plan), figures.neuron_topk(plan), figures.edit_mass(plan)):
        assert len(fig.data) > 0
    vectors = SteeringVectors.from_statistics(stats)
    before = weights(model)
    handle = apply_plan(model, plan)
    assert model.bridge.W_O.dtype == dtype
    assert not all(torch.equal(a, b) for a, b in zip(weights(model), before, strict=True))
    edited_text = generate(model, ["Hello"], GREEDY)[0].text
    assert isinstance(edited_text, str)
    out = s2e.export_model(model, tmp / "export")
    edited = weights(model)
    handle.remove()
    assert all(torch.equal(a, b) for a, b in zip(weights(model), before, strict=True))  # bit for bit
    reloaded = s2e.load_model(out, dtype=dtype, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights(reloaded), edited, strict=True))
    assert reloaded.card.fingerprint == model.card.fingerprint  # export keeps the identity
    with s2e.steered(model, vectors, 1.0):
        assert isinstance(generate(model, ["Hello"], GREEDY)[0].text, str)
    plan.save(tmp / "plan")
    assert torch.equal(s2e.EditPlan.load(tmp / "plan").head_lambda, plan.head_lambda)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_whole_path_on_the_default_model(dtype: torch.dtype, tmp_path: Path) -> None:
    model = s2e.load_model(dtype=dtype, progress=False)
    assert model.card.dtype == str(dtype).removeprefix("torch.")
    assert health.preflight(model).ok  # what every run checks first: cached decoding, known answers
    whole_path(model, safety_set(), s2e.EditSettings(rho_attn=0.15), tmp_path)


def test_a_decoding_tie_is_judged_at_the_dtypes_rounding() -> None:
    """Cached and uncached decoding may part where the top two logits tie within the dtype's
    rounding (bfloat16: a few 1/128ths of the logits' scale), never by a real margin."""
    parted = health.DecodingComparison("p", [1], [2], first_difference=0, margin=0.125, scale=25.0)
    bf16, f32 = (4 * torch.finfo(d).eps for d in (torch.bfloat16, torch.float32))
    assert parted.agrees(1e-3, bf16)  # 0.125 <= 4 * 2**-7 * 25 = 0.78
    assert not parted.agrees(1e-3, f32)  # float32 rounds at 1e-5 of that scale
    broken = health.DecodingComparison("p", [1], [2], first_difference=1, margin=15.1, scale=25.0)
    assert not broken.agrees(1e-3, bf16)  # the broken stack's margin (issue 10)
    assert health.DecodingComparison("p", [1], [1], None, 0.0).agrees(0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_whole_path_on_tiny_models_in_bfloat16(family: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = s2e.load_model(tiny_dirs[family], dtype=torch.bfloat16, progress=False)
    whole_path(model, tiny_set(4), s2e.EditSettings(rho_attn=0.5, rho_mlp=0.5), tmp_path)


@pytest.mark.slow
def test_bfloat16_statistics_are_close_to_float32(default_model: LoadedModel, default_stats) -> None:
    model = s2e.load_model(dtype=torch.bfloat16, progress=False)
    low = s2e.collect_statistics(model, safety_set(), batch_size=4, progress=False)
    for side in ("positive", "negative"):
        for name in ("attn_out", "mlp_out", "z", "post"):
            ref, got = getattr(getattr(default_stats, side), name), getattr(getattr(low, side), name)
            rel = float((got - ref).norm() / ref.norm())
            # the block outputs (the steering vectors' means) within 1e-2; the component inputs
            # carry bfloat16's rounding through 30 layers of the forward pass itself (1.4e-2 measured)
            assert rel < (1e-2 if name in ("attn_out", "mlp_out") else 2e-2), (side, name, rel)


@pytest.mark.slow
def test_a_float32_plan_on_bfloat16_weights_is_one_rounding(default_model: LoadedModel, default_stats) -> None:
    plan = s2e.compute_plan(default_model, default_stats, s2e.EditSettings(rho_attn=0.15, rho_mlp=0.3))
    low = s2e.load_model(dtype=torch.bfloat16, progress=False)
    assert low.card.fingerprint == default_model.card.fingerprint  # same weights, same identity
    W_O, W_out = weights(low)
    with s2e.edited(low, plan):
        # the bfloat16 cast of the float32-edited weights: (W + delta) in float32, rounded once
        assert torch.equal(low.bridge.W_O.detach(), (W_O.float() + plan.delta_W_O()).to(torch.bfloat16))
        assert torch.equal(low.bridge.W_out.detach(), (W_out.float() + plan.delta_W_out()).to(torch.bfloat16))
    assert torch.equal(low.bridge.W_O.detach(), W_O) and torch.equal(low.bridge.W_out.detach(), W_out)


def test_identity_across_dtypes(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    import tiny

    f32 = s2e.load_model(tiny_dirs["llama"], progress=False)
    stats = s2e.collect_statistics(f32, tiny_set(3), progress=False)
    plan = s2e.compute_plan(f32, stats, s2e.EditSettings(rho_attn=0.5))
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        other = s2e.load_model(tiny_dirs["llama"], dtype=dtype, progress=False)
        apply_plan(other, plan).remove()  # accepted: the same weights in another dtype
    other_weights = s2e.load_model(
        tiny.build("llama", tmp_path / "seed1", seed=1), dtype=torch.bfloat16, progress=False
    )
    before = weights(other_weights)
    with pytest.raises(IdentityMismatchError, match="different weights"):
        apply_plan(other_weights, plan)
    assert all(torch.equal(a, b) for a, b in zip(weights(other_weights), before, strict=True))


def test_model_objects_and_bridges_give_the_same_plan(tiny_dirs: dict[str, Path]) -> None:
    directory = tiny_dirs["llama"]
    by_name = s2e.load_model(directory, progress=False)
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(directory)
    by_object = s2e.load_model(hf, tokenizer=tok, progress=False)
    bridge = TransformerBridge.boot_transformers(
        str(directory), hf_model=AutoModelForCausalLM.from_pretrained(directory)
    )
    by_bridge = s2e.load_model(bridge, tokenizer=tok, progress=False)
    assert by_bridge.bridge is bridge
    plans = []
    for model in (by_name, by_object, by_bridge):
        assert model.card.fingerprint == by_name.card.fingerprint
        stats = s2e.collect_statistics(model, tiny_set(3), progress=False)
        plans.append(s2e.compute_plan(model, stats, s2e.EditSettings(rho_attn=0.5, rho_mlp=0.5)))
    for other in plans[1:]:
        for name in ("head_lambda", "head_k", "neuron_lambda", "v_hat_attn", "v_hat_mlp"):
            torch.testing.assert_close(getattr(other, name), getattr(plans[0], name), rtol=1e-5, atol=1e-6)
    apply_plan(by_bridge, plans[0]).remove()  # a plan made from the name applies to the bridge


def test_edited_reverts_bit_for_bit_when_the_block_raises(tiny_dirs: dict[str, Path]) -> None:
    model = s2e.load_model(tiny_dirs["qwen2"], dtype=torch.bfloat16, progress=False)
    plan = s2e.compute_plan(model, s2e.collect_statistics(model, tiny_set(3), progress=False), s2e.EditSettings(0.5))
    before = weights(model)
    with pytest.raises(RuntimeError, match="inside"), s2e.edited(model, plan):
        assert not torch.equal(model.bridge.W_O.detach(), before[0])
        raise RuntimeError("inside the block")
    assert all(torch.equal(a, b) for a, b in zip(weights(model), before, strict=True))
    assert model.applied_plans == []


def test_device_map_passes_through(tiny_dirs: dict[str, Path]) -> None:
    directory = tiny_dirs["llama"]
    whole = s2e.load_model(directory, device_map={"": "cpu"}, progress=False)
    n_layers = whole.card.n_layers
    per_layer = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    per_layer |= {f"model.layers.{i}": "cpu" for i in range(n_layers)}
    split = s2e.load_model(directory, device_map=per_layer, progress=False)
    assert split.card.device_map == per_layer and whole.card.device_map == {"": "cpu"}
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.inference_mode():
        assert torch.equal(whole.hf_model(input_ids=ids).logits, split.hf_model(input_ids=ids).logits)


# ---------------------------------------------------------------- vectors that travel


def hand_vectors(seed: int, model: dict | None = None) -> SteeringVectors:
    g = torch.Generator().manual_seed(seed)
    identity = model or {"name": "m", "fingerprint": "abc", "model_type": "llama", "n_layers": 3, "d_model": 4}
    return SteeringVectors(torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), identity)


def test_vector_arithmetic_against_hand_computed_tensors() -> None:
    a, b = hand_vectors(0), hand_vectors(1)
    c = 2 * a - b / 4 + (-a)
    assert torch.allclose(c.v_attn, 2 * a.v_attn - b.v_attn / 4 - a.v_attn)
    assert torch.allclose(c.v_mlp, 2 * a.v_mlp - b.v_mlp / 4 - a.v_mlp)
    assert torch.equal((a * 3).v_attn, 3 * a.v_attn) and c.model == a.model
    assert torch.equal(a.to_residual(), a.v_attn + a.v_mlp)
    assert all(torch.equal(v, a.v_attn[i] + a.v_mlp[i]) for i, v in a.layer_activations().items())
    other = hand_vectors(2, {"name": "n", "fingerprint": "xyz", "n_layers": 3, "d_model": 4})
    with pytest.raises(VectorMismatchError, match="different models"):
        a + other
    with pytest.raises(VectorMismatchError):
        a * float("nan")


def test_control_vector_gguf_read_back_by_the_gguf_reader(tmp_path: Path) -> None:
    import gguf

    vectors = hand_vectors(3)
    path = save_control_vector(vectors, tmp_path / "refusal.gguf", scale=0.5)
    reader = gguf.GGUFReader(path)  # the format's own reader, not ours
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    by_name = {t.name: torch.tensor(t.data.copy()) for t in reader.tensors}
    assert sorted(by_name) == ["direction.1", "direction.2"]  # llama.cpp has no slot for block 0
    for layer in (1, 2):
        assert torch.equal(by_name[f"direction.{layer}"], 0.5 * (vectors.v_attn[layer] + vectors.v_mlp[layer]))
    directions, hint = load_control_vector(path)
    back = SteeringVectors.from_residual(directions, vectors.model)
    assert hint == "llama" and torch.equal(back.to_residual()[1:], 0.5 * vectors.to_residual()[1:])
    with pytest.raises(OutputError, match="exists"):  # an existing file is not replaced silently
        save_control_vector(vectors, path)


# ---------------------------------------------------------------- batch sizes


def test_auto_batch_size_halves_on_out_of_memory(tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model = s2e.load_model(tiny_dirs["llama"], progress=False)
    data = tiny_set(6)
    fixed = s2e.collect_statistics(model, data, batch_size=2, progress=False)
    seen: list[int] = []
    stream = extraction._stream

    def tight(model: LoadedModel, batches: list, on_batch: object, **options: Any) -> dict[str, torch.Tensor]:
        seen.append(max(b.input_ids.shape[0] for b in batches))
        if seen[-1] > 2:
            raise torch.OutOfMemoryError("pretend: too big")
        return stream(model, batches, on_batch, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(extraction, "_stream", tight)
    auto = s2e.collect_statistics(model, data, batch_size="auto", progress=False)
    assert seen[:3] == [6, 3, 1]  # 6 samples per side: 6, then 3, then 1 fits
    torch.testing.assert_close(auto.positive.z, fixed.positive.z, rtol=1e-5, atol=1e-6)


def test_auto_batches_for_generation_and_scoring_halve_and_match(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generation and scoring with batch_size="auto": a batch too big is retried in halves, the
    smaller size is kept, and the results equal one-at-a-time runs (padding changes nothing)."""
    model = s2e.load_model(tiny_dirs["llama"], progress=False)
    prompts = [f"Tell me about item {i} " * (1 + i % 3) for i in range(5)]
    pairs = [(model.tokenizer(p)["input_ids"], model.tokenizer(" and so on")["input_ids"]) for p in prompts]
    one_by_one = generate(model, prompts, GenerationSettings(max_new_tokens=4, batch_size=1))
    scored_alone = s2e_scoring.score_continuations(model, pairs, batch_size=1)
    sizes: list[int] = []
    hf = model.hf_model
    original_generate, original_forward = hf.generate, hf.forward

    def tight(original):  # type: ignore[no-untyped-def]
        def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            sizes.append(kwargs["input_ids"].shape[0])
            if sizes[-1] > 2:
                raise torch.OutOfMemoryError("pretend: too big")
            return original(*args, **kwargs)

        return run

    monkeypatch.setattr(hf, "generate", tight(original_generate))
    auto = generate(model, prompts, GenerationSettings(max_new_tokens=4, batch_size="auto"))
    assert sizes == [5, 2, 2, 1]  # 5 fails, halves to 2, keeps 2 for the rest
    assert [g.token_ids for g in auto] == [g.token_ids for g in one_by_one]
    sizes.clear()
    monkeypatch.setattr(hf, "forward", tight(original_forward))
    scored = s2e_scoring.score_continuations(model, pairs, batch_size="auto")
    assert sizes == [5, 2, 2, 1]
    for a, b in zip(scored, scored_alone, strict=True):
        assert a.n_tokens == b.n_tokens and a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_a_fixed_batch_size_that_does_not_fit_names_the_fix(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = s2e.load_model(tiny_dirs["llama"], progress=False)

    def oom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise torch.OutOfMemoryError("pretend")

    monkeypatch.setattr(model.hf_model, "generate", oom)
    with pytest.raises(OutOfMemoryError, match="smaller batch size or 'auto'"):
        generate(model, ["Hi"], GenerationSettings(max_new_tokens=2, batch_size=4))
    with pytest.raises(OutOfMemoryError, match="even one sample at a time"):
        generate(model, ["Hi"], GenerationSettings(max_new_tokens=2, batch_size="auto"))


# ---------------------------------------------------------------- bad input


def test_bad_input_is_refused_and_the_model_left_alone(tiny_dirs: dict[str, Path]) -> None:
    directory = tiny_dirs["llama"]
    with pytest.raises(InvalidInputError, match="dtype torch.int8 is not supported"):
        s2e.load_model(directory, dtype=torch.int8, progress=False)
    with pytest.raises(InvalidInputError, match="not both"):
        s2e.load_model(directory, device="cpu", device_map="auto", progress=False)
    hf = AutoModelForCausalLM.from_pretrained(directory)
    with pytest.raises(InvalidInputError, match="needs its tokenizer"):
        s2e.load_model(hf, progress=False)
    processed = TransformerBridge.boot_transformers(str(directory), hf_model=hf)
    processed.process_weights()
    with pytest.raises(InvalidInputError, match="raw mode"):
        s2e.load_model(processed, progress=False)
    with torch.device("meta"):
        ghost = AutoModelForCausalLM.from_config(hf.config)
    with pytest.raises(InvalidInputError, match="meta device"):
        s2e.load_model(ghost, tokenizer=AutoTokenizer.from_pretrained(directory), progress=False)
    llama = s2e.load_model(directory, progress=False)
    qwen = s2e.load_model(tiny_dirs["qwen2"], progress=False)
    plan = s2e.compute_plan(qwen, s2e.collect_statistics(qwen, tiny_set(3), progress=False), s2e.EditSettings(0.5))
    before = weights(llama)
    with pytest.raises(IdentityMismatchError):
        apply_plan(llama, plan)
    assert all(torch.equal(a, b) for a, b in zip(weights(llama), before, strict=True))


def test_the_llama_3_8b_benchmark_shape() -> None:
    from transformers import AutoConfig

    from s2e_lens.experiments.bench import CONFIGS, ModelSpec

    settings = dict(CONFIGS["llama-3-8b"])
    cfg = AutoConfig.for_model(settings.pop("model_type"), **settings)
    heads = cfg.num_hidden_layers * cfg.num_attention_heads
    neurons = cfg.num_hidden_layers * cfg.intermediate_size
    assert (cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads) == (4096, 128)
    assert (heads, neurons) == (1_024, 458_752)  # the "all 1,024 heads and 458,752 neurons"
    spec = ModelSpec(config="llama-3-8b", layers=2, dtype="bfloat16")
    assert ModelSpec.from_args(spec.args()) == spec and spec.label == "random llama-3-8b, 2 of 32 layers"


# ---------------------------------------------------------------- the same on a GPU (skipped without one)


@pytest.mark.cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_whole_path_on_tiny_models_on_cuda(family: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = s2e.load_model(tiny_dirs[family], device="cuda", dtype=torch.bfloat16, progress=False)
    assert model.device.type == "cuda"
    whole_path(model, tiny_set(4), s2e.EditSettings(rho_attn=0.5, rho_mlp=0.5), tmp_path)


@pytest.mark.cuda
@pytest.mark.slow
def test_whole_path_on_the_default_model_on_cuda(tmp_path: Path) -> None:
    model = s2e.load_model(device="cuda", dtype=torch.bfloat16, progress=False)
    whole_path(model, safety_set(), s2e.EditSettings(rho_attn=0.15), tmp_path)


@pytest.mark.cuda
def test_a_plan_made_on_cpu_applies_on_cuda_with_one_rounding(tiny_dirs: dict[str, Path]) -> None:
    cpu = s2e.load_model(tiny_dirs["llama"], progress=False)
    plan = s2e.compute_plan(cpu, s2e.collect_statistics(cpu, tiny_set(3), progress=False), s2e.EditSettings(0.5))
    gpu = s2e.load_model(tiny_dirs["llama"], device="cuda", dtype=torch.bfloat16, progress=False)
    W_O = gpu.bridge.W_O.detach().clone()
    with s2e.edited(gpu, plan):
        expected = (W_O.float() + plan.delta_W_O().to("cuda")).to(torch.bfloat16)
        assert torch.equal(gpu.bridge.W_O.detach(), expected)
    assert torch.equal(gpu.bridge.W_O.detach(), W_O)
