"""Calibrated budgets (issue 15): a bisection in log space to a KL target, for edits (rho) and
steering (gamma). The search is checked on functions whose answer is known in closed form; the
shell on a tiny model, where the calibrated intervention's KL is measured again by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_set

from s2e_lens.core.settings import EditSettings
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine.calibration import (
    CalibrationError,
    calibrate_plan,
    calibrate_steering,
    scaled_settings,
    search_log_scale,
)
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.scoring import KLReference
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loading import load_model
from s2e_lens.models.tokens import encode_prompt, encode_response

BENIGN = [
    ("Name a colour.", "Blue is a colour."),
    ("What is two plus two?", "Two plus two is four."),
    ("Say something kind.", "You are doing well today."),
]


@pytest.mark.parametrize("target", [0.01, 0.3, 7.0])
def test_search_finds_the_known_answer_of_monotone_functions(target: float) -> None:
    # increasing: s^2 -> answer sqrt(target); decreasing: 1/s -> answer 1/target
    up = search_log_scale(lambda s: s * s, target, increasing=True)
    assert abs(up.value - target) <= 0.05 * target and abs(up.scale - math.sqrt(target)) <= 0.03 * math.sqrt(target)
    down = search_log_scale(lambda s: 1 / s, target, increasing=False, tolerance=0.01)
    assert abs(down.value - target) <= 0.01 * target
    assert down.steps[-1] == (down.scale, down.value) and len(down.steps) <= 24


def test_search_refuses_targets_it_cannot_reach() -> None:
    with pytest.raises(CalibrationError, match="cannot be reached"):
        search_log_scale(lambda s: min(s, 2.0), 5.0, increasing=True)  # saturates below the target
    with pytest.raises(CalibrationError, match="may not be monotone"):
        # a step function: never within 1% of 0.5
        search_log_scale(lambda s: 0.0 if s < 3 else 1.0, 0.5, increasing=True, tolerance=0.01)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(InvalidInputError, match="positive number"):
            search_log_scale(lambda s: s, bad, increasing=True)


def test_scaled_settings_keep_the_ratio_and_switched_off_blocks() -> None:
    s = scaled_settings(EditSettings(rho_attn=0.2, rho_mlp=0.5, alpha=0.3), 1.5)
    assert (s.rho_attn, s.rho_mlp, s.alpha) == pytest.approx((0.3, 0.75, 0.3))
    assert scaled_settings(EditSettings(rho_attn=0.2, rho_mlp=0.0), 3.0).rho_mlp == 0.0


def _kl_by_hand(model, pairs) -> tuple[list[torch.Tensor], float]:
    """Next-token log-probabilities of each text's response, one unpadded forward per text."""
    tok = model.tokenizer
    out = []
    for p, r in pairs:
        ctx, cont = encode_prompt(tok, p), encode_response(tok, r)
        with torch.no_grad():
            logits = model.hf_model(input_ids=torch.tensor([ctx + cont])).logits[0].float()
        out.append(torch.log_softmax(logits[len(ctx) - 1 : -1], -1))
    return out, float(sum(len(t) for t in out))


def _kl(before: list[torch.Tensor], after: list[torch.Tensor], n: float) -> float:
    return sum(float((b.exp() * (b - a)).sum()) for b, a in zip(before, after, strict=True)) / n


def test_a_calibrated_plan_and_steering_reach_the_target_kl(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    weights = {k: v.clone() for k, v in model.hf_state_dict().items()}
    reference = KLReference(model, BENIGN)
    before, n = _kl_by_hand(model, BENIGN)
    target = 0.02
    found = calibrate_plan(model, stats, EditSettings(rho_attn=0.3, rho_mlp=0.3, alpha=0.5), reference, target)
    assert all(torch.equal(v, weights[k]) for k, v in model.hf_state_dict().items())  # left unedited
    assert found.settings is not None and found.settings.rho_attn / found.settings.rho_mlp == pytest.approx(1.0)
    with found.intervention.active(model):
        after, _ = _kl_by_hand(model, BENIGN)
    assert abs(_kl(before, after, n) - target) <= 0.05 * target  # the property: within 5%
    assert found.search.relative_error <= 0.05 and found.intervention.kind == "edit"

    vectors = SteeringVectors.from_statistics(stats)
    steer = calibrate_steering(model, vectors, reference, target)
    assert steer.gamma is not None and steer.gamma > 0
    with steer.intervention.active(model):
        after, _ = _kl_by_hand(model, BENIGN)
    assert abs(_kl(before, after, n) - target) <= 0.05 * target
    assert all(torch.equal(v, weights[k]) for k, v in model.hf_state_dict().items())


def test_calibration_needs_a_block_switched_on(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    stats = collect_statistics(model, tiny_set(3), progress=False)
    with pytest.raises(InvalidInputError, match="at least one block type"):
        calibrate_plan(model, stats, EditSettings(rho_attn=0.0, rho_mlp=0.0), KLReference(model, BENIGN), 0.1)
