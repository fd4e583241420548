"""Every intervention in one batch: mixed batches (each row under its own intervention) and
shared batches (the measures of several interventions run as one) against one intervention at
a time, where the edit is folded into the weights and steering is the intervention's own hook."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import torch
from conftest import tiny_set

from s2e_lens.behaviours.safety import safety_suite
from s2e_lens.core.items import MultipleChoice
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine import interventions
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.generation import GenerationSettings, generate
from s2e_lens.engine.mixed import MixedHooks, RowEffect
from s2e_lens.engine.scoring import KLReference, score_continuations
from s2e_lens.engine.shared_batches import SharedBatches
from s2e_lens.errors import InvalidInputError
from s2e_lens.experiments import sweep
from s2e_lens.models.loading import load_model
from s2e_lens.models.tokens import encode_prompt, encode_response

PROMPTS = ["abc de", "hello there friend", "x", "the cat sat on the mat again and again", "fg hij"]


def _every_kind(model, stats):  # type: ignore[no-untyped-def]
    vectors = SteeringVectors.from_statistics(stats, W_O=model.bridge.W_O.detach())
    edits = interventions.edit_candidates(model, stats, interventions.grid([0.1, 0.3], [0.0, 0.3], [0.5]))
    return [
        interventions.unedited(),
        *interventions.steering_sweep(vectors, [0.5, 2.0]),
        *edits,
        interventions.iti(model, stats, k=2, gamma=1.0),
        interventions.orthogonalisation(model, vectors),
    ]


# the layouts that differ for the hooks: Llama (plain), Gemma 3 (post-norms after each block
# output), GPT-2 (Conv1D projections, fused qkv), GPT-NeoX (parallel attention and MLP). All eight
# tiny families gave exact tokens when this was written; these four keep CI inside its time.
FAMILIES = ["llama", "gemma3", "gpt2", "gpt_neox"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_case(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]):  # type: ignore[no-untyped-def]
    model = load_model(str(tiny_dirs[request.param]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    return model, _every_kind(model, stats)


def test_shared_generation_gives_the_same_greedy_tokens_on_every_tiny_family(tiny_case) -> None:  # type: ignore[no-untyped-def]
    model, todo = tiny_case
    before = {k: v.clone() for k, v in model.hf_state_dict().items()}
    settings = GenerationSettings(max_new_tokens=12, batch_size=3)
    alone = sweep.measure_each(model, todo, lambda m: generate(m, PROMPTS, settings), shared=False)
    together = sweep.measure_each(model, todo, lambda m: generate(m, PROMPTS, settings), shared=True)
    assert [[g.token_ids for g in gens] for gens in together] == [[g.token_ids for g in gens] for gens in alone]
    assert [[g.text for g in gens] for gens in together] == [[g.text for g in gens] for gens in alone]
    # the equality means something: steering and edits change tokens (not every one on every family)
    unedited = [g.token_ids for g in alone[0]]
    changed = {item.kind for item, gens in zip(todo, alone, strict=True) if [g.token_ids for g in gens] != unedited}
    assert {"steer", "edit"} <= changed, changed
    assert all(torch.equal(v, before[k]) for k, v in model.hf_state_dict().items()) and model.applied_plans == []


def test_shared_scoring_and_kl_match_one_at_a_time(tiny_case) -> None:  # type: ignore[no-untyped-def]
    model, todo = tiny_case
    tok = model.tokenizer
    # two continuations per prompt: each context runs once per intervention (shared contexts)
    pairs = [(encode_prompt(tok, p), encode_response(tok, r)) for p in PROMPTS for r in ("yes and no", "maybe")]
    reference = KLReference(model, [("hi", "there"), ("a b c", "d e f g")])
    for fn in (reference.kl, lambda m: [s.logprob for s in score_continuations(m, pairs, batch_size=2)]):
        alone = sweep.measure_each(model, todo, fn, shared=False)
        together = sweep.measure_each(model, todo, fn, shared=True)
        assert torch.tensor(together, dtype=torch.float64) == pytest.approx(
            torch.tensor(alone, dtype=torch.float64), abs=1e-5, rel=1e-5
        )
    assert reference.kl(model) == 0.0  # the reference's own model: no KL
    assert len(set(sweep.measure_each(model, todo, reference.kl, shared=True))) == len(todo)


def test_each_row_gets_its_own_slot(tiny_dirs: dict[str, Path]) -> None:
    """Rows of one forward pass, three slots: each row's logits are its intervention's, and
    the rows' order does not matter."""
    model = load_model(str(tiny_dirs["qwen2"]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    steer, edit = _every_kind(model, stats)[2], _every_kind(model, stats)[4]
    ids = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (1, 7))
    with torch.inference_mode():
        plain = model.hf_model(ids).logits
        plain_4 = model.hf_model(ids.repeat(4, 1)).logits  # the same batch shape as the mixed pass
        with steer.active(model):
            steered = model.hf_model(ids).logits
        with edit.active(model):
            edited = model.hf_model(ids).logits
        effects = [RowEffect(), steer.row_effect(), edit.row_effect()]
        mixed = MixedHooks(model, effects)  # type: ignore[arg-type]
        with mixed.active():
            with mixed.rows([2, 0, 1, 2]):
                out = model.hf_model(ids.repeat(4, 1)).logits
            with pytest.raises(InvalidInputError, match="without saying which intervention each row"):
                model.hf_model(ids)
            with pytest.raises(InvalidInputError, match="4 rows but 2 slots"), mixed.rows([0, 1]):
                model.hf_model(ids.repeat(4, 1))
    assert torch.equal(out[1], plain_4[1])  # the unedited slot adds nothing at all
    torch.testing.assert_close(out[2], steered[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0], edited[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[3], edited[0], atol=1e-5, rtol=1e-5)
    assert float((edited - plain).abs().max()) > 1e-3 and float((steered - plain).abs().max()) > 1e-3
    with torch.inference_mode():
        assert torch.equal(model.hf_model(ids).logits, plain)  # the hooks are gone


def test_sampled_generation_in_shared_batches_is_reproducible(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    todo = _every_kind(model, stats)[:4]
    settings = GenerationSettings(max_new_tokens=6, temperature=1.0, n=3, seed=5)
    runs = [sweep.measure_each(model, todo, lambda m: generate(m, PROMPTS, settings)) for _ in range(2)]
    assert [[g.token_ids for g in gens] for gens in runs[0]] == [[g.token_ids for g in gens] for gens in runs[1]]
    assert all(len(gens) == 3 * len(PROMPTS) and [g.prompt for g in gens[::3]] == PROMPTS for gens in runs[0])


def test_a_failing_measure_names_its_intervention_and_stops_the_others(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    todo = _every_kind(model, stats)[:4]
    calls: list[str] = []

    def measure(m):  # type: ignore[no-untyped-def]
        first = generate(m, PROMPTS[:2], GenerationSettings(max_new_tokens=2))
        calls.append(m.shared.slot)
        if m.shared.slot == 2:
            raise ValueError("boom")
        return generate(m, PROMPTS, GenerationSettings(max_new_tokens=2)) + first

    with pytest.raises(ValueError, match="boom") as caught:
        sweep.measure_each(model, todo, measure)
    assert any(todo[2].label in note for note in caught.value.__notes__)
    with pytest.raises(InvalidInputError, match="cannot be nested"):
        SharedBatches(SharedBatches(model, [RowEffect()]).view(0), [RowEffect()])
    ids = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (1, 5))
    with torch.inference_mode():  # no hook left on the model: a plain pass runs, and as before
        assert torch.equal(model.hf_model(ids).logits, model.hf_model(ids).logits)
    assert model.shared is None and model.steering == [] and model.applied_plans == []


def test_an_intervention_that_cannot_share_runs_alone(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    custom = interventions.Intervention("custom", "mine", hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 1.5)])
    assert custom.row_effect() is None
    todo = [interventions.unedited(), custom]
    assert not sweep.sharing(todo)
    seen = sweep.measure_each(model, todo, lambda m: (m.shared, list(m.steering)))
    assert seen == [(None, []), (None, ["mine"])]


def test_a_sweep_in_shared_batches_gives_the_same_table(tiny_dirs: dict[str, Path]) -> None:
    """A real suite (safety, judged, with utility items and KL) on a tiny model: the table and
    every generation record are the same either way."""
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    items = [MultipleChoice("Q: a or b?", (" a", " b"), 1, "test"), MultipleChoice("x y", (" z", " w"), 0, "test")]
    suite = safety_suite(
        model,
        PROMPTS[:3],
        PROMPTS[3:],
        mc_items=items,
        benign_pairs=[("hi", "there"), ("ab", "cd")],
        max_new_tokens=8,
    )
    assert suite.shareable
    todo = _every_kind(model, stats)
    records: list[sweep.Records] = [{}, {}]
    tables = [
        sweep.run(model, suite, todo, progress=False, shared=shared, records=records[i])
        for i, shared in enumerate((False, True))
    ]
    columns = [c for c in tables[0].columns if c != "seconds"]
    assert tables[0]["attribute"].nunique() > 1 or tables[0]["kl"].nunique() > 1
    for c in columns:
        a, b = tables[0][c].tolist(), tables[1][c].tolist()
        if all(isinstance(x, float) for x in a):
            assert b == pytest.approx(a, abs=1e-5, rel=1e-5, nan_ok=True), c
        else:
            assert b == a, c
    assert [[g["text"] for g in r["generations"]] for r in records[0].values()] == [
        [g["text"] for g in r["generations"]] for r in records[1].values()
    ]


@pytest.mark.slow
def test_on_the_default_model_tokens_agree_and_every_steps_logits_are_close(default_model, default_stats) -> None:
    """The real model: at least 99% of greedy tokens the same as one intervention at a time,
    and at every step of those generations (teacher-forced on the one-at-a-time tokens) the
    logits within 1e-4 of the folded edit / the steering hook."""
    from s2e_lens.behaviours.safety import safety_prompts
    from s2e_lens.models.tokens import pad

    model = default_model
    vectors = SteeringVectors.from_statistics(default_stats)
    edits = interventions.edit_candidates(model, default_stats, interventions.grid([0.1, 0.3], [0.0], [0.5, 0.8]))
    todo = [interventions.unedited(), *interventions.steering_sweep(vectors, [0.5, 2.0]), *edits[:2]]
    prompts = safety_prompts("test")["harmful"][:6] + safety_prompts("test")["harmless"][:6]
    settings = GenerationSettings(max_new_tokens=16)
    alone = sweep.measure_each(model, todo, lambda m: generate(m, prompts, settings), shared=False)
    together = sweep.measure_each(model, todo, lambda m: generate(m, prompts, settings), shared=True)
    same = total = 0
    for a_gens, b_gens in zip(alone, together, strict=True):
        for a, b in zip(a_gens, b_gens, strict=True):
            total += max(len(a.token_ids), len(b.token_ids))
            same += sum(x == y for x, y in zip(a.token_ids, b.token_ids, strict=False))
    assert same / total >= 0.99, (same, total)
    # each step's logits: the sequences one-at-a-time made, scored under each intervention alone and mixed
    texts = [[model.prompt_ids(p) + list(g.token_ids) for p, g in zip(prompts, gens, strict=True)] for gens in alone]
    pad_id = model.tokenizer.pad_token_id or 0

    def logits_of(seqs: list[list[int]]) -> torch.Tensor:
        batch = pad(seqs, pad_id, "left")
        return model.hf_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits

    with torch.inference_mode():
        expected = []
        for item, seqs in zip(todo, texts, strict=True):
            with item.active(model):
                expected.append(logits_of(seqs))
        mixed = MixedHooks(model, [item.row_effect() for item in todo])  # type: ignore[misc]
        with mixed.active(), mixed.rows([k for k in range(len(todo)) for _ in prompts]):
            got = logits_of([s for seqs in texts for s in seqs])
    for k, e in enumerate(expected):
        g = got[k * len(prompts) : (k + 1) * len(prompts), got.shape[1] - e.shape[1] :]
        mask = pad(texts[k], pad_id, "left").attention_mask.bool()
        diff = float((g - e).abs()[mask].max())
        if todo[k].plan is None:  # unedited and steering: the same additions, to float rounding
            assert diff <= 1e-4, (todo[k].label, diff)
            continue
        # an edit: folded (x @ (W + BA)^T) and added per row (x @ W^T + (x @ A^T) @ B^T) round
        # differently, and over 30 layers and up to 70 positions float32 itself is the floor:
        # both must be as close to the float64 truth as each other, or within 1e-4 of each other
        truth = _float64_edited_logits(model, todo[k].plan, texts[k])
        folded_error = float((e[mask].double() - truth).abs().max())
        mixed_error = float((g[mask].double() - truth).abs().max())
        assert diff <= 1e-4 or mixed_error <= 2 * folded_error, (todo[k].label, diff, mixed_error, folded_error)


def _float64_edited_logits(model, plan, seqs):  # type: ignore[no-untyped-def]
    """The plan folded in float64 into a float64 copy of the transformers model: the logits
    at every position of every sequence, one after another."""
    from transformers import AutoModelForCausalLM

    from s2e_lens.core.low_rank import low_rank_updates
    from s2e_lens.engine.adapters import module_names

    base = AutoModelForCausalLM.from_pretrained(model.card.checkpoint, attn_implementation="eager").double().eval()
    updates = low_rank_updates([plan])
    names = module_names(model, updates)
    with torch.no_grad():
        for u in updates:
            base.get_submodule(names[(u.kind, u.layer)]).weight += u.B.double() @ u.A.double()
        # one sequence at a time: no padding (in float64 eager attention a padded row is NaN)
        return torch.cat([base(input_ids=torch.tensor([ids])).logits[0] for ids in seqs])
