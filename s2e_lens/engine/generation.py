"""Batched generation with a KV cache on a loaded model.

Generation runs through the wrapped transformers model, whose modules carry the bridge's
hooks: the same call works on the unedited model, an edited model (weights changed) and a
steered model (hooks active), so comparisons differ only in the intervention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from tqdm.auto import tqdm
from transformers import GenerationMixin

from s2e_lens.engine.batching import BatchSize, in_chunks, resolve
from s2e_lens.engine.mixed import RowSlots
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.tokens import pad

DEFAULT_BATCH_SIZE = 16  # on the CPU


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode. ``temperature == 0`` (the default) means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1  # samples per prompt (must be 1 when greedy)
    seed: int | None = 0
    batch_size: BatchSize = None  # sequences per batch: 16 on the CPU; "auto" (largest that fits) elsewhere
    system: str | None = None
    share_prefill: bool = True  # n > 1: each prompt's prefill runs once, its KV cache copied to the samples

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InvalidInputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1 or (self.temperature == 0 and self.n != 1):
            raise InvalidInputError(f"n must be 1 for greedy decoding and >= 1 when sampling, got {self.n}")
        resolve(self.batch_size, torch.device("cpu"), DEFAULT_BATCH_SIZE)  # checks it


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str
    n_tokens: int  # generated tokens, EOS excluded
    stopped: bool  # True if it ended at EOS, False if it hit max_new_tokens
    token_ids: tuple[int, ...] = ()  # the generated ids, EOS excluded


def generate(
    model: LoadedModel,
    prompts: Sequence[str],
    settings: GenerationSettings | None = None,
    *,
    progress: bool = False,
    rows: RowSlots | None = None,
) -> list[Generation]:
    """Generate for each prompt (``settings.n`` samples each, prompt-major order). A batch
    holds ``batch_size`` sequences: ``batch_size // n`` prompts with their n samples, which
    share one prefill of the prompt (``share_prefill``). ``rows`` gives each prompt its own
    intervention (a mixed batch, :mod:`s2e_lens.engine.mixed`); a model that is one slot of
    shared batches (:mod:`s2e_lens.engine.shared_batches`) sends its prompts there."""
    settings = settings or GenerationSettings()
    if model.shared is not None:
        return cast(list[Generation], model.shared.generate(prompts, settings))
    tok = model.tokenizer
    hf = cast(GenerationMixin, model.hf_model)
    eos_ids = eos_token_ids(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]  # generate() needs an id
    encoded = [model.prompt_ids(p, settings.system) for p in prompts]  # tokenised once per model
    for i, ids in enumerate(encoded):
        model.check_context(
            len(ids) + settings.max_new_tokens,
            f"prompt {i} ({len(ids):,} tokens) plus {settings.max_new_tokens} new tokens",
        )
    if settings.seed is not None and settings.temperature > 0:
        torch.manual_seed(settings.seed)  # transformers' sampler draws from the global RNG
    sampling = settings.temperature > 0
    n = settings.n
    share = n > 1 and settings.share_prefill and min(len(ids) for ids in encoded) > 1

    def run(chunk: Sequence[tuple[int, list[int]]]) -> torch.Tensor:
        """Each prompt of ``chunk`` decoded ``n`` times. With ``share``, the prompts' prefill
        (all but their last token) runs once and its KV cache is copied to the n samples."""
        batch = pad([ids for _, ids in chunk], pad_id, "left")  # generate() continues at the right end
        ids, mask = batch.input_ids.to(model.device), batch.attention_mask.to(model.device)
        extra: dict[str, object] = {}
        where = [i for i, _ in chunk]
        with torch.inference_mode():
            if share:
                with rows.of(where) if rows is not None else contextlib.nullcontext():
                    prefix = hf(  # type: ignore[operator]
                        input_ids=ids[:, :-1],
                        attention_mask=mask[:, :-1],
                        position_ids=batch.position_ids[:, :-1].to(model.device),
                        use_cache=True,
                        logits_to_keep=1,
                    )
                cache = prefix.past_key_values
                cache.batch_repeat_interleave(n)
                extra["cache"] = cache  # transformers >= 5.24 name (past_key_values is deprecated)
            if n > 1:
                ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
            with rows.of(where, repeat=n) if rows is not None else contextlib.nullcontext():
                result = hf.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=settings.max_new_tokens,
                    do_sample=sampling,
                    temperature=settings.temperature if sampling else None,
                    top_p=settings.top_p if sampling else None,
                    top_k=None,
                    eos_token_id=eos_ids,
                    pad_token_id=pad_id,
                    **extra,
                )
        return result[:, ids.shape[1] :].cpu()

    out: list[Generation] = []
    size = resolve(settings.batch_size, model.device, DEFAULT_BATCH_SIZE)
    per_chunk = size if size == "auto" else max(1, size // n)  # prompts per chunk: size sequences in all
    bar = tqdm(total=len(encoded) * n, desc="generating", unit="sequence", disable=not progress, leave=False)
    with bar:
        for chunk, new in in_chunks(list(enumerate(encoded)), per_chunk, run, what="generation"):
            bar.update(len(chunk) * n)
            for row in range(len(chunk) * n):
                i = chunk[row // n][0]
                ids_out = new[row].tolist()
                stop = next((k for k, t in enumerate(ids_out) if t in eos_ids), None)
                kept = ids_out if stop is None else ids_out[:stop]
                out.append(
                    Generation(
                        prompt=prompts[i],
                        text=str(tok.decode(kept, skip_special_tokens=True)),
                        n_tokens=len(kept),
                        stopped=stop is not None,
                        token_ids=tuple(kept),
                    )
                )
    return out


def eos_token_ids(model: LoadedModel) -> list[int]:
    """Every token id that ends a turn: the generation config's EOS ids and the tokenizer's."""
    ids: list[int] = []
    gen_eos = getattr(model.hf_model.generation_config, "eos_token_id", None)
    for value in (gen_eos, model.tokenizer.eos_token_id):
        if value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if v not in ids:
                ids.append(int(v))
    if not ids:
        raise InvalidInputError("the model has no EOS token id; cannot tell where a generation ends")
    return ids
