"""Edits as PEFT LoRA adapters: the factors equal the plan's dense deltas, and transformers +
PEFT with the exported adapter compute what the folded edit computes, on every tiny family and
on the default model; merge_and_unload() gives the exported checkpoint's weights; a process
that never imports s2e_lens loads the adapter with plain PeftModel.from_pretrained."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import tiny
import torch
from conftest import tiny_set
from transformers import AutoModelForCausalLM

from s2e_lens.core.low_rank import low_rank_updates
from s2e_lens.core.settings import EditSettings
from s2e_lens.engine import adapters
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.mapper import apply_plan, revert
from s2e_lens.engine.planning import compute_plan
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.export import export_model
from s2e_lens.models.loading import load_model

peft = pytest.importorskip("peft")

SETTINGS = EditSettings(rho_attn=0.2, rho_mlp=0.05, alpha=0.5)
IDS = torch.tensor([[5, 17, 33, 60, 71, 90, 12, 8], [9, 9, 40, 41, 42, 100, 3, 77]])


def _plan(model, settings=SETTINGS, seed: int = 0):
    return compute_plan(model, collect_statistics(model, tiny_set(5, seed=seed), progress=False), settings)


def _logits(hf, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return hf(input_ids=ids).logits


def _peft_logits(base_dir: str | Path, adapter_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    return _logits(model, ids)


def _dense(plan, card) -> dict[str, torch.Tensor]:
    """The plan's deltas in Linear orientation ([d_model, inputs]), computed from the plan's
    own dense tensors (not from the factors)."""
    heads = plan.delta_W_O()  # [L, H, d_head, d_model]
    out = {}
    for layer in range(card.n_layers):
        out[f"attn{layer}"] = heads[layer].reshape(-1, card.d_model).T
        out[f"mlp{layer}"] = plan.delta_W_out()[layer].T
    return out


@pytest.mark.parametrize("vectors", ["layer", "component"])
def test_the_factors_sum_to_the_dense_deltas(tiny_dirs: dict[str, Path], vectors: str) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    plan = _plan(model, replace(SETTINGS, vectors=vectors))
    updates = low_rank_updates([plan])
    dense = _dense(plan, model.card)
    assert updates, "the test plan must edit something"
    for u in updates:
        torch.testing.assert_close(u.dense(), dense[f"{u.kind}{u.layer}"], rtol=1e-5, atol=1e-7)
        if vectors == "layer":
            assert u.rank == 1  # the paper's rule: one write direction per projection and layer
        else:
            edited = plan.edited_heads[u.layer] if u.kind == "attn" else plan.edited_neurons[u.layer]
            assert 1 <= u.rank <= int(edited.sum())
    untouched = {f"{u.kind}{u.layer}" for u in updates} ^ set(dense)
    assert all(float(dense[k].abs().max()) == 0.0 for k in untouched)


def test_composed_plans_are_one_update_per_projection(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    first, second = _plan(model), _plan(model, replace(SETTINGS, rho_attn=0.1), seed=1)
    both = low_rank_updates([first, second])
    one, two = _dense(first, model.card), _dense(second, model.card)
    total = {k: one[k] + two[k] for k in one}
    for u in both:
        torch.testing.assert_close(u.dense(), total[f"{u.kind}{u.layer}"], rtol=1e-5, atol=1e-7)
    assert len({(u.kind, u.layer) for u in both}) == len(both)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_peft_with_the_adapter_computes_the_folded_edit(
    tiny_dirs: dict[str, Path], tmp_path: Path, family: str
) -> None:
    model = load_model(str(tiny_dirs[family]), progress=False)
    plan = _plan(model)
    path = adapters.export_adapter(model, [plan], tmp_path / "adapter")
    config = json.loads((path / adapters.ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and set(config["rank_pattern"].values()) == {1}
    with_adapter = _peft_logits(tiny_dirs[family], path, IDS)
    applied = apply_plan(model, plan)
    folded = _logits(model.hf_model, IDS)
    # the truth: the adapter merged in float64. Both float32 paths round differently (the
    # folded weight once, the adapter's two products), and a random tiny model's norms
    # amplify it: each must be as close to the truth as the other, and the two within 1e-5 of
    # the logits' scale (absolute 1e-5 on the default model, below)
    base64 = AutoModelForCausalLM.from_pretrained(tiny_dirs[family], attn_implementation="eager").double()
    truth = _logits(peft.PeftModel.from_pretrained(base64, path).double().merge_and_unload().eval(), IDS)
    adapter_error = float((with_adapter.double() - truth.double()).abs().max())
    folded_error = float((folded.double() - truth.double()).abs().max())
    assert adapter_error <= 2 * folded_error + 1e-6, (adapter_error, folded_error)
    assert float((with_adapter - folded).abs().max()) <= 1e-5 * max(1.0, float(truth.abs().max()))
    # merged into the weights, the adapter is the exported checkpoint
    export_model(model, tmp_path / "checkpoint")
    revert(model, applied)
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs[family], dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, path).merge_and_unload().state_dict()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint", dtype=torch.float32).state_dict()
    assert merged.keys() == exported.keys()
    for key in merged:
        torch.testing.assert_close(merged[key], exported[key], rtol=1e-6, atol=1e-6, msg=key)


def test_a_process_without_s2e_lens_loads_the_adapter(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = load_model(str(tiny_dirs["qwen2"]), progress=False)
    plan = _plan(model, replace(SETTINGS, vectors="component"))
    path = adapters.export_adapter(model, [plan], tmp_path / "adapter")
    code = (
        "import sys, json, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "from peft import PeftModel\n"
        "base = AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation='eager')\n"
        "m = PeftModel.from_pretrained(base, sys.argv[2]).eval()\n"
        f"ids = torch.tensor({IDS.tolist()})\n"
        "with torch.inference_mode(): print(json.dumps(m(input_ids=ids).logits.float().tolist()))\n"
        "assert not any(k.startswith('s2e_lens') for k in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny_dirs["qwen2"]), str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outside = torch.tensor(json.loads(done.stdout))
    apply_plan(model, plan)
    assert float((outside - _logits(model.hf_model, IDS)).abs().max()) <= 1e-5


def test_composed_plans_export_as_one_adapter(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    first, second = _plan(model), _plan(model, replace(SETTINGS, rho_attn=0.1), seed=1)
    path = adapters.export_adapter(model, [first, second], tmp_path / "adapter")
    with_adapter = _peft_logits(tiny_dirs["llama"], path, IDS)
    apply_plan(model, first)
    apply_plan(model, second, on_conflict="ignore")
    assert float((with_adapter - _logits(model.hf_model, IDS)).abs().max()) <= 1e-5


def test_an_edited_model_or_an_empty_plan_is_refused(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    plan = _plan(model)
    empty = _plan(model, EditSettings(rho_attn=0.0, rho_mlp=0.0))
    with pytest.raises(InvalidInputError, match="nothing to export"):
        adapters.export_adapter(model, [empty], tmp_path / "a")
    apply_plan(model, plan)
    with pytest.raises(InvalidInputError, match="unedited model"):
        adapters.export_adapter(model, [plan], tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_the_default_model_adapter_matches_the_folded_edit(default_model, tmp_path: Path) -> None:
    """On smollm2 (logits up to about 30) float32 itself is the floor: the unedited model in
    float32 differs from float64 by about 8e-5. The adapter must be as close to the float64
    truth as the folded edit, and the two within that floor (or 1e-5, whichever is larger)."""
    from conftest import safety_set

    plan = compute_plan(default_model, collect_statistics(default_model, safety_set(), progress=False))
    path = adapters.export_adapter(default_model, [plan], tmp_path / "adapter")
    ids = default_model.tokenizer(
        ["How do I pick a lock?", "The capital of France is"], return_tensors="pt", padding=True
    )
    ids = ids["input_ids"]
    checkpoint = default_model.card.checkpoint
    with_adapter = _peft_logits(checkpoint, path, ids).double()
    base64 = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").double().eval()
    floor = float((_logits(default_model.hf_model, ids).double() - base64(input_ids=ids).logits).abs().max())
    truth = _logits(peft.PeftModel.from_pretrained(base64, path).double().merge_and_unload().eval(), ids).double()
    applied = apply_plan(default_model, plan)
    try:
        folded = _logits(default_model.hf_model, ids).double()
    finally:
        revert(default_model, applied)
    adapter_error, folded_error = float((with_adapter - truth).abs().max()), float((folded - truth).abs().max())
    assert adapter_error <= 2 * folded_error + 1e-6, (adapter_error, folded_error)
    assert float((with_adapter - folded).abs().max()) <= max(1e-5, floor), floor


@pytest.mark.parametrize("fmt", ["peft", "checkpoint"])
def test_s2e_export_writes_the_format_and_a_model_card(tiny_dirs: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    from typer.testing import CliRunner

    from s2e_lens.cli import app

    model = load_model(str(tiny_dirs["llama"]), progress=False)
    plan = _plan(model)
    plan.save(tmp_path / "plan")
    out = tmp_path / "out"
    args = ["export", str(tmp_path / "plan.safetensors"), "--model", str(tiny_dirs["llama"]), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--format", fmt])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "s2e_edits.json"} <= names
    assert ({"adapter_config.json", "adapter_model.safetensors"} <= names) == (fmt == "peft")
    assert ("config.json" in names) == (fmt == "checkpoint")
    card = (out / "README.md").read_text()
    assert "rho_attn 0.2, rho_mlp 0.05, alpha 0.5" in card
    first = plan.edited_heads.nonzero().tolist()[0]
    assert f"L{first[0]}H{first[1]} ({float(plan.head_lambda[first[0], first[1]]):+.3f})" in card
    assert ("PeftModel.from_pretrained" in card) == (fmt == "peft")
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "other"), "--format", "gguf"])
    assert bad.exit_code == 2 and "--format must be checkpoint or peft" in bad.output


def test_s2e_edit_export_carries_the_same_model_card(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """``s2e edit --export DIR`` writes the card ``s2e export`` would: the plan it just made,
    with its edited heads and their lambdas."""
    from typer.testing import CliRunner

    from s2e_lens.cli import app

    model = load_model(str(tiny_dirs["llama"]), progress=False)
    plan = _plan(model)
    plan.save(tmp_path / "plan")
    args = ["edit", str(tmp_path / "plan.safetensors"), "--model", str(tiny_dirs["llama"])]
    result = CliRunner().invoke(app, [*args, "--export", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "exp" / "README.md").read_text()
    first = plan.edited_heads.nonzero().tolist()[0]
    assert f"L{first[0]}H{first[1]} ({float(plan.head_lambda[first[0], first[1]]):+.3f})" in card
    assert "AutoModelForCausalLM.from_pretrained" in card
