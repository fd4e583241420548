"""Turning prompts (and responses) into token ids the way the model expects.

Models with a chat template get the prompt as the user turn plus the generation prompt;
models without one (base models) get the prompt text as it is. The templated text already
holds whatever special tokens the template wants, so it is encoded without adding more;
plain text is encoded with the tokenizer's own special tokens (e.g. Gemma's ``<bos>``).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, *, system: str | None = None
) -> str:
    """The text the model sees before its answer: chat-templated, or the prompt as is."""
    if not has_chat_template(tokenizer):
        if system:
            return f"{system}\n\n{prompt}"
        return prompt
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    return text


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, *, system: str | None = None
) -> list[int]:
    """Token ids of the rendered prompt (see module docstring for special tokens)."""
    text = render_prompt(tokenizer, prompt, system=system)
    ids = tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    return list(ids)


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Token ids of a response continuing a rendered prompt (no special tokens added)."""
    return list(tokenizer(response, add_special_tokens=False)["input_ids"])
