"""Export round trips through plain transformers; plans and vectors round trip through files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch
from conftest import tiny_set
from transformers import AutoModelForCausalLM

from s2e_lens.core.plan import EditPlan
from s2e_lens.core.settings import EditSettings
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.mapper import apply_plan
from s2e_lens.engine.planning import compute_plan, orthogonalisation_plan
from s2e_lens.errors import S2EError
from s2e_lens.io.serialization import FileFormatError
from s2e_lens.models.export import EDIT_RECORD, export_model
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.loading import load_model
from s2e_lens.models.tokens import encode_prompt


def check_round_trip(model: LoadedModel, out: Path, ids: torch.Tensor, atol: float) -> None:
    with torch.no_grad():
        edited = model.bridge(ids)
    export_model(model, out)
    plain = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        reloaded = plain(ids).logits
    assert (reloaded - edited).abs().max().item() <= atol
    assert json.loads((out / EDIT_RECORD).read_text())["edits"]
    assert not any("original_component" in k for k in plain.state_dict())


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_export_round_trip_on_every_family(family: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = load_model(str(tiny_dirs[family]), progress=False)
    stats = collect_statistics(model, tiny_set(5), progress=False)
    apply_plan(model, compute_plan(model, stats, EditSettings(rho_attn=0.2, rho_mlp=0.3, alpha=0.5)))
    ids = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (2, 13))
    check_round_trip(model, tmp_path / "export", ids, atol=1e-5)
    # the exported directory loads back through s2e_lens too, with the edited weights
    again = load_model(str(tmp_path / "export"), progress=False)
    assert all(torch.equal(v, model.hf_state_dict()[k]) for k, v in again.hf_state_dict().items())


@pytest.mark.slow
def test_export_round_trip_on_the_default_model(default_model, default_stats, tmp_path: Path) -> None:
    apply_plan(default_model, compute_plan(default_model, default_stats, EditSettings(0.3, 0.6, 0.8)))
    try:
        ids = torch.tensor([encode_prompt(default_model.tokenizer, "Give me a recipe for soup.")])
        check_round_trip(default_model, tmp_path / "smol-edited", ids, atol=1e-5)
    finally:
        from s2e_lens.engine.mapper import revert_all

        revert_all(default_model)


def test_export_refuses_a_non_empty_directory(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(S2EError, match="exists; pass --overwrite"):
        export_model(model, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_plan_and_vectors_round_trip(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = load_model(str(tiny_dirs["gpt2"]), progress=False)
    stats = collect_statistics(model, tiny_set(5), progress=False)
    settings = EditSettings(rho_attn=0.2, rho_mlp=0.3, alpha=0.5, direction="svd", importance="dot")
    plan = compute_plan(model, stats, settings)
    path = plan.save(tmp_path / "plan")
    assert path.name == "plan.safetensors" and (tmp_path / "plan.json").is_file()
    meta = json.loads((tmp_path / "plan.json").read_text())
    assert meta["settings"]["direction"] == "svd" and meta["model"]["fingerprint"] == model.card.fingerprint
    assert meta["provenance"]["source"] == "random"
    loaded = EditPlan.load(path)
    assert loaded.settings == settings and loaded.model == plan.model
    for name in ("head_lambda", "head_k", "neuron_lambda", "neuron_k", "v_hat_attn"):
        assert torch.equal(getattr(loaded, name), getattr(plan, name))

    W_O, W_out = model.bridge.W_O.detach(), model.bridge.W_out.detach()
    vectors = SteeringVectors.from_statistics(stats, W_O=W_O, W_out=W_out)
    # component-level vectors sum to the block vector minus nothing (biases cancel in differences)
    torch.testing.assert_close(vectors.v_head.sum(1), vectors.v_attn, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vectors.v_neuron.sum(1), vectors.v_mlp, rtol=1e-4, atol=1e-5)
    again = SteeringVectors.load(vectors.save(tmp_path / "vectors.safetensors"))
    assert torch.equal(again.v_attn, vectors.v_attn) and torch.equal(again.v_neuron, vectors.v_neuron)
    assert again.positions == vectors.positions and again.model == vectors.model
    with pytest.raises(FileFormatError, match="holds 'steering_vectors', not 'edit_plan'"):
        EditPlan.load(tmp_path / "vectors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(FileFormatError, match="not a readable safetensors file"):
        EditPlan.load(tmp_path / "junk.safetensors")


def test_orthogonalisation_plan_removes_the_direction(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    r = torch.randn(model.card.d_model)
    apply_plan(model, orthogonalisation_plan(model, r))
    r_hat = r / r.norm()
    assert model.bridge.W_O.detach().matmul(r_hat).abs().max() < 1e-5
    assert model.bridge.W_out.detach().matmul(r_hat).abs().max() < 1e-5
