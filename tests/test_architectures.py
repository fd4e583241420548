"""Every supported family boots through the loader with the hooks, shapes and logits we rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import torch
import transformers as T

from s2e_lens.errors import UnsupportedArchitectureError
from s2e_lens.models.architectures import FAMILIES, family_for, supported_model_types
from s2e_lens.models.loading import load_model


def _expected_shapes(cfg: T.PretrainedConfig) -> dict[str, int]:
    d_model = cfg.hidden_size
    n_heads = cfg.num_attention_heads
    d_head = getattr(cfg, "head_dim", None) or d_model // n_heads
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d_model
    return dict(n_layers=cfg.num_hidden_layers, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp, d_model=d_model)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_tiny_model_boots_with_hooks_shapes_and_logit_parity(family: str, tiny_dirs: dict[str, Path]) -> None:
    path = tiny_dirs[family]
    loaded = load_model(str(path), progress=False)
    plain = T.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    s = _expected_shapes(plain.config)
    card = loaded.card
    assert (card.n_layers, card.n_heads, card.d_head, card.d_mlp, card.d_model) == (
        s["n_layers"],
        s["n_heads"],
        s["d_head"],
        s["d_mlp"],
        s["d_model"],
    )
    assert card.source_kind == "local"
    assert card.n_params == sum(p.numel() for p in {id(p): p for p in plain.parameters()}.values())

    bridge = loaded.bridge
    assert tuple(bridge.W_O.shape) == (s["n_layers"], s["n_heads"], s["d_head"], s["d_model"])
    assert tuple(bridge.W_out.shape) == (s["n_layers"], s["d_mlp"], s["d_model"])

    torch.manual_seed(1)
    ids = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (3, 17))
    wanted = {
        f"blocks.{layer}.{hook}"
        for layer in range(s["n_layers"])
        for hook in ("attn.hook_z", "mlp.hook_post", "attn.hook_out", "mlp.hook_out")
    }
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in wanted)
        expected = plain(ids).logits
    assert set(cache.keys()) == wanted
    for layer in range(s["n_layers"]):
        assert tuple(cache[f"blocks.{layer}.attn.hook_z"].shape) == (3, 17, s["n_heads"], s["d_head"])
        assert tuple(cache[f"blocks.{layer}.mlp.hook_post"].shape) == (3, 17, s["d_mlp"])
        assert tuple(cache[f"blocks.{layer}.attn.hook_out"].shape) == (3, 17, s["d_model"])
    assert (logits - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_attn_hook_out_is_z_times_W_O_plus_bias(family: str, tiny_dirs: dict[str, Path]) -> None:
    """The pre-post-norm attention output equals sum_h z_h W_O[h] + b_O, computed independently."""
    loaded = load_model(str(tiny_dirs[family]), progress=False)
    bridge = loaded.bridge
    ids = torch.randint(len(tiny.SPECIALS), tiny.VOCAB, (2, 9))
    names = {"blocks.1.attn.hook_z", "blocks.1.attn.hook_out", "blocks.1.mlp.hook_post", "blocks.1.mlp.hook_out"}
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    z, out = cache["blocks.1.attn.hook_z"], cache["blocks.1.attn.hook_out"]
    W_O = bridge.blocks[1].attn.W_O  # [heads, d_head, d_model]
    b_O = bridge.blocks[1].attn.b_O
    manual = torch.einsum("bshd,hdm->bsm", z, W_O) + (b_O if b_O is not None else 0)
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)
    post, mlp_out = cache["blocks.1.mlp.hook_post"], cache["blocks.1.mlp.hook_out"]
    b_out = bridge.blocks[1].mlp.b_out
    manual = post @ bridge.blocks[1].mlp.W_out + (b_out if b_out is not None else 0)
    torch.testing.assert_close(mlp_out, manual, rtol=1e-5, atol=1e-5)


def test_every_family_is_covered_by_a_tiny_model() -> None:
    covered = {tiny._configs()[f].model_type for f in tiny.FAMILIES}
    assert covered == set(supported_model_types())
    assert {fam.name for fam in FAMILIES} == {family_for(mt).name for mt in covered}


def test_unsupported_architecture_is_refused_before_loading_weights(tmp_path: Path) -> None:
    cfg = T.OPTConfig(
        vocab_size=tiny.VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        word_embed_proj_dim=32,
    )
    path = tiny.build("opt", tmp_path / "opt", config=cfg)
    (path / "model.safetensors").write_bytes(b"not a checkpoint")  # would fail if it were read
    with pytest.raises(UnsupportedArchitectureError, match="model_type='opt'.*Supported: .*llama"):
        load_model(str(path), progress=False)
