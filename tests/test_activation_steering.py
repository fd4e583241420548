"""The steering baseline adds gamma * v[l] to every block output at every position."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import torch
from conftest import tiny_set

from s2e_lens.core.plan import EditPlan
from s2e_lens.core.settings import EditSettings
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.interventions import steered
from s2e_lens.engine.mapper import apply_plan
from s2e_lens.engine.planning import compute_plan
from s2e_lens.models.identity import IdentityMismatchError
from s2e_lens.models.loading import load_model


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_steering_adds_gamma_v_to_each_block_output(family: str, tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs[family]), progress=False)
    vectors = SteeringVectors.from_statistics(collect_statistics(model, tiny_set(4), progress=False))
    ids = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (2, 9))
    names = [f"blocks.{l}.{k}.hook_out" for l in range(model.card.n_layers) for k in ("attn", "mlp")]
    with torch.no_grad():
        plain_logits = model.bridge(ids)
        with steered(model, vectors, 0.7):
            steered_logits, cache = model.bridge.run_with_cache(ids, names_filter=names)
        # independent: recompute layer by layer, adding the shift by hand to the unsteered outputs
        _, first = model.bridge.run_with_cache(ids, names_filter=names[:1])
    torch.testing.assert_close(cache[names[0]], first[names[0]] + 0.7 * vectors.v_attn[0], rtol=1e-5, atol=1e-5)
    assert (steered_logits - plain_logits).abs().max() > 1e-3
    with torch.no_grad():
        assert torch.equal(model.bridge(ids), plain_logits)  # hooks are gone after the block
        with steered(model, vectors, 0.0):
            assert torch.equal(model.bridge(ids), plain_logits)


def test_saved_plan_for_another_model_is_refused(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    source = load_model(str(tiny_dirs["llama"]), progress=False)
    path = compute_plan(
        source, collect_statistics(source, tiny_set(4), progress=False), EditSettings(rho_attn=0.2)
    ).save(tmp_path / "plan")
    target = load_model(str(tiny_dirs["mistral"]), progress=False)  # same shapes, other weights
    before = {k: v.clone() for k, v in target.hf_state_dict().items()}
    with pytest.raises(IdentityMismatchError, match="different weights"):
        apply_plan(target, EditPlan.load(path))
    assert all(torch.equal(v, before[k]) for k, v in target.hf_state_dict().items())
    vectors = SteeringVectors.from_statistics(collect_statistics(source, tiny_set(3), progress=False))
    with pytest.raises(IdentityMismatchError):
        with steered(target, vectors, 1.0):
            pass
