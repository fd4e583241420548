"""Batched generation with a KV cache on a loaded model.

Generation runs through the wrapped transformers model, whose modules carry the bridge's
hooks: the same call works on the unedited model, an edited model (weights changed) and a
steered model (hooks active), so comparisons differ only in the intervention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from tqdm.auto import tqdm
from transformers import GenerationMixin

from s2e_lens.engine.batching import BatchSize, in_chunks, resolve
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.tokens import encode_prompt, pad

DEFAULT_BATCH_SIZE = 16  # on the CPU


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode. ``temperature == 0`` (the default) means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1  # samples per prompt (must be 1 when greedy)
    seed: int | None = 0
    batch_size: BatchSize = None  # 16 on the CPU; "auto" (largest that fits) on accelerators
    system: str | None = None

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
) -> list[Generation]:
    """Generate for each prompt (``settings.n`` samples each, prompt-major order)."""
    settings = settings or GenerationSettings()
    tok = model.tokenizer
    hf = cast(GenerationMixin, model.hf_model)
    eos_ids = eos_token_ids(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]  # generate() needs an id
    encoded = [encode_prompt(tok, p, system=settings.system) for p in prompts]
    for i, ids in enumerate(encoded):
        model.check_context(
            len(ids) + settings.max_new_tokens,
            f"prompt {i} ({len(ids):,} tokens) plus {settings.max_new_tokens} new tokens",
        )
    jobs = [(i, ids) for i, ids in enumerate(encoded) for _ in range(settings.n)]
    if settings.seed is not None and settings.temperature > 0:
        torch.manual_seed(settings.seed)  # transformers' sampler draws from the global RNG
    sampling = settings.temperature > 0

    def run(chunk: Sequence[tuple[int, list[int]]]) -> torch.Tensor:
        batch = pad([ids for _, ids in chunk], pad_id, "left")  # generate() continues at the right end
        with torch.inference_mode():
            result = hf.generate(
                input_ids=batch.input_ids.to(model.device),
                attention_mask=batch.attention_mask.to(model.device),
                max_new_tokens=settings.max_new_tokens,
                do_sample=sampling,
                temperature=settings.temperature if sampling else None,
                top_p=settings.top_p if sampling else None,
                top_k=None,
                eos_token_id=eos_ids,
                pad_token_id=pad_id,
            )
        return result[:, batch.input_ids.shape[1] :].cpu()

    out: list[Generation] = []
    size = resolve(settings.batch_size, model.device, DEFAULT_BATCH_SIZE)
    bar = tqdm(total=len(jobs), desc="generating", unit="sequence", disable=not progress, leave=False)
    with bar:
        for chunk, new in in_chunks(jobs, size, run, what="generation"):
            bar.update(len(chunk))
            for row, (i, _) in enumerate(chunk):
                ids = new[row].tolist()
                stop = next((k for k, t in enumerate(ids) if t in eos_ids), None)
                kept = ids if stop is None else ids[:stop]
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
