"""Scoring text with a model: log-likelihoods of continuations, multiple choice, benign
cross-entropy, and KL to a reference model.

Every function runs the model as it is (unedited, edited, or inside ``steered(...)``), so the
same call measures any intervention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from s2e_lens.core import metrics
from s2e_lens.core.items import MultipleChoice
from s2e_lens.engine.batching import BatchSize, in_chunks, resolve
from s2e_lens.engine.mixed import MixedHooks, RowSlots
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.tokens import encode_prompt, encode_response, pad, pad_token_id

DEFAULT_BATCH_SIZE = 16  # on the CPU
MIXED_KL_TEXTS = 64  # texts per batch of a mixed KL pass (each keeps full-vocabulary rows)


@dataclass(frozen=True)
class Scored:
    logprob: float  # sum of log-probabilities of the continuation's tokens
    n_tokens: int

    @property
    def mean(self) -> float:
        return metrics.length_normalised(self.logprob, self.n_tokens)


def continuation_logprobs(
    model: LoadedModel,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: BatchSize = None,
    progress: bool = False,
    rows: RowSlots | None = None,
) -> Iterator[tuple[int, Float[torch.Tensor, "n_cont vocab"]]]:
    """For each (context, continuation) pair of token ids, the log-softmax over the vocabulary
    at the positions that predict the continuation's tokens. Yields ``(index, logprobs)`` in
    batches sorted by length (not in input order). Left padding with explicit position ids, so
    a padded row computes exactly what it would alone; logits only where they are needed.
    ``rows`` gives each pair its own intervention (a mixed batch)."""
    if model.shared is not None:
        raise InvalidInputError(
            "continuation_logprobs keeps every row's full-vocabulary log-probabilities; in shared "
            "batches use score_continuations or a KLReference, which reduce them as they go"
        )
    pad_id = pad_token_id(model.tokenizer)
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise InvalidInputError(f"continuation {i} is empty")
        if not ctx:
            raise InvalidInputError(f"context {i} is empty: the first token has nothing to condition on")
        model.check_context(len(ctx) + len(cont), f"scored text {i}")
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))

    def run(idx: Sequence[int]) -> torch.Tensor:
        # left padding: every continuation ends at the last position
        batch = pad([pairs[i][0] + pairs[i][1] for i in idx], pad_id, "left")
        keep = max(len(pairs[i][1]) for i in idx) + 1  # logits only where a continuation is predicted
        with torch.inference_mode(), rows.of(idx) if rows is not None else contextlib.nullcontext():
            logits = model.hf_model(
                input_ids=batch.input_ids.to(model.device),
                attention_mask=batch.attention_mask.to(model.device),
                position_ids=batch.position_ids.to(model.device),
                use_cache=False,
                logits_to_keep=keep,
            ).logits.float()
        return torch.log_softmax(logits[:, :-1], dim=-1)  # predicts the last keep - 1 tokens

    size = resolve(batch_size, model.device, DEFAULT_BATCH_SIZE)
    with tqdm(total=len(order), desc="scoring", unit="text", disable=not progress, leave=False) as bar:
        for idx, logp in in_chunks(order, size, run, what="scoring"):
            bar.update(len(idx))
            for row, i in enumerate(idx):
                n = len(pairs[i][1])
                yield i, logp[row, logp.shape[1] - n :]


def score_continuations(
    model: LoadedModel,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: BatchSize = None,
    progress: bool = False,
    rows: RowSlots | None = None,
) -> list[Scored]:
    """Log-probability of each continuation (token ids) given its context (token ids)."""
    if model.shared is not None:
        return cast(list[Scored], model.shared.score(pairs, batch_size))
    out: list[Scored | None] = [None] * len(pairs)
    for i, logp in continuation_logprobs(model, pairs, batch_size=batch_size, progress=progress, rows=rows):
        cont = torch.tensor(pairs[i][1], device=logp.device)
        out[i] = Scored(float(logp.gather(-1, cont[:, None]).sum()), len(pairs[i][1]))
    return [s for s in out if s is not None]


# ------------------------------------------------------------------------------- utility


def multiple_choice_correct(
    model: LoadedModel, items: Sequence[MultipleChoice], *, normalise: bool = True, batch_size: BatchSize = None
) -> list[bool]:
    """Log-likelihood multiple choice (plain text, no chat template), per item: does the choice
    with the highest (length-normalised, by default) log-probability match the answer?"""
    tok = model.tokenizer
    pairs, owners = [], []
    for i, item in enumerate(items):
        ctx = list(tok(item.context, add_special_tokens=True)["input_ids"])
        for choice in item.choices:
            pairs.append((ctx, encode_response(tok, choice)))
            owners.append(i)
    scored = score_continuations(model, pairs, batch_size=batch_size)
    per_item: list[list[float]] = [[] for _ in items]
    for owner, s in zip(owners, scored, strict=True):
        per_item[owner].append(s.mean if normalise else s.logprob)
    return metrics.mc_correct(per_item, [item.answer for item in items])


def multiple_choice_accuracy(
    model: LoadedModel, items: Sequence[MultipleChoice], *, normalise: bool = True, batch_size: BatchSize = None
) -> float:
    """The share of :func:`multiple_choice_correct` items."""
    correct = multiple_choice_correct(model, items, normalise=normalise, batch_size=batch_size)
    return sum(correct) / len(correct)


def response_cross_entropy(
    model: LoadedModel, pairs: Sequence[tuple[str, str]], *, batch_size: BatchSize = None
) -> float:
    """Mean per-token negative log-likelihood of reference responses (chat-formatted)."""
    tok = model.tokenizer
    encoded = [(encode_prompt(tok, p), encode_response(tok, r)) for p, r in pairs]
    scored = score_continuations(model, encoded, batch_size=batch_size)
    return -sum(s.logprob for s in scored) / sum(s.n_tokens for s in scored)


class KLReference:
    """Next-token distributions of a model (usually the unedited one) on fixed texts, to
    measure later how far an intervention moves them: KL(reference || current)."""

    def __init__(self, model: LoadedModel, pairs: Sequence[tuple[str, str]], batch_size: BatchSize = None) -> None:
        tok = model.tokenizer
        self.encoded = [(encode_prompt(tok, p), encode_response(tok, r)) for p, r in pairs]
        self.batch_size = resolve(batch_size, model.device, 8)  # each text keeps full-vocabulary rows
        self.reference = self._logprobs(model)

    def _logprobs(self, model: LoadedModel) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(self.encoded)
        for i, logp in continuation_logprobs(model, self.encoded, batch_size=self.batch_size):
            out[i] = logp.cpu()
        return [t for t in out if t is not None]

    def kl_by_text(self, model: LoadedModel) -> list[list[float]]:
        """KL(reference || current) at every scored position, one row per text (rows differ
        in length); the mean over all entries is :meth:`kl`."""
        if model.shared is not None:
            return model.shared.kl_by_text(self)
        current = self._logprobs(model)
        return [[float(v) for v in metrics.kl_per_position(r, c)] for r, c in zip(self.reference, current, strict=True)]

    def kl_by_text_mixed(self, model: LoadedModel, hooks: MixedHooks, slots: Sequence[int]) -> list[list[list[float]]]:
        """:meth:`kl_by_text` under each of ``slots`` of ``hooks`` at once (each text scored once
        per slot, in mixed batches), reduced to KL as each batch finishes."""
        n = len(self.encoded)
        pairs = [pair for _ in slots for pair in self.encoded]
        size = self.batch_size if self.batch_size == "auto" else min(self.batch_size * len(slots), MIXED_KL_TEXTS)
        out: list[list[list[float]]] = [[[] for _ in range(n)] for _ in slots]
        rows = RowSlots(hooks, [s for s in slots for _ in range(n)])
        for i, logp in continuation_logprobs(model, pairs, batch_size=size, rows=rows):
            k, t = divmod(i, n)
            out[k][t] = [float(v) for v in metrics.kl_per_position(self.reference[t], logp.cpu())]
        return out

    def kl(self, model: LoadedModel) -> float:
        """The mean KL per position over all texts (longer texts weigh more)."""
        rows = self.kl_by_text(model)
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
