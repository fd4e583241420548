"""The transformers architecture families s2e_lens supports.

Support means: the model boots into a TransformerBridge in raw mode with logits equal to
transformers', exposes ``blocks.{l}.attn.hook_z`` / ``blocks.{l}.mlp.hook_post``, the
pre-post-norm block outputs ``blocks.{l}.attn.hook_out`` / ``blocks.{l}.mlp.hook_out``, and
``W_O`` / ``W_out`` views that the edit mapper writes through. Every family below is checked by
the test suite on a tiny random model built from its config.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2e_lens.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Family:
    """An architecture family: the transformers ``model_type`` values it covers."""

    name: str
    model_types: tuple[str, ...]
    attn_out: str  # the transformers module written by a head edit (per layer)
    mlp_out: str  # the transformers module written by a neuron edit (per layer)
    notes: str


FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        ("llama", "mistral"),
        "self_attn.o_proj",
        "mlp.down_proj",
        "RMSNorm, rotary, gated SiLU MLP, grouped-query attention; SmolLM2 is one",
    ),
    Family(
        "qwen",
        ("qwen2", "qwen3"),
        "self_attn.o_proj",
        "mlp.down_proj",
        "Llama-like; Qwen2 has q/k/v biases, Qwen3 q/k norms",
    ),
    Family(
        "gemma",
        ("gemma2", "gemma3_text"),
        "self_attn.o_proj",
        "mlp.down_proj",
        "post-attention and post-MLP norms (edits act before them), sliding-window layers",
    ),
    Family(
        "gpt2",
        ("gpt2",),
        "attn.c_proj",
        "mlp.c_proj",
        "LayerNorm, learned positions, Conv1D weights stored [in, out], biases",
    ),
    Family(
        "gpt_neox",
        ("gpt_neox",),
        "attention.dense",
        "mlp.dense_4h_to_h",
        "Pythia; parallel attention and MLP, partial rotary, biases",
    ),
)

_BY_MODEL_TYPE = {mt: fam for fam in FAMILIES for mt in fam.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for(model_type: str) -> Family:
    """The family of a transformers ``model_type``; unsupported types raise a clear error."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture model_type={model_type!r} is not supported by s2e_lens. Supported: "
            f"{', '.join(supported_model_types())}. To add one, see 'Adding a model' in the README."
        ) from None
