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
