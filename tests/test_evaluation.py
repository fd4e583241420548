"""Model-facing evaluation against independent computations on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import torch

from s2e_lens.behaviours.base import SuiteSize, utility_items
from s2e_lens.behaviours.truthfulness import truthfulqa_eval
from s2e_lens.core.items import MultipleChoice, TruthfulQAItem
from s2e_lens.engine.scoring import (
    KLReference,
    continuation_logprobs,
    continuation_token_logprobs,
    multiple_choice_accuracy,
    multiple_choice_correct,
    response_cross_entropy,
    score_continuations,
)
from s2e_lens.models.loading import load_model
from s2e_lens.models.tokens import encode_prompt, encode_response


def manual_logprob(model, ctx: list[int], cont: list[int]) -> float:
    total = 0.0
    with torch.no_grad():
        for k, token in enumerate(cont):
            logits = model.hf_model(torch.tensor([ctx + cont[:k]])).logits[0, -1]
            total += float(torch.log_softmax(logits.double(), -1)[token])
    return total


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_scores_equal_token_by_token_log_probs(family: str, tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs[family]), progress=False)
    tok = model.tokenizer
    pairs = [
        (encode_prompt(tok, p), encode_response(tok, r))
        for p, r in [("hi", "hello"), ("a longer prompt here", "ok"), ("x", "yes it is")]
    ]
    scored = score_continuations(model, pairs, batch_size=2)
    for (ctx, cont), s in zip(pairs, scored, strict=True):
        assert s.n_tokens == len(cont)
        assert s.logprob == pytest.approx(manual_logprob(model, ctx, cont), rel=1e-4, abs=1e-4)


def _embedded_tokens(model, fn):  # type: ignore[no-untyped-def]
    """``fn()`` and the number of token positions the model embedded (padding included)."""
    seen: list[int] = []
    handle = model.hf_model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    try:
        return fn(), sum(seen)
    finally:
        handle.remove()


# (question, choices): long questions with several short choices, a short one (inside the tiny
# Gemmas' 8-token attention window), and a question with one choice (scored whole)
MC_CASES = [
    ("which of these words is the odd one out today", (" x", " yy", " zzz", " w")),
    ("a", (" yes", " no")),
    ("one more question with a single answer", (" it is so",)),
    ("is the sky green or blue on a clear day", (" green", " blue", " grey")),
]


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_shared_contexts_score_what_each_pair_scores_alone(family: str, tiny_dirs: dict[str, Path]) -> None:
    """Choices of one question run its context once (KV cache copied to each choice); each
    score equals the token-by-token log-probability of the pair alone, and fewer positions
    are embedded than the pairs hold (this fails with the sharing switched off). A model whose
    attention window is shorter than the texts (the tiny Gemmas) scores them whole."""
    model = load_model(str(tiny_dirs[family]), progress=False)
    tok = model.tokenizer
    for cases in (MC_CASES, [("a", (" b", " c d")), ("e f", (" g", " h", " i"))]):
        pairs = []
        for question, choices in cases:
            ctx = list(tok(question, add_special_tokens=True)["input_ids"])
            pairs += [(ctx, encode_response(tok, c)) for c in choices]
        scored, embedded = _embedded_tokens(model, lambda p=pairs: score_continuations(model, p, batch_size=3))
        for (ctx, cont), s in zip(pairs, scored, strict=True):
            assert s.n_tokens == len(cont)
            assert s.logprob == pytest.approx(manual_logprob(model, ctx, cont), rel=1e-4, abs=1e-4)
        whole = sum(len(c) + len(r) for c, r in pairs)
        window = getattr(model.hf_model.config, "sliding_window", None)
        shares = window is None or max(len(c) + len(r) for c, r in pairs) <= window
        assert (embedded < whole) == shares, (embedded, whole, window)
        alone, unshared = _embedded_tokens(
            model, lambda p=pairs: dict(continuation_token_logprobs(model, p, batch_size=3, share_contexts=False))
        )
        assert unshared >= whole
        # one log-probability per continuation token (reduced inside each batch: a chunk of shared
        # contexts never holds full-vocabulary rows; on a 152k vocabulary that ran out of memory)
        assert all(alone[i].shape == (len(pairs[i][1]),) for i in range(len(pairs)))


@pytest.mark.slow
def test_shared_contexts_on_the_default_model_score_real_items_as_whole_pairs(default_model) -> None:
    """ARC-Easy, PIQA and HellaSwag items on the real default model: each choice's
    log-probabilities with the context run once equal those of the whole pair (float32
    rounding), the same items are right, and about half the positions are embedded."""
    items = utility_items(SuiteSize(n_mc=6))  # from $S2E_DATA
    tok = default_model.tokenizer
    pairs = [
        (list(tok(item.context, add_special_tokens=True)["input_ids"]), encode_response(tok, c))
        for item in items
        for c in item.choices
    ]
    shared, embedded = _embedded_tokens(default_model, lambda: dict(continuation_token_logprobs(default_model, pairs)))
    whole, unshared = _embedded_tokens(default_model, lambda: dict(continuation_logprobs(default_model, pairs)))
    tokens = {i: torch.tensor(pairs[i][1])[:, None] for i in range(len(pairs))}
    worst = max(float((shared[i] - whole[i].gather(-1, tokens[i])[:, 0]).abs().max()) for i in range(len(pairs)))
    assert worst < 1e-4, worst
    assert embedded < 0.8 * unshared, (embedded, unshared)
    correct = multiple_choice_correct(default_model, items)
    per_item: list[list[float]] = []
    k = 0
    for item in items:
        means = []
        for _ in item.choices:
            ids = torch.tensor(pairs[k][1])
            means.append(float(whole[k].gather(-1, ids[:, None]).sum()) / len(ids))
            k += 1
        per_item.append(means)
    best = [max(range(len(m)), key=m.__getitem__) for m in per_item]
    assert correct == [b == item.answer for b, item in zip(best, items, strict=True)]


def test_multiple_choice_and_truthfulqa_pick_the_likeliest(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    tok = model.tokenizer
    ctx = list(tok("abc", add_special_tokens=True)["input_ids"])
    choices = (" x", " yy", " zzz")
    scores = [s.mean for s in score_continuations(model, [(ctx, encode_response(tok, c)) for c in choices])]
    best = max(range(3), key=lambda i: scores[i])
    items = [MultipleChoice("abc", choices, best, "t"), MultipleChoice("abc", choices, (best + 1) % 3, "t")]
    assert multiple_choice_accuracy(model, items) == 0.5
    q = TruthfulQAItem("q?", "aa", ("aa",), ("b", "cc"), "c")
    result = truthfulqa_eval(model, [q])
    s = score_continuations(model, [(encode_prompt(tok, "q?"), encode_response(tok, a)) for a in ("aa", "b", "cc")])
    assert result.binary_preference == float(s[0].mean > s[1].mean)
    assert result.mc1 == float(s[0].logprob > max(s[1].logprob, s[2].logprob))


def test_cross_entropy_and_kl(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["qwen2"]), progress=False)
    tok = model.tokenizer
    pairs = [("tell me", "sure thing"), ("why", "because")]
    ce = response_cross_entropy(model, pairs)
    manual = [manual_logprob(model, encode_prompt(tok, p), encode_response(tok, r)) for p, r in pairs]
    n = sum(len(encode_response(tok, r)) for _, r in pairs)
    assert ce == pytest.approx(-sum(manual) / n, rel=1e-4)
    pairs += [("a much longer prompt so that batches need padding", "ok")]
    encoded = [(encode_prompt(tok, p), encode_response(tok, r)) for p, r in pairs]

    def alone() -> list[torch.Tensor]:  # one unpadded forward per text, by hand
        out = []
        for ctx, cont in encoded:
            with torch.no_grad():
                logits = model.hf_model(input_ids=torch.tensor([ctx + cont])).logits[0].float()
            out.append(torch.log_softmax(logits[len(ctx) - 1 : -1], -1))
        return out

    ref = KLReference(model, pairs, batch_size=2)
    before = alone()
    assert ref.kl(model) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.hf_model.lm_head.weight.mul_(1.5)  # a sharper model is a different model
    after = alone()
    manual_kl = sum(float((r.exp() * (r - c)).sum()) for r, c in zip(before, after, strict=True)) / sum(
        len(r) for r in before
    )
    assert manual_kl > 1e-3
    assert ref.kl(model) == pytest.approx(manual_kl, rel=1e-4)
    # per text and position (what the KL-matched interval resamples): each text's own rows
    by_text = ref.kl_by_text(model)
    assert [len(r) for r in by_text] == [len(cont) for _, cont in encoded]
    for row, r, c in zip(by_text, before, after, strict=True):
        assert row == pytest.approx((r.exp() * (r - c)).sum(-1).tolist(), rel=1e-4, abs=1e-7)
