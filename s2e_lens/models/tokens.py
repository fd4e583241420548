"""Token ids the way the model expects them: prompts, responses, and padded batches.

Models with a chat template get the prompt as the user turn plus the generation prompt;
models without one (base models) get the prompt text as it is. The templated text already
holds whatever special tokens the template wants, so it is encoded without adding more;
plain text is encoded with the tokenizer's own special tokens (e.g. Gemma's ``<bos>``).

:func:`pad` is the one padding helper: every batch (statistics, scoring, generation,
benchmarks) goes through it, with position ids that count real tokens only, so a padded row
computes exactly what it would alone, whichever side the padding is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from transformers import PreTrainedTokenizerBase

from s2e_lens.core.contrastive import ContrastiveSetError, Pair
from s2e_lens.errors import InvalidInputError


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, system: str | None = None) -> str:
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


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, system: str | None = None) -> list[int]:
    """Token ids of the rendered prompt (see module docstring for special tokens)."""
    text = render_prompt(tokenizer, prompt, system=system)
    ids = tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    return list(ids)


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Token ids of a response continuing a rendered prompt (no special tokens added)."""
    return list(tokenizer(response, add_special_tokens=False)["input_ids"])


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS token. Padded positions are
    masked out, so the choice never changes a result."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value[0] if isinstance(value, list) else value)
    raise InvalidInputError("the tokenizer has neither a pad nor an EOS token; give it one (tokenizer.pad_token = ...)")


@dataclass(frozen=True)
class Padded:
    """Sequences of different lengths in one tensor: ``offsets[b]`` is where row b starts."""

    input_ids: Int[torch.Tensor, "batch seq"]
    attention_mask: Int[torch.Tensor, "batch seq"]
    position_ids: Int[torch.Tensor, "batch seq"]  # counts real tokens only
    offsets: tuple[int, ...]


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"] = "left") -> Padded:
    """Stack ``seqs`` into one batch, padded on ``side`` with ``pad_id``.

    >>> p = pad([[5, 6, 7], [8]], pad_id=0)
    >>> p.input_ids.tolist(), p.attention_mask.tolist(), p.position_ids.tolist(), p.offsets
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]], [[0, 1, 2], [0, 0, 0]], (0, 2))
    """
    if side not in ("left", "right"):
        raise InvalidInputError(f"padding_side must be 'left' or 'right', got {side!r}")
    if not seqs:
        raise InvalidInputError("nothing to pad: no sequences")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(seqs):
        off = width - len(seq) if side == "left" else 0
        ids[row, off : off + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, off : off + len(seq)] = 1
        offsets.append(off)
    return Padded(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), tuple(offsets))


# --------------------------------------------------------------- contrastive samples


POSITIONS = ("response", "prompt_end", "both")  # where statistics average (EncodedSample.window)


@dataclass(frozen=True)
class EncodedSample:
    """One (prompt, response) pair as token ids; ``start`` = length of the rendered prompt."""

    ids: tuple[int, ...]
    start: int

    @property
    def end(self) -> int:
        return len(self.ids)

    @property
    def n_response(self) -> int:
        return self.end - self.start

    def window(self, positions: str = "response", prompt_positions: int = 4) -> tuple[int, int]:
        """The positions ``[lo, hi)`` a statistic averages over: ``response`` = the
        response-predicting positions ``[start - 1, end - 1)``; ``prompt_end`` = the last
        ``prompt_positions`` tokens of the rendered prompt ``[start - n, start)``, where a
        model decides before its first response token (e.g. to refuse); ``both`` = their union.

        >>> s = EncodedSample((1, 2, 3, 4, 5, 6), start=4)
        >>> s.window(), s.window("prompt_end", 2), s.window("both", 2), s.window("prompt_end", 9)
        ((3, 5), (2, 4), (2, 5), (0, 4))
        """
        if positions not in POSITIONS:
            raise InvalidInputError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        if prompt_positions < 1:
            raise InvalidInputError(f"prompt_positions must be >= 1, got {prompt_positions}")
        prompt_lo = max(0, self.start - prompt_positions)
        if positions == "response":
            return self.start - 1, self.end - 1
        if positions == "prompt_end":
            return prompt_lo, self.start
        return prompt_lo, self.end - 1


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[Pair],
    *,
    side: str = "",
    system: str | None = None,
    reference_strip: bool = False,
) -> list[EncodedSample]:
    """Render each prompt (chat template or plain) and append the response's tokens.

    The prompt and the response are tokenised separately and concatenated, so ``start`` is
    exact: the response-predicting positions are ``[start - 1, end - 1)``.

    ``reference_strip=True`` reproduces the reference implementation's extraction instead (a
    quirk, off by default): the rendered prompt is ``.strip()``-ed, which drops a chat
    template's trailing newline, the response text is appended to it, the whole string is
    tokenised with the tokenizer's default special tokens, and ``start`` is the token count of
    the stripped prompt alone. Its own evaluation does not strip, so the vectors it extracts
    come from prompts the model never sees when it answers.
    """
    if reference_strip:
        return [_reference_sample(tokenizer, pair, i, side, system) for i, pair in enumerate(pairs)]
    out = []
    for i, pair in enumerate(pairs):
        prompt_ids = encode_prompt(tokenizer, pair.prompt, system=system)
        response_ids = encode_response(tokenizer, pair.response)
        if not response_ids:
            raise ContrastiveSetError(
                f"{side} pair {i}: the response {pair.response!r} tokenises to nothing, so there "
                "is no position to average over. Give it a non-empty response or drop the pair."
            )
        if not prompt_ids:
            raise ContrastiveSetError(
                f"{side} pair {i}: the prompt tokenises to nothing; the first response token "
                "needs at least one token before it."
            )
        out.append(EncodedSample(tuple(prompt_ids + response_ids), len(prompt_ids)))
    return out


def _reference_sample(
    tokenizer: PreTrainedTokenizerBase, pair: Pair, i: int, side: str, system: str | None
) -> EncodedSample:
    base = render_prompt(tokenizer, pair.prompt, system=system).strip()
    start = len(tokenizer(base)["input_ids"])
    ids = list(tokenizer(base + pair.response)["input_ids"])
    if len(ids) <= start or start < 1:
        raise ContrastiveSetError(
            f"{side} pair {i}: with the reference's stripped prompt the response adds no tokens "
            f"({start} prompt tokens, {len(ids)} in all); drop the pair or turn reference_strip off"
        )
    return EncodedSample(tuple(ids), start)


@dataclass(frozen=True)
class Batch:
    """A padded batch with its per-position averaging weights.

    ``weights[b, s]`` is ``1 / n_response(b)`` on sample b's response-predicting positions and
    0 elsewhere, so ``einsum('bs,bs...->...', weights, act)`` sums the per-sample means.
    """

    input_ids: Int[torch.Tensor, "batch seq"]
    attention_mask: Int[torch.Tensor, "batch seq"]
    position_ids: Int[torch.Tensor, "batch seq"]  # counts real tokens only, so padding side is moot
    weights: Float[torch.Tensor, "batch seq"]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def make_batches(
    samples: Sequence[EncodedSample],
    batch_size: int,
    pad_id: int,
    *,
    padding_side: Literal["left", "right"] = "right",
    positions: str = "response",
    prompt_positions: int = 4,
) -> list[Batch]:
    """Group samples (in order) into padded batches; each sample's :meth:`EncodedSample.window`
    gets weights that average over it."""
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    batches = []
    for lo in range(0, len(samples), batch_size):
        chunk = samples[lo : lo + batch_size]
        padded = pad([s.ids for s in chunk], pad_id, padding_side)
        weights = torch.zeros(padded.input_ids.shape, dtype=torch.float32)
        for row, (s, off) in enumerate(zip(chunk, padded.offsets, strict=True)):
            lo, hi = s.window(positions, prompt_positions)
            weights[row, off + lo : off + hi] = 1.0 / (hi - lo)
        batches.append(Batch(padded.input_ids, padded.attention_mask, padded.position_ids, weights))
    return batches
