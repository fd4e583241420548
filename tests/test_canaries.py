"""Canaries on the real packaged models: they cannot pass on a broken stack.

KV-cached, batched, left-padded greedy generation must equal a plain argmax loop that
recomputes the whole sequence for each prompt alone, token for token, for 32 tokens: on the
unedited model, with an edit plan applied and with steering hooks active (so the hooks must
act during cached decoding too). transformers 5.24 with TransformerLens 4.3 broke exactly this
(the bridge's attention stopped seeing the cache) while single forward passes still matched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from conftest import safety_set
from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

from s2e_lens.core.settings import EditSettings
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.generation import GenerationSettings, eos_token_ids, generate
from s2e_lens.engine.interventions import steered
from s2e_lens.engine.mapper import apply_plan, revert
from s2e_lens.engine.planning import compute_plan
from s2e_lens.experiments import health
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.loading import load_model
from s2e_lens.models.tokens import encode_prompt

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three uses of a paperclip."]
MAX_NEW = 32
TIE = 1e-3  # a difference is acceptable only where the reference's top two logits tie


def recomputing_greedy(model: LoadedModel, prompts: list[str]) -> list[tuple[list[int], list[torch.Tensor]]]:
    """No cache, no left padding, no attention mask: every step runs the full sequences,
    right-padded (a causal model's positions cannot see the padding after them), and takes
    the argmax at each sequence's own last position."""
    prefixes = [encode_prompt(model.tokenizer, p) for p in prompts]
    stop = set(eos_token_ids(model))
    out: list[list[int]] = [[] for _ in prompts]
    logits_per_step: list[list[torch.Tensor]] = [[] for _ in prompts]
    live = list(range(len(prompts)))
    with torch.no_grad():
        for _ in range(MAX_NEW):
            if not live:
                break
            seqs = [prefixes[i] + out[i] for i in live]
            batch = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.long)
            for row, seq in enumerate(seqs):
                batch[row, : len(seq)] = torch.tensor(seq)
            hidden = model.hf_model.model(input_ids=batch, use_cache=False).last_hidden_state
            last = hidden[torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])]
            logits = model.hf_model.lm_head(last)
            if getattr(model.hf_model.config, "final_logit_softcapping", None):
                cap = model.hf_model.config.final_logit_softcapping
                logits = torch.tanh(logits / cap) * cap
            kept = []
            for row, i in enumerate(live):
                logits_per_step[i].append(logits[row])
                token = int(logits[row].argmax())
                if token not in stop:
                    out[i].append(token)
                    kept.append(i)
            live = kept
    return list(zip(out, logits_per_step, strict=True))


class Real:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        stats = collect_statistics(model, safety_set(), batch_size=6, progress=False)
        self.plan = compute_plan(model, stats, EditSettings(rho_attn=0.15, alpha=0.5))
        self.vectors = SteeringVectors.from_statistics(stats)
        self.unedited = self.cached()

    def cached(self) -> list[list[int]]:
        gens = generate(self.model, PROMPTS, GenerationSettings(max_new_tokens=MAX_NEW, batch_size=len(PROMPTS)))
        return [list(g.token_ids) for g in gens]

    @contextlib.contextmanager
    def state(self, name: str) -> Iterator[None]:
        if name == "unedited":
            yield
        elif name == "edited":
            applied = apply_plan(self.model, self.plan)
            try:
                yield
            finally:
                revert(self.model, applied)
        else:
            with steered(self.model, self.vectors, gamma=1.0):
                yield


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m"])
def real(request: pytest.FixtureRequest) -> Real:
    if request.param == "smollm2-135m-instruct":
        return Real(request.getfixturevalue("default_model"))
    return Real(load_model(request.param, progress=False))


@pytest.mark.parametrize("state", ["unedited", "edited", "steered"])
def test_cached_generation_equals_the_recomputing_argmax_loop(real: Real, state: str) -> None:
    assert real.plan.n_edited["heads"] > 0
    with real.state(state):
        cached = real.cached() if state != "unedited" else real.unedited
        reference = recomputing_greedy(real.model, PROMPTS)
        for prompt, got, (want, logits) in zip(PROMPTS, cached, reference, strict=True):
            if got == want:
                continue
            first = next(
                (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want))
            )
            step = logits[first]
            taken = step[got[first]] if first < len(got) else step[eos_token_ids(real.model)].max()
            margin = float(step.max() - taken)
            tok = real.model.tokenizer
            assert margin <= TIE, (
                f"{real.model.card.name} ({state}) {prompt!r}: cached {tok.decode(got)!r} != "
                f"recomputed {tok.decode(want)!r} from token {first} (logit margin {margin:.3g})"
            )
    if state != "unedited":  # the intervention acted on decoding, not only on the prompt
        assert cached != real.unedited


def test_generations_read_as_text(real: Real) -> None:
    texts = [real.model.tokenizer.decode(ids) for ids in real.unedited]
    assert not any(health.metrics.is_degenerate(t) for t in texts[:2]), texts
    assert health.known_answers_check(real.model).ok


@contextlib.contextmanager
def cache_hidden_from_attention(model: LoadedModel) -> Iterator[None]:
    """Simulate the 5.24 break on any stack: the bridge's attention gets no cache at all."""

    def drop(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "layer_past")}

    handles = [
        m.register_forward_pre_hook(drop, with_kwargs=True, prepend=True)
        for m in model.bridge.modules()
        if isinstance(m, AttentionBridge)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def test_the_checks_catch_a_cache_the_attention_does_not_see(default_model: LoadedModel) -> None:
    with cache_hidden_from_attention(default_model):
        check = health.decoding_check(default_model, max_new_tokens=8)
        assert not check.ok and "reinstall" in check.fix
        with pytest.raises(health.StackBrokenError, match="cached generation == uncached argmax loop"):
            health.preflight(default_model)
    assert health.decoding_check(default_model, max_new_tokens=8).ok  # and nothing is left behind
