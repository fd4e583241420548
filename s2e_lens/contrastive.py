"""Contrastive sets: the positive (wanted) and negative (prompt, response) pairs of a behaviour,
and their encoding into token ids with the positions that predict the response."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from s2e_lens.chat import encode_prompt, encode_response
from s2e_lens.errors import InvalidInputError, S2EError


class ContrastiveSetError(S2EError, ValueError):
    """A contrastive set that cannot be used (empty, blank responses, ...)."""


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str


@dataclass(frozen=True)
class ContrastiveSet:
    """Positive pairs show the behaviour we want; negative pairs show its opposite."""

    positive: tuple[Pair, ...]
    negative: tuple[Pair, ...]
    provenance: dict[str, Any] = field(default_factory=dict)  # where the data came from

    @classmethod
    def from_pairs(
        cls,
        positive: Iterable[Pair | tuple[str, str]],
        negative: Iterable[Pair | tuple[str, str]],
        provenance: dict[str, Any] | None = None,
    ) -> ContrastiveSet:
        def norm(rows: Iterable[Pair | tuple[str, str]], side: str) -> tuple[Pair, ...]:
            out = []
            for i, row in enumerate(rows):
                pair = row if isinstance(row, Pair) else Pair(*row)
                if not isinstance(pair.prompt, str) or not isinstance(pair.response, str):
                    raise ContrastiveSetError(f"{side} pair {i}: prompt and response must be strings")
                out.append(pair)
            if not out:
                raise ContrastiveSetError(
                    f"the {side} set is empty: a steering vector is a difference of two means, "
                    "so both sets need at least one (prompt, response) pair"
                )
            return tuple(out)

        return cls(norm(positive, "positive"), norm(negative, "negative"), dict(provenance or {}))

    def head(self, n: int) -> ContrastiveSet:
        """The first ``n`` pairs of each side (for quick looks and small CI runs)."""
        if n < 1:
            raise ContrastiveSetError(f"n must be at least 1, got {n}")
        return ContrastiveSet(self.positive[:n], self.negative[:n], {**self.provenance, "head": n})


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


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair], *, side: str = "", system: str | None = None
) -> list[EncodedSample]:
    """Render each prompt (chat template or plain) and append the response's tokens.

    The prompt and the response are tokenised separately and concatenated, so ``start`` is
    exact: the response-predicting positions are ``[start - 1, end - 1)``.
    """
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


@dataclass(frozen=True)
class Batch:
    """A padded batch with its per-position averaging weights.

    ``weights[b, s]`` is ``1 / n_response(b)`` on sample b's response-predicting positions and
    0 elsewhere, so ``einsum('bs,bs...->...', weights, act)`` sums the per-sample means.
    """

    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq]
    position_ids: torch.Tensor  # [batch, seq]; counts real tokens only, so padding side is moot
    weights: torch.Tensor  # [batch, seq] float32

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def make_batches(
    samples: Sequence[EncodedSample], batch_size: int, pad_id: int, *, padding_side: str = "right"
) -> list[Batch]:
    """Group samples (in order) into padded batches."""
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise InvalidInputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    batches = []
    for lo in range(0, len(samples), batch_size):
        chunk = samples[lo : lo + batch_size]
        width = max(s.end for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        weights = torch.zeros((len(chunk), width), dtype=torch.float32)
        for row, s in enumerate(chunk):
            off = 0 if padding_side == "right" else width - s.end
            ids[row, off : off + s.end] = torch.tensor(s.ids)
            mask[row, off : off + s.end] = 1
            weights[row, off + s.start - 1 : off + s.end - 1] = 1.0 / s.n_response
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        batches.append(Batch(ids, mask, position_ids, weights))
    return batches
