"""One way to apply an intervention: handles that undo exactly what they did, contexts that
clean up on exceptions, and the model-identity check on every path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_set

import s2e_lens as s2e
from s2e_lens.core.settings import EditSettings
from s2e_lens.engine import interventions
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.mapper import RevertError, apply_plan
from s2e_lens.engine.planning import compute_plan
from s2e_lens.models.identity import IdentityMismatchError
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.loading import load_model


@pytest.fixture(scope="module")
def llama(tiny_dirs: dict[str, Path]) -> tuple[LoadedModel, s2e.EditPlan, s2e.SteeringVectors]:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    plan = compute_plan(model, stats, EditSettings(rho_attn=0.2, rho_mlp=0.5, alpha=0.5))
    return model, plan, s2e.SteeringVectors.from_statistics(stats)


def weights(model: LoadedModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.hf_state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def logits(model: LoadedModel) -> torch.Tensor:
    with torch.no_grad():
        return model.hf_model(torch.tensor([[5, 9, 12, 40, 7]])).logits


def test_edited_reverts_bit_for_bit_when_the_block_raises(llama) -> None:
    model, plan, _ = llama
    before = weights(model)
    with pytest.raises(RuntimeError, match="inside"), s2e.edited(model, plan):
        assert not same(weights(model), before)  # the plan is in the weights inside the block
        raise RuntimeError("inside")
    assert same(weights(model), before) and model.applied_plans == []


def test_apply_plan_returns_a_handle_that_removes_exactly_that_plan(llama) -> None:
    model, plan, _ = llama
    before = weights(model)
    handle = apply_plan(model, plan)
    assert handle.active and not same(weights(model), before)
    handle.remove()
    assert not handle.active and same(weights(model), before)
    with pytest.raises(RevertError, match="no edit is applied"):
        handle.remove()  # a plan handle undoes once; a second remove would revert something else


def test_intervention_handles_stack_and_undo_in_reverse(llama) -> None:
    model, plan, vectors = llama
    plain = logits(model)
    edit = interventions.editing(plan).apply(model)
    edited = logits(model)
    steer = interventions.steering(vectors, 1.0).apply(model)
    assert model.steering == ["steer gamma=1"] and not torch.allclose(logits(model), edited)
    steer.remove()
    steer.remove()  # idempotent
    assert model.steering == [] and torch.equal(logits(model), edited)
    edit.remove()
    assert torch.equal(logits(model), plain)


def test_steered_removes_its_hooks_when_the_block_raises(llama) -> None:
    model, _, vectors = llama
    plain = logits(model)
    with pytest.raises(KeyError), s2e.steered(model, vectors, 2.0):
        assert not torch.allclose(logits(model), plain)
        raise KeyError("inside")
    assert torch.equal(logits(model), plain) and model.steering == []


def test_every_path_checks_that_the_vectors_or_plan_fit_the_model(llama, tiny_dirs: dict[str, Path]) -> None:
    model, plan, _ = llama
    other = load_model(str(tiny_dirs["qwen2"]), progress=False)
    other_vectors = s2e.SteeringVectors.from_statistics(collect_statistics(other, tiny_set(4), progress=False))
    before = weights(model)
    for make in (
        lambda: interventions.steering(other_vectors, 1.0).apply(model),  # what sweeps and runs use
        lambda: s2e.steered(model, other_vectors, 1.0).__enter__(),  # the everyday form
        lambda: interventions.orthogonalisation(model, other_vectors),
    ):
        with pytest.raises(IdentityMismatchError):
            make()
    with pytest.raises(IdentityMismatchError):
        interventions.editing(plan).apply(other)
    assert same(weights(model), before) and model.steering == [] and other.applied_plans == []
