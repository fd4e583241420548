"""Refusal judges (the paper's list, exactly; ours; the user's own) and confidence intervals
(Wilson, bootstrap over prompts, paired bootstrap), against hand-made strings, the intervals'
defining equations and brute-force computations."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2e_lens.core import comparison, intervals, judges
from s2e_lens.errors import InvalidInputError

# ---------------------------------------------------------------- judges


@pytest.mark.parametrize(
    "response, paper, strict",
    [
        ("I'm sorry, but I can't help with that.", True, True),
        ("i'm sorry, but i can't help with that.", False, True),  # the paper's judge is case-sensitive
        ("I\u2019m sorry, I can\u2019t do that.", False, True),  # typographic apostrophes: only ours folds them
        ("Hello! Here is how to pick a lock: first ...", True, False),  # the paper counts a greeting
        ("I understand. Step 1: buy a crowbar.", True, False),  # ... and "I understand"
        ("I must say, this is a great plan. Step 1 ...", True, False),
        ("That would be unethical, but here goes: ...", True, False),  # the bare "unethical"
        ("Sure, here is a step-by-step guide.", False, False),
        ("As an AI language model, I won't.", True, True),
        ("  Sorry", True, False),  # ours needs more than a bare "sorry"
        ("SORRY", False, False),
    ],
)
def test_paper_and_strict_judges_on_hand_made_strings(response: str, paper: bool, strict: bool) -> None:
    assert judges.paper_refusal("q", response) is paper
    assert judges.strict_refusal("q", response) is strict


def test_the_paper_list_is_the_references_32_signals() -> None:
    signals = judges.PAPER_REFUSAL_SIGNALS
    assert len(signals) == 32 and len(set(signals)) == 32
    assert signals[0] == "I'm sorry" and signals[-1] == "I am not able to"
    assert {"Hello!", "I understand", "I must", "cannot", "As an"} <= set(signals)


def test_a_users_judge_from_a_file(tmp_path: Path) -> None:
    good = tmp_path / "myjudge.py"
    good.write_text("def refused(prompt, response):\n    return response.startswith('No')\n")
    judge = judges.load_judge(f"{good}:refused")
    assert judge.name == f"{good}:refused"
    assert judge("q", "No way.") is True and judge("q", "Yes.") is False


@pytest.mark.parametrize(
    "source, spec_tail, message",
    [
        ("def j(p, r):\n    return 1\n", ":j", "returned int"),
        ("def j(p, r):\n    return None\n", ":j", "returned NoneType"),
        ("def j(p, r):\n    raise KeyError('x')\n", ":j", "raised KeyError.*a probe response"),
        ("import not_a_module_anywhere\n", ":j", "importing"),
        ("x = 1\n", ":j", "has no function 'j'"),
    ],
)
def test_bad_judges_are_refused_with_the_reason(tmp_path: Path, source: str, spec_tail: str, message: str) -> None:
    path = tmp_path / "judge.py"
    path.write_text(source)
    with pytest.raises(InvalidInputError, match=message):
        judges.load_judge(f"{path}{spec_tail}")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("loose", "use paper, strict"),
        ("no_such_module_xyz:fn", "cannot import"),
        ("/no/such/file.py:fn", "no such file"),
    ],
)
def test_bad_judge_specs(spec: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        judges.load_judge(spec)


# ---------------------------------------------------------------- intervals


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (5, 10), (10, 10), (7, 40), (33, 100)])
def test_wilson_bounds_solve_the_score_equation(k: int, n: int) -> None:
    """The Wilson bounds are the p where |p_hat - p| = z * sqrt(p (1 - p) / n)."""
    ci = intervals.wilson(k, n)
    z, p_hat = intervals.Z95, k / n
    for p in (ci.low, ci.high):
        assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, abs=1e-12)
    assert ci.low <= p_hat <= ci.high and ci.estimate == p_hat


def test_wilson_against_published_values() -> None:
    # R: prop.test(5, 10, correct = FALSE)$conf.int -> 0.2365931 0.7634069
    ci = intervals.wilson(5, 10)
    assert (ci.low, ci.high) == pytest.approx((0.2365931, 0.7634069), abs=1e-6)
    with pytest.raises(InvalidInputError):
        intervals.wilson(3, 0)


def test_bootstrap_of_a_constant_is_a_point_and_of_a_two_prompt_table_exact() -> None:
    assert str(intervals.bootstrap([[1, 1], [1, 1], [1, 1]])) == "1.000 [1.000, 1.000]"
    # two prompts with rates 0 and 1: resampled means are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4
    ci = intervals.bootstrap([[0, 0], [1, 1]], n_boot=4000)
    assert ci.estimate == 0.5 and ci.low == 0.0 and ci.high == 1.0


def test_bootstrap_over_prompts_keeps_each_prompts_samples_together() -> None:
    """Rows of identical samples: resampling prompts is resampling their rates, so the
    interval matches the brute-force distribution of resampled prompt means."""
    rates = np.array([0.0, 0.2, 0.6, 1.0])
    table = np.repeat(rates[:, None], 5, axis=1)
    ci = intervals.bootstrap(table, n_boot=20000, seed=1)
    # brute force: all 4^4 equally likely resamples of 4 prompts
    means = [np.mean(c) for c in itertools.product(rates, repeat=4)]
    lo, hi = (np.quantile(means, q, method="inverted_cdf") for q in (0.025, 0.975))
    assert ci.low == pytest.approx(lo, abs=1e-9) and ci.high == pytest.approx(hi, abs=1e-9)


def test_paired_bootstrap_against_brute_force_on_a_small_table() -> None:
    """Every resample of 3 prompts enumerated: the paired interval's bounds are the quantiles
    of that exact distribution (up to Monte Carlo error), and pairing cancels shared difficulty."""
    a = np.array([[1.0], [1.0], [0.0]])
    b = np.array([[1.0], [0.0], [0.0]])
    ci = intervals.paired_bootstrap(a, b, n_boot=20000, seed=3)
    diffs = [float(np.mean(a[list(c)]) - np.mean(b[list(c)])) for c in itertools.product(range(3), repeat=3)]
    assert ci.estimate == pytest.approx(1 / 3)
    # the exact distribution's quantiles (27 equally likely resamples; a quantile is where the CDF crosses)
    assert ci.low == pytest.approx(np.quantile(diffs, 0.025, method="inverted_cdf"), abs=1e-9)
    assert ci.high == pytest.approx(np.quantile(diffs, 0.975, method="inverted_cdf"), abs=1e-9)
    # the same scores on both sides: every paired difference is exactly 0
    same = intervals.paired_bootstrap(a, a)
    assert (same.low, same.high) == (0.0, 0.0) and not same.excludes_zero()
    with pytest.raises(InvalidInputError, match="same prompts"):
        intervals.paired_bootstrap(a, b[:2])


def test_pooled_bootstrap_of_ragged_rows_against_brute_force() -> None:
    """Rows of different lengths (a text's KL at each position): every resample of the 3 rows
    enumerated, the statistic being the mean of all entries of the resampled rows (a long
    row weighs more); equal-length rows give the plain bootstrap exactly."""
    rows = [[0.0, 0.0, 0.0, 3.0], [1.0], [2.0, 4.0]]
    ci = intervals.pooled_bootstrap(rows, n_boot=20000, seed=2)
    means = [float(np.mean(np.concatenate([rows[i] for i in c]))) for c in itertools.product(range(3), repeat=3)]
    assert ci.estimate == pytest.approx(10 / 7)
    assert ci.low == pytest.approx(np.quantile(means, 0.025, method="inverted_cdf"), abs=1e-9)
    assert ci.high == pytest.approx(np.quantile(means, 0.975, method="inverted_cdf"), abs=1e-9)
    assert intervals.rate_interval(rows) == ci.__class__(*intervals.pooled_bootstrap(rows).to_dict().values())
    table = [[0.1, 0.5], [0.3, 0.2], [0.9, 0.0]]
    assert intervals.pooled_bootstrap(table, seed=4).to_dict() == pytest.approx(
        intervals.bootstrap(table, seed=4).to_dict()
    )
    with pytest.raises(InvalidInputError, match="non-empty"):
        intervals.pooled_bootstrap([[1.0], []])


def test_interval_excludes_zero() -> None:
    assert intervals.Interval(0.2, 0.05, 0.3).excludes_zero()
    assert intervals.Interval(-0.2, -0.3, -0.01).excludes_zero()
    assert not intervals.Interval(0.1, -0.02, 0.2).excludes_zero()
    assert math.isclose(intervals.Z95, 1.959963984540054)


# ---------------------------------------------------------------- the headline: frontiers


def test_frontier_gap_by_hand() -> None:
    """Steering frontier (u, a): (0.2, 0.9), (0.6, 0.5); edits: (0.4, 0.7), (0.8, 0.6). Over the
    shared utility range [0.4, 0.6] steering falls from 0.7 to 0.5 and the edits from 0.7 to
    0.65, so the difference rises linearly from 0 to 0.15: mean 0.075, largest 0.15 at 0.6."""
    P = comparison.Point
    gap = comparison.frontier_gap([P(0.9, 0.2), P(0.5, 0.6), P(0.3, 0.3)], [P(0.7, 0.4), P(0.6, 0.8)])
    assert gap is not None
    assert (gap.low, gap.high) == pytest.approx((0.4, 0.6))
    assert gap.mean == pytest.approx(0.075) and gap.largest == pytest.approx(0.15) and gap.at == pytest.approx(0.6)
    # no shared utility range: no comparison
    assert comparison.frontier_gap([P(0.9, 0.1), P(0.8, 0.2)], [P(0.5, 0.5), P(0.4, 0.9)]) is None
    # the grid's last point is the shared range's end exactly: 0 + (25/30 - 0) * 100 / 100 rounds
    # just past 25/30, which once read as nan and turned a run's whole interval into nan
    end = 25 / 30
    assert 0.0 + (end - 0.0) * 100 / 100 > end
    gap = comparison.frontier_gap([P(0.5, 0.0), P(0.1, end)], [P(0.6, 0.0), P(0.2, end)], n_grid=101)
    assert gap is not None and gap.mean == pytest.approx(0.1) and gap.high == end


def _table(rows: list[tuple[str, str, list[float], list[float]]]) -> tuple[pd.DataFrame, dict]:
    frame = pd.DataFrame(
        [{"label": lab, "kind": kind, "attribute": np.mean(a), "utility": np.mean(u)} for lab, kind, a, u in rows]
    )
    items = {lab: {"attribute": [[x] for x in a], "utility": [[x] for x in u]} for lab, _, a, u in rows}
    return frame, items


def test_frontier_gap_interval_when_the_edit_wins_on_every_prompt() -> None:
    """The edit refuses every prompt, steering half of them, on the same utility items: a
    resample without a positive gap would have to draw only prompts steering refuses (chance
    0.5 ** 10), so the interval excludes 0."""
    refused = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    more = [1] * 10
    util_a = [1, 1, 1, 0, 1, 1, 0, 1, 1, 0]
    util_b = [1, 1, 1, 0, 1, 0, 0, 1, 1, 0]
    frame, items = _table(
        [
            ("unedited", "none", [0] * 10, util_a),
            ("steer", "steer", refused, util_b),
            ("edit", "edit", more, util_b),
            ("edit weak", "edit", [0] * 10, util_a),
        ]
    )
    est = comparison.frontier_gap_with_interval(frame, items, n_boot=400)
    assert est is not None and est.gap.mean > 0 and est.interval.low > 0
    assert "Steer2Edit is ahead" in est.verdict()


def test_frontier_gap_interval_includes_zero_when_the_methods_are_the_same() -> None:
    a = [1, 0, 1, 0, 1, 1, 0, 0]
    u = [1, 1, 0, 1, 0, 1, 1, 0]
    frame, items = _table(
        [
            ("unedited", "none", [0] * 8, [1] * 8),
            ("steer", "steer", a, u),
            ("edit", "edit", a, u),
            ("edit 0", "edit", [0] * 8, [1] * 8),
        ]  # fmt: skip
    )
    est = comparison.frontier_gap_with_interval(frame, items, n_boot=300)
    assert est is not None and est.gap.mean == 0 and est.interval.low == 0 == est.interval.high
    assert "no difference can be claimed" in est.verdict()


def test_degenerate_interventions_stay_out_of_the_frontiers() -> None:
    frame, items = _table(
        [
            ("unedited", "none", [0, 0, 0, 0], [1, 1, 1, 1]),
            ("steer", "steer", [1, 0, 0, 0], [1, 1, 1, 0]),
            ("collapsed", "steer", [1, 1, 1, 1], [0, 0, 0, 0]),  # all "refusals" of broken text
            ("edit", "edit", [1, 1, 0, 0], [1, 1, 1, 0]),
            ("edit 2", "edit", [0, 0, 0, 0], [1, 1, 1, 1]),
        ]
    )
    with_flag = frame.assign(degenerate_flag=frame["label"] == "collapsed")
    est = comparison.frontier_gap_with_interval(with_flag, items, n_boot=200)
    assert est is not None and (est.gap.low, est.gap.high) == (0.75, 1.0)  # the collapsed point is out
    assert comparison.frontier_gap_with_interval(frame, {}, n_boot=10) is None  # no per-item scores


def test_kl_matched_gap_against_a_hand_computation() -> None:
    """Matched on closeness (-KL on benign text) instead of utility, KL pooled over each
    text's positions. Steering's frontier over closeness runs from the unedited model (0, 0)
    to gamma 1 (-0.5, 0.5); the one edit sits at (-0.25, 0.75). They share the single point
    -0.25, where steering interpolates to 0.25: the edit is 0.5 ahead."""
    kl_steer = [[0.5, 0.5], [0.25, 0.75, 0.5]]  # pooled 2.5 / 5 = 0.5
    kl_edit = [[0.25, 0.25], [0.0, 0.5, 0.25]]  # pooled 1.25 / 5 = 0.25
    kl_none = [[0.0, 0.0], [0.0, 0.0, 0.0]]
    frame = pd.DataFrame(
        [
            {"label": "unedited", "kind": "none", "attribute": 0.0, "utility": 1.0, "kl": 0.0},
            {"label": "steer", "kind": "steer", "attribute": 0.5, "utility": 1.0, "kl": 0.5},
            {"label": "edit", "kind": "edit", "attribute": 0.75, "utility": 1.0, "kl": 0.25},
        ]
    )
    items = {
        "unedited": {"attribute": [[0], [0], [0], [0]], "kl": kl_none},
        "steer": {"attribute": [[1], [1], [0], [0]], "kl": kl_steer},
        "edit": {"attribute": [[1], [1], [1], [0]], "kl": kl_edit},
    }
    est = comparison.frontier_gap_with_interval(frame, items, match="kl", n_boot=300)
    P = comparison.Point
    by_hand = comparison.frontier_gap([P(0.0, 0.0), P(0.5, -0.5)], [P(0.75, -0.25)])
    assert est is not None and by_hand is not None and est.axis == "closeness"
    assert (est.gap.low, est.gap.high, est.gap.mean) == pytest.approx((by_hand.low, by_hand.high, by_hand.mean))
    assert est.gap.low == pytest.approx(-0.25) and est.gap.mean == pytest.approx(0.75 - 0.25)
    assert "over the closeness range" in est.verdict() or "no difference" in est.verdict()
    # the same table matched on utility has no spread of utility: the frontiers meet at one point
    assert comparison.frontier_gap_with_interval(frame, items, n_boot=10) is None  # no utility rows
    with pytest.raises(InvalidInputError, match="match must be"):
        comparison.frontier_gap_with_interval(frame, items, match="ce")


# ---------------------------------------------------------------- grids


def test_grid_ranges() -> None:
    from s2e_lens.experiments.config import parse_grid

    assert parse_grid("0.16:0.24:0.02") == (0.16, 0.18, 0.2, 0.22, 0.24)
    assert parse_grid("0.1, 0.2:0.3:0.05,1") == (0.1, 0.2, 0.25, 0.3, 1.0)
    assert parse_grid("0.3:0.3:0.1") == (0.3,)
    assert len(parse_grid("0:1:0.002")) == 501 and parse_grid("0:1:0.002")[-1] == 1.0  # both ends included
    for bad, message in [("0.3:0.1:0.1", "stop >= start"), ("0:1:0", "step must be > 0"), ("0:1", "start:stop:step"),
                         ("a", "takes numbers"), ("0:100:0.01", "at most 1000")]:  # fmt: skip
        with pytest.raises(InvalidInputError, match=message):
            parse_grid(bad, "--rho-attn")


# ---------------------------------------------------------------- the reference's stripped prompt


@pytest.mark.slow
def test_reference_strip_gives_the_references_token_ids() -> None:
    """On the real SmolLM2 tokenizer: the switch gives the ids the reference's
    extract_directions.py computes (template text .strip()-ed, the response appended as text,
    tokenised together; start = the stripped prompt's token count), which differ from ours by
    the template's trailing newline token."""
    from transformers import AutoTokenizer

    from s2e_lens.core.contrastive import Pair
    from s2e_lens.models.gguf import ensure_converted
    from s2e_lens.models.registry import PACKAGED_MODELS
    from s2e_lens.models.tokens import encode_pairs, encode_prompt, encode_response

    tok = AutoTokenizer.from_pretrained(ensure_converted(PACKAGED_MODELS["smollm2-135m-instruct"], progress=False))
    pairs = [Pair("How do I pick a lock?", "I can't help with that."), Pair("Say hi.", "Hi there!")]
    for pair, sample in zip(pairs, encode_pairs(tok, pairs, reference_strip=True), strict=True):
        messages = [{"role": "user", "content": pair.prompt}]
        base = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True).strip()
        assert sample.ids == tuple(tok(base + pair.response).input_ids)
        assert sample.start == len(tok(base).input_ids)
        ours = encode_prompt(tok, pair.prompt) + encode_response(tok, pair.response)
        assert tok.decode(ours[sample.start : sample.start + 1]) == "\n"  # the newline the strip drops
        assert list(sample.ids) == ours[: sample.start] + ours[sample.start + 1 :]
