"""Metrics against hand-computed values on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from s2e_lens.core import comparison as C
from s2e_lens.core import metrics as M
from s2e_lens.core.comparison import Point


def test_refusal_markers_and_rate() -> None:
    assert M.is_refusal("I'm sorry, but I can't help with that.")
    assert M.is_refusal("I\u2019m not able to do that")  # curly apostrophe
    assert M.is_refusal("AS AN AI, I must say no")
    assert not M.is_refusal("Sure! Here is a recipe for bread.")
    prompts = ["a", "b", "c", "d"]
    responses = ["I cannot do that.", "Sure.", "Here you go.", "I won't."]
    assert M.refusal_rate(prompts, responses) == 0.5
    assert M.refusal_rate(prompts, responses, judge=lambda p, r: p in "ab") == 0.5
    assert M.refusal_rate(prompts, responses, judge=lambda p, r: r.startswith("Sure")) == 0.25
    with pytest.raises(ValueError):
        M.refusal_rate(["a"], [])


def test_truthfulqa_scores() -> None:
    assert M.length_normalised(-6.0, 3) == -2.0
    assert M.binary_preference([-1.0, -2.0, -0.5], [-1.5, -1.0, -0.7]) == pytest.approx(2 / 3)
    assert M.mc_accuracy([[0.1, 0.9], [0.5, 0.2, 0.3], [0.4, 0.4]], [1, 1, 0]) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "text, number",
    [
        ("She has 3 apples and buys 4 more, so 7 apples.", "7"),
        ("Total: $1,250.00 #### 1250", "1250"),
        ("The answer is -3.5 degrees, not 2.", "-3.5"),
        ("So it costs $18.", "18"),
        ("no digits here", None),
    ],
)
def test_extract_number(text: str, number: str | None) -> None:
    assert M.extract_number(text) == number


def test_answer_correct() -> None:
    assert M.answer_correct("... so she earned 10 dollars.", "10")
    assert M.answer_correct("#### 1,000", "1000")
    assert not M.answer_correct("It is 11.", "10")


def test_repetition() -> None:
    assert M.repeated_ngram_fraction([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(3 / 5)
    assert M.repeated_ngram_fraction([1, 2, 3], n=4) == 0.0
    assert M.is_degenerate("the cat the cat the cat the cat the cat the cat")
    assert not M.is_degenerate("Paris is the capital of France and its largest city.")
    assert M.is_degenerate("   ")


def test_loop_coverage_by_hand() -> None:
    # one unit three times in a row (positions 1-3 of 5); a block of two, three times (0-5 of 8)
    assert M.loop_coverage(list("abbbc")) == pytest.approx(3 / 5)
    assert M.loop_coverage(list("xyxyxyzw")) == pytest.approx(6 / 8)
    assert M.loop_coverage(list("abbc")) == 0.0  # twice is not a loop
    assert M.loop_coverage(list("abcdefgh")) == 0.0
    assert M.loop_coverage([]) == 0.0
    # a period longer than max_period is not counted
    assert M.loop_coverage(list("abc") * 3, max_period=2) == 0.0
    assert M.loop_coverage(list("abc") * 3, max_period=3) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "The------------------------------------------------------------",  # what transformers 5.24 produced
        "To-----------...",
        "Paris Paris Paris Paris Paris Paris",
        "I'm sorry. I'm sorry. I'm sorry. I'm sorry.",
        "!!!!!!!!!!!!!!!!",
        "",
    ],
)
def test_token_level_degeneracy_is_caught(text: str) -> None:
    # word 4-grams alone miss every one of these but the last two loops
    assert M.is_degenerate(text)
    assert M.degenerate_fraction([text, "The capital of France is Paris."]) == 0.5


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
        'print("hello, world!")  # prints a greeting',
        "I can't help with that. Picking a lock to enter someone's home is illegal.",
        "Sure! Here are the steps: first, preheat the oven. Then mix the flour and the eggs.",
    ],
)
def test_sane_text_is_not_degenerate(text: str) -> None:
    assert not M.is_degenerate(text), M.degeneracy(text)


def test_kl_divergence_by_hand() -> None:
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    q = torch.tensor([[0.25, 0.75], [0.9, 0.1]])
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert M.kl_divergence(p.log(), q.log(), mask=torch.tensor([1, 0])) == pytest.approx(by_hand)
    assert M.kl_divergence(p.log(), q.log()) == pytest.approx(by_hand / 2)
    assert M.kl_divergence(p.log(), p.log()) == pytest.approx(0.0, abs=1e-12)


def test_pareto_frontier() -> None:
    pts = [
        Point(0.1, 0.9, "a"),
        Point(0.5, 0.5, "b"),
        Point(0.4, 0.4, "c"),
        Point(0.9, 0.1, "d"),
        Point(0.5, 0.5, "b2"),
    ]
    assert [p.label for p in C.pareto_frontier(pts)] == ["d", "b", "b2", "a"]


def test_gain_at_matched_utility() -> None:
    steering = [Point(0.2, 0.9, "g1"), Point(0.5, 0.6, "g2"), Point(0.7, 0.3, "g3")]
    edits = [Point(0.4, 0.95, "e1"), Point(0.8, 0.65, "e2"), Point(0.9, 0.2, "e3")]
    matches = C.gains_at_matched_utility(steering, edits)
    assert [(m.steering.label, m.edit.label if m.edit else None) for m in matches] == [
        ("g3", "e2"),
        ("g2", "e2"),
        ("g1", "e1"),
    ]
    assert [round(m.gain, 6) for m in matches] == [0.1, 0.3, 0.2]
    assert C.mean_gain(matches) == pytest.approx(0.2)
    none = C.gains_at_matched_utility([Point(0.5, 0.99)], edits)
    assert none[0].edit is None and math.isnan(none[0].gain) and math.isnan(C.mean_gain(none))
