"""Model-facing evaluation: log-likelihood scoring, utility measures, attribute measures.

Every function runs the model as it is (unedited, edited, or inside ``steered(...)``), so the
same call measures any intervention.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from s2e_lens.errors import InvalidInputError
from s2e_lens import metrics
from s2e_lens.chat import encode_prompt, encode_response, has_chat_template
from s2e_lens.datasets import MultipleChoice, TruthfulQAItem
from s2e_lens.generation import GenerationSettings, generate
from s2e_lens.loading import LoadedModel


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
    batch_size: int = 16,
    progress: bool = False,
) -> Iterator[tuple[int, Float[torch.Tensor, "n_cont vocab"]]]:
    """For each (context, continuation) pair of token ids, the log-softmax over the vocabulary
    at the positions that predict the continuation's tokens. Yields ``(index, logprobs)`` in
    batches sorted by length (not in input order). Left padding with explicit position ids, so
    a padded row computes exactly what it would alone; logits only where they are needed."""
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise InvalidInputError(f"continuation {i} is empty")
        if not ctx:
            raise InvalidInputError(f"context {i} is empty: the first token has nothing to condition on")
        model.check_context(len(ctx) + len(cont), f"scored text {i}")
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for lo in tqdm(range(0, len(order), batch_size), desc="scoring", disable=not progress, leave=False):
        idx = order[lo : lo + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(seqs):  # left padding: every continuation ends at the last position
            ids[row, width - len(s) :] = torch.tensor(s)
            mask[row, width - len(s) :] = 1
        keep = max(len(pairs[i][1]) for i in idx) + 1  # logits only where a continuation is predicted
        with torch.inference_mode():
            logits = model.hf_model(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(model.device),
                use_cache=False, logits_to_keep=keep,
            ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts the last keep - 1 tokens
        for row, i in enumerate(idx):
            n = len(pairs[i][1])
            yield i, logp[row, logp.shape[1] - n :]


def score_continuations(
    model: LoadedModel,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[Scored]:
    """Log-probability of each continuation (token ids) given its context (token ids)."""
    out: list[Scored | None] = [None] * len(pairs)
    for i, logp in continuation_logprobs(model, pairs, batch_size=batch_size, progress=progress):
        cont = torch.tensor(pairs[i][1], device=logp.device)
        out[i] = Scored(float(logp.gather(-1, cont[:, None]).sum()), len(pairs[i][1]))
    return [s for s in out if s is not None]


# ------------------------------------------------------------------------------- utility


def multiple_choice_accuracy(
    model: LoadedModel, items: Sequence[MultipleChoice], *, normalise: bool = True, batch_size: int = 16
) -> float:
    """Log-likelihood multiple choice (plain text, no chat template): the choice with the
    highest (length-normalised, by default) log-probability wins."""
    tok = model.tokenizer
    pairs, owners = [], []
    for i, item in enumerate(items):
        ctx = list(tok(item.context, add_special_tokens=True)["input_ids"])
        for choice in item.choices:
            pairs.append((ctx, encode_response(tok, choice)))
            owners.append(i)
    scored = score_continuations(model, pairs, batch_size=batch_size)
    per_item: list[list[float]] = [[] for _ in items]
    for owner, s in zip(owners, scored):
        per_item[owner].append(s.mean if normalise else s.logprob)
    return metrics.mc_accuracy(per_item, [item.answer for item in items])


def response_cross_entropy(
    model: LoadedModel, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16
) -> float:
    """Mean per-token negative log-likelihood of reference responses (chat-formatted)."""
    tok = model.tokenizer
    encoded = [(encode_prompt(tok, p), encode_response(tok, r)) for p, r in pairs]
    scored = score_continuations(model, encoded, batch_size=batch_size)
    return -sum(s.logprob for s in scored) / sum(s.n_tokens for s in scored)


class KLReference:
    """Next-token distributions of a model (usually the unedited one) on fixed texts, to
    measure later how far an intervention moves them: KL(reference || current)."""

    def __init__(self, model: LoadedModel, pairs: Sequence[tuple[str, str]], batch_size: int = 8) -> None:
        tok = model.tokenizer
        self.encoded = [(encode_prompt(tok, p), encode_response(tok, r)) for p, r in pairs]
        self.batch_size = batch_size
        self.reference = self._logprobs(model)

    def _logprobs(self, model: LoadedModel) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(self.encoded)
        for i, logp in continuation_logprobs(model, self.encoded, batch_size=self.batch_size):
            out[i] = logp.cpu()
        return [t for t in out if t is not None]

    def kl(self, model: LoadedModel) -> float:
        current = self._logprobs(model)
        total = sum(float((r.exp() * (r - c)).sum()) for r, c in zip(self.reference, current))
        return total / sum(r.shape[0] for r in self.reference)


# ----------------------------------------------------------------------------- attributes


@dataclass(frozen=True)
class RefusalResult:
    rate: float
    degenerate: float
    responses: list[str]


def refusal_eval(
    model: LoadedModel,
    prompts: Sequence[str],
    settings: GenerationSettings | None = None,
    judge: metrics.Judge | None = None,
    *,
    progress: bool = False,
) -> RefusalResult:
    """Refusal rate of the model's generations (substring judge unless ``judge`` is given)."""
    settings = settings or GenerationSettings(max_new_tokens=32)
    gens = generate(model, prompts, settings, progress=progress)
    texts = [g.text for g in gens]
    gen_prompts = [g.prompt for g in gens]
    return RefusalResult(
        rate=metrics.refusal_rate(gen_prompts, texts, judge),
        degenerate=sum(metrics.is_degenerate(t) for t in texts) / len(texts),
        responses=texts,
    )


def truthfulqa_context(model: LoadedModel, question: str) -> list[int]:
    tok = model.tokenizer
    if has_chat_template(tok):
        return encode_prompt(tok, question)
    return list(tok(f"Q: {question}\nA:", add_special_tokens=True)["input_ids"])


@dataclass(frozen=True)
class TruthfulQAResult:
    binary_preference: float  # best answer vs first incorrect, length-normalised log-prob
    mc1: float  # best answer vs all incorrect answers, total log-prob


def truthfulqa_eval(model: LoadedModel, items: Sequence[TruthfulQAItem], *, batch_size: int = 16) -> TruthfulQAResult:
    tok = model.tokenizer
    pairs, owners = [], []
    for i, item in enumerate(items):
        ctx = truthfulqa_context(model, item.question)
        for answer in (item.best_answer, *item.incorrect_answers):
            pairs.append((ctx, encode_response(tok, " " + answer if not has_chat_template(tok) else answer)))
            owners.append(i)
    scored = score_continuations(model, pairs, batch_size=batch_size)
    per_item: list[list[Scored]] = [[] for _ in items]
    for owner, s in zip(owners, scored):
        per_item[owner].append(s)
    best = [row[0].mean for row in per_item]
    first_wrong = [row[1].mean for row in per_item]
    mc1 = metrics.mc_accuracy([[s.logprob for s in row] for row in per_item], [0] * len(items))
    return TruthfulQAResult(metrics.binary_preference(best, first_wrong), mc1)
