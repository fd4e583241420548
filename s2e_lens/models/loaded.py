"""The loaded model: a TransformerBridge in raw mode, its tokenizer and its card."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from s2e_lens.core.plan import EditPlan
from s2e_lens.errors import S2EError
from s2e_lens.models.card import ModelCard


class AppliedEdit(Protocol):
    """A plan applied to the model's weights, with the weights it replaced (made and reverted
    by :mod:`s2e_lens.engine.mapper`, whose ``AppliedPlan`` this is)."""

    plan: EditPlan
    saved: dict[tuple[str, int], torch.Tensor]  # (kind, layer) -> the weight before the plan

    def remove(self) -> None: ...


class EngineCalls(Protocol):
    """Where a view of the model sends the engine's generation, scoring and KL instead of
    running them alone (:class:`s2e_lens.engine.shared_batches.SharedSlot`)."""

    def generate(self, prompts: Sequence[str], settings: Any) -> list[Any]: ...

    def score(self, pairs: Sequence[tuple[list[int], list[int]]], batch_size: Any) -> list[Any]: ...

    def kl_by_text(self, reference: Any) -> list[list[float]]: ...


class ContextLengthError(S2EError):
    """An input longer than the model's context window."""


# The bridge wraps each transformers module in place; its state-dict keys gain this segment.
WRAPPER_SEGMENT = "._original_component"


@dataclass
class LoadedModel:
    """A ready model: the bridge (hooks, ``W_O``, ``W_out``), its tokenizer and its card.

    ``tokenizer`` is the model's own transformers tokenizer. Use it (not ``bridge.to_tokens``,
    which may prepend a BOS the chat template does not use) to make the ids you feed in.
    """

    bridge: TransformerBridge
    tokenizer: PreTrainedTokenizerBase
    card: ModelCard
    hf_keys: tuple[str, ...] = ()  # the transformers state-dict keys, in order
    applied_plans: list[AppliedEdit] = field(default_factory=list)  # in the order applied (engine.mapper)
    steering: list[str] = field(default_factory=list)  # active hook interventions, described
    _prompt_ids: dict[tuple[str, str | None], tuple[int, ...]] = field(default_factory=dict, repr=False)
    # set on the per-intervention views of shared batches (engine.shared_batches): the engine's
    # generation and scoring send their work there instead of running it alone
    shared: EngineCalls | None = field(default=None, repr=False, compare=False)

    def prompt_ids(self, prompt: str, system: str | None = None) -> list[int]:
        """The rendered prompt's token ids (:func:`s2e_lens.models.tokens.encode_prompt`),
        tokenised once per model: a sweep asks for the same prompts for every intervention."""
        from s2e_lens.models.tokens import encode_prompt

        key = (prompt, system)
        if key not in self._prompt_ids:
            self._prompt_ids[key] = tuple(encode_prompt(self.tokenizer, prompt, system=system))
        return list(self._prompt_ids[key])

    def state(self) -> dict[str, list[str]]:
        """What is done to the weights and activations now: applied plans and active steering
        (recorded in statistics, so that they are not used on a model in another state)."""
        return {"edits": [a.plan.describe() for a in self.applied_plans], "steering": list(self.steering)}

    @property
    def hf_model(self) -> PreTrainedModel:
        """The wrapped transformers model (its modules carry the bridge's hooks)."""
        return cast(PreTrainedModel, self.bridge.original_model)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def check_context(self, n_tokens: int, what: str) -> None:
        """Refuse a sequence longer than the model's context, before anything runs on it."""
        limit = self.card.context_length
        if limit is not None and n_tokens > limit:
            raise ContextLengthError(
                f"{what} needs {n_tokens:,} tokens, more than {self.card.name}'s context of {limit:,}; "
                "shorten it (or lower max_new_tokens)"
            )

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's tensors under their transformers names (the bridge's wrapper segments
        removed), sharing storage with the live model."""
        wrapped = {key.replace(WRAPPER_SEGMENT, ""): value for key, value in self.hf_model.state_dict().items()}
        return {key: wrapped[key] for key in self.hf_keys} if self.hf_keys else wrapped
