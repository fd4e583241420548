"""Tiny randomly initialised transformers models, one per supported family, built in-process.

Each is saved with a small character-level tokenizer (and a chat template for chat families)
to a directory, so that it loads through exactly the same path as a real local checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

VOCAB = 128
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _configs() -> dict[str, T.PretrainedConfig]:
    small = dict(vocab_size=VOCAB, max_position_embeddings=1024)  # character-level: prompts are long
    return {
        "llama": T.LlamaConfig(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            **small,
        ),
        "mistral": T.MistralConfig(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=None,
            **small,
        ),
        "qwen2": T.Qwen2Config(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **small,
        ),
        "qwen3": T.Qwen3Config(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            **small,
        ),
        "gemma2": T.Gemma2Config(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=8,
            **small,
        ),
        "gemma3": T.Gemma3TextConfig(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            **small,
        ),
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=1024),
        "gpt_neox": T.GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            rotary_pct=0.5,
            **small,
        ),
    }


FAMILIES = list(_configs())
CHAT_FAMILIES = {"llama", "qwen2", "qwen3", "gemma3"}  # the others get no chat template


def tokenizer(chat: bool) -> T.PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for code in range(32, 127):
        vocab.setdefault(chr(code), len(vocab))
    vocab["\n"] = len(vocab)
    assert len(vocab) <= VOCAB
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.add_special_tokens(SPECIALS)
    tok = T.PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="<|end|>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def build(family: str, directory: Path, seed: int = 0, config: T.PretrainedConfig | None = None) -> Path:
    """Save a tiny random ``family`` model (weights scaled up so heads matter) to ``directory``."""
    cfg = config or _configs()[family]
    cfg.eos_token_id = SPECIALS.index("<|end|>")
    cfg.bos_token_id = SPECIALS.index("<s>")
    cfg.pad_token_id = SPECIALS.index("<pad>")
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # default init (std 0.02) makes nearly constant logits; widen it
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.15)
            elif "norm" not in name and "ln" not in name:
                p.normal_(0.0, 0.05)
    model.save_pretrained(directory)
    tokenizer(chat=family in CHAT_FAMILIES).save_pretrained(directory)
    return directory
