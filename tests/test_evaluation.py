"""Model-facing evaluation against independent computations on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s2e_lens.behaviours.datasets import MultipleChoice, TruthfulQAItem
from s2e_lens.behaviours.truthfulness import truthfulqa_eval
from s2e_lens.engine.scoring import KLReference, multiple_choice_accuracy, response_cross_entropy, score_continuations
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
