"""Scoring text with a model: log-likelihoods of continuations, multiple choice, benign
cross-entropy, and KL to a reference model.

Every function runs the model as it is (unedited, edited, or inside ``steered(...)``), so the
same call measures any intervention.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
from jaxtyping import Float
from tqdm.auto import tqdm
from transformers.cache_utils import Cache

from s2e_lens.core import metrics
from s2e_lens.core.items import MultipleChoice
from s2e_lens.engine.batching import BatchSize, in_chunks, resolve
from s2e_lens.engine.mixed import MixedHooks, RowSlots
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.tokens import encode_prompt, encode_response, pad, pad_token_id

T = TypeVar("T")
DEFAULT_BATCH_SIZE = 16  # on the CPU
# shared contexts: a context pass takes this many times the batch size of contexts (they are
# short and keep one logit row each), so that their continuations can be sorted by length
# into batches that pad little
CONTEXTS_PER_BATCH = 4
MIXED_KL_TEXTS = 64  # texts per batch of a mixed KL pass (each keeps full-vocabulary rows)


@dataclass(frozen=True)
class Scored:
    logprob: float  # sum of log-probabilities of the continuation's tokens
    n_tokens: int

    @property
    def mean(self) -> float:
        return metrics.length_normalised(self.logprob, self.n_tokens)


def _sliding_window(model: LoadedModel) -> int | None:
    """The smallest attention window of the model's layers, or None where every layer sees the
    whole sequence."""
    config = model.hf_model.config
    config = getattr(config, "get_text_config", lambda: config)()
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None or (types is not None and "sliding_attention" not in types):
        return None
    return int(window)


def _rows_of(cache: Cache, rows: torch.Tensor) -> Cache:
    """A cache holding ``rows`` of ``cache`` (repeats allowed), which stays as it was: the
    new cache's layers are copies whose key and value tensors are indexed anew."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_select_indices(rows)
    return out


def shared_contexts(
    pairs: Sequence[tuple[list[int], list[int]]], slots: Sequence[int] | None = None
) -> tuple[list[list[int]], list[int]]:
    """The pairs (indices) that share a context with another pair under the same slot, grouped
    by context in first-seen order, and the rest.

    >>> shared_contexts([([1], [2]), ([3], [4]), ([1], [5]), ([1], [6])])
    ([[0, 2, 3]], [1])
    >>> shared_contexts([([1], [2]), ([1], [5])], slots=[0, 1])  # different interventions
    ([], [0, 1])
    """
    groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for i, (ctx, _) in enumerate(pairs):
        groups.setdefault((slots[i] if slots is not None else 0, tuple(ctx)), []).append(i)
    shared = [g for g in groups.values() if len(g) > 1]
    alone = sorted(g[0] for g in groups.values() if len(g) == 1)
    return shared, alone


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
    ``rows`` gives each pair its own intervention (a mixed batch). Each pair runs whole: full
    vocabulary rows are kept for at most ``batch_size`` pairs at a time."""
    if model.shared is not None:
        raise InvalidInputError(
            "continuation_logprobs keeps every row's full-vocabulary log-probabilities; in shared "
            "batches use score_continuations or a KLReference, which reduce them as they go"
        )
    yield from _scored(model, pairs, lambda i, logp: logp, batch_size, progress, rows, share=False)


def continuation_token_logprobs(
    model: LoadedModel,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: BatchSize = None,
    progress: bool = False,
    rows: RowSlots | None = None,
    share_contexts: bool = True,
) -> Iterator[tuple[int, Float[torch.Tensor, " n_cont"]]]:
    """For each (context, continuation) pair, the log-probability of each continuation token.
    Yields ``(index, logprobs)`` in batches (not in input order).

    Pairs that share a context (a multiple-choice item's choices) run it once
    (``share_contexts``): the contexts in one pass with a KV cache, each continuation then on
    its context's rows of it, sorted by length into batches that pad little. The result is the
    same as running each pair whole, up to float rounding; a model with a sliding attention
    window shorter than the longest text scores every pair whole. A batch holds at most
    ``batch_size`` continuations or ``CONTEXTS_PER_BATCH`` times as many contexts (on
    accelerators, "auto": as many as fit); each continuation's full-vocabulary rows are
    reduced to its tokens' log-probabilities as its batch finishes."""
    if model.shared is not None:
        raise InvalidInputError("in shared batches use score_continuations")

    def gather(i: int, logp: torch.Tensor) -> torch.Tensor:
        cont = torch.tensor(pairs[i][1], device=logp.device)
        return logp.gather(-1, cont[:, None])[:, 0]

    yield from _scored(model, pairs, gather, batch_size, progress, rows, share=share_contexts)


def _scored(
    model: LoadedModel,
    pairs: Sequence[tuple[list[int], list[int]]],
    reduce: Callable[[int, torch.Tensor], T],
    batch_size: BatchSize,
    progress: bool,
    rows: RowSlots | None,
    *,
    share: bool,
) -> Iterator[tuple[int, T]]:
    """``reduce(index, logprobs)`` of each pair, where ``logprobs`` are the pair's
    full-vocabulary rows at the positions that predict its continuation; each batch reduces its
    pairs before the next runs (see :func:`continuation_token_logprobs` for ``share``)."""
    pad_id = pad_token_id(model.tokenizer)
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise InvalidInputError(f"continuation {i} is empty")
        if not ctx:
            raise InvalidInputError(f"context {i} is empty: the first token has nothing to condition on")
        model.check_context(len(ctx) + len(cont), f"scored text {i}")
    hf = model.hf_model
    device = model.device
    window = _sliding_window(model)
    longest = max((len(c) + len(r) for c, r in pairs), default=0)
    if share and (window is None or longest <= window):
        groups, alone = shared_contexts(pairs, rows.slots if rows is not None else None)
    else:
        groups, alone = [], list(range(len(pairs)))
    alone.sort(key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))

    def run(idx: Sequence[int]) -> list[T]:
        # left padding: every continuation ends at the last position
        batch = pad([pairs[i][0] + pairs[i][1] for i in idx], pad_id, "left")
        keep = max(len(pairs[i][1]) for i in idx) + 1  # logits only where a continuation is predicted
        with torch.inference_mode(), rows.of(idx) if rows is not None else contextlib.nullcontext():
            logits = hf(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                position_ids=batch.position_ids.to(device),
                use_cache=False,
                logits_to_keep=keep,
            ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts the last keep - 1 tokens
        return [reduce(i, logp[row, logp.shape[1] - len(pairs[i][1]) :]) for row, i in enumerate(idx)]

    def run_shared(chunk: Sequence[list[int]]) -> list[T]:
        """The chunk's contexts in one pass, then their continuations, longest last, in
        batches of at most ``size``, each on its own rows of the contexts' cache."""
        heads = [g[0] for g in chunk]
        ctx = pad([pairs[i][0] for i in heads], pad_id, "left")
        ctx_mask = ctx.attention_mask.to(device)
        with torch.inference_mode():
            with rows.of(heads) if rows is not None else contextlib.nullcontext():
                out = hf(
                    input_ids=ctx.input_ids.to(device),
                    attention_mask=ctx_mask,
                    position_ids=ctx.position_ids.to(device),
                    use_cache=True,
                    logits_to_keep=1,
                )
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts each first token
            owner_of = {i: k for k, g in enumerate(chunk) for i in g}
            members = sorted(owner_of, key=lambda i: len(pairs[i][1]))
            per_batch = len(members) if size == "auto" else size
            got: dict[int, T] = {}
            for lo in range(0, len(members), per_batch):
                part = members[lo : lo + per_batch]
                owner = torch.tensor([owner_of[i] for i in part], device=device)
                cache = _rows_of(out.past_key_values, owner)  # each context's cache, once per continuation
                cont = pad([pairs[i][1] for i in part], pad_id, "right")
                with rows.of(part) if rows is not None else contextlib.nullcontext():
                    logits = hf(
                        input_ids=cont.input_ids.to(device),
                        attention_mask=torch.cat([ctx_mask[owner], cont.attention_mask.to(device)], 1),
                        position_ids=ctx_mask.sum(dim=1)[owner][:, None] + cont.position_ids.to(device),
                        cache=cache,
                        use_cache=True,
                    ).logits.float()
                rest = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts each continuation's later tokens
                for row, i in enumerate(part):
                    got[i] = reduce(i, torch.cat([first[owner[row]][None], rest[row, : len(pairs[i][1]) - 1]]))
                del logits, rest
        return [got[i] for g in chunk for i in g]

    size = resolve(batch_size, model.device, DEFAULT_BATCH_SIZE)
    groups.sort(key=lambda g: len(pairs[g[0]][0]))  # by context length (the first pass pads to the longest)
    contexts = size if size == "auto" else size * CONTEXTS_PER_BATCH
    with tqdm(total=len(pairs), desc="scoring", unit="text", disable=not progress, leave=False) as bar:
        for chunk, logps in in_chunks(groups, contexts, run_shared, what="scoring"):
            members = [i for g in chunk for i in g]
            bar.update(len(members))
            yield from zip(members, logps, strict=True)
        for idx, logps in in_chunks(alone, size, run, what="scoring"):
            bar.update(len(idx))
            yield from zip(idx, logps, strict=True)


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
    for i, logp in continuation_token_logprobs(model, pairs, batch_size=batch_size, progress=progress, rows=rows):
        out[i] = Scored(float(logp.sum()), len(pairs[i][1]))
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
