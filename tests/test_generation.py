"""Batched, KV-cached generation equals a plain greedy loop that recomputes everything."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s2e_lens.engine.generation import GenerationSettings, eos_token_ids, generate
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.loading import load_model
from s2e_lens.models.tokens import encode_prompt, render_prompt

PROMPTS = ["hi", "What is two plus two?", "Tell me a story about a cat and a dog.", "ok"]


def _greedy_reference(model: LoadedModel, prompt: str, max_new: int) -> list[int]:
    ids = encode_prompt(model.tokenizer, prompt)
    eos = set(eos_token_ids(model))
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model.hf_model(torch.tensor([ids + out])).logits[0, -1]
            nxt = int(logits.argmax())
            if nxt in eos:
                break
            out.append(nxt)
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_greedy_equals_unbatched_reference_loop(family: str, tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs[family]), progress=False)
    settings = GenerationSettings(max_new_tokens=12, batch_size=3)
    results = generate(model, PROMPTS, settings)
    assert [r.prompt for r in results] == PROMPTS
    for r in results:
        expected = _greedy_reference(model, r.prompt, 12)
        assert r.n_tokens == len(expected)
        assert r.text == model.tokenizer.decode(expected, skip_special_tokens=True)
        assert r.stopped == (len(expected) < 12)


def test_sampling_is_seeded_and_returns_n_per_prompt(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, n=3, seed=7)
    first = generate(model, PROMPTS[:2], settings)
    second = generate(model, PROMPTS[:2], settings)
    assert [r.prompt for r in first] == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    assert [r.text for r in first] == [r.text for r in second]
    assert len({r.text for r in first[:3]}) > 1  # samples differ from each other


def test_prompt_rendering_with_and_without_chat_template(tiny_dirs: dict[str, Path]) -> None:
    chat = load_model(str(tiny_dirs["llama"]), progress=False).tokenizer
    plain = load_model(str(tiny_dirs["gpt2"]), progress=False).tokenizer
    assert render_prompt(chat, "hey") == "<|user|>hey<|end|><|assistant|>"
    assert render_prompt(plain, "hey") == "hey"
    assert encode_prompt(chat, "hey") == chat.convert_tokens_to_ids(
        ["<|user|>", "h", "e", "y", "<|end|>", "<|assistant|>"]
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(n=2), "n must be 1 for greedy"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_generation_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**kwargs)


def test_samples_share_their_prompts_prefill(tiny_dirs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """n samples per prompt: the prompt's prefill runs once and its KV cache is copied to the
    samples. The tokens drawn are the same as with n separate prefills (same seed), and the
    embedding sees (n - 1) * (prompt length - 1) fewer tokens per prompt."""
    import s2e_lens as s2e

    model = s2e.load_model(tiny_dirs["llama"], progress=False)
    prompts = ["Hello there friend", "How do I cook rice today", "Why"]
    lengths = [len(encode_prompt(model.tokenizer, p)) for p in prompts]
    width = max(lengths)
    seen: list[int] = []
    embed = model.hf_model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda mod, args, out: seen.append(int(args[0].numel())))
    try:
        runs = {}
        for share in (True, False):
            seen.clear()
            settings = GenerationSettings(max_new_tokens=6, temperature=1.0, n=3, seed=0, batch_size=9,
                                          share_prefill=share)  # fmt: skip
            runs[share] = ([g.token_ids for g in generate(model, prompts, settings)], sum(seen))
    finally:
        handle.remove()
    assert runs[True][0] == runs[False][0]
    assert runs[False][1] - runs[True][1] == (3 - 1) * len(prompts) * (width - 1)  # one padded batch of 3 prompts


@pytest.mark.slow
def test_shared_prefill_on_the_default_model(default_model: LoadedModel) -> None:
    settings = dict(max_new_tokens=12, temperature=0.8, top_p=0.95, n=4, seed=1)
    prompts = ["Write a haiku about autumn.", "What is 17 times 3?"]
    shared = generate(default_model, prompts, GenerationSettings(**settings, share_prefill=True))
    separate = generate(default_model, prompts, GenerationSettings(**settings, share_prefill=False))
    assert [g.token_ids for g in shared] == [g.token_ids for g in separate]
    assert len({g.text for g in shared}) > 2  # they are samples, not copies
