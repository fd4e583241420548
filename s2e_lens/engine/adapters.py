"""Edits as PEFT LoRA adapters: what PEFT, vLLM, SGLang, TGI and llama.cpp load and serve.

:func:`export_adapter` writes ``adapter_config.json`` + ``adapter_model.safetensors`` for the
output projections that one or more plans edit (:mod:`s2e_lens.core.low_rank` factors each
layer's update as ``B @ A``). The adapter reproduces the folded edit: with LoRA's scaling set
to 1 (``lora_alpha`` equal to each module's rank), ``W x + B (A x) = (W + Delta W) x``.
Composed plans (several applied in order) become one adapter whose factors are concatenated.

The base model is the unedited model the plans were made on; its weights are not written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers.pytorch_utils import Conv1D

from s2e_lens.core.low_rank import LowRankUpdate, low_rank_updates
from s2e_lens.core.plan import EditPlan
from s2e_lens.errors import InvalidInputError
from s2e_lens.io.files import EXPORT_RECORD, atomic_directory, check_output
from s2e_lens.io.serialization import finite_json
from s2e_lens.models.identity import check_identity
from s2e_lens.models.loaded import LoadedModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # how PEFT names the wrapped model's modules in its files


def module_names(model: LoadedModel, updates: Sequence[LowRankUpdate]) -> dict[tuple[str, int], str]:
    """The transformers module path (``model.layers.3.self_attn.o_proj``) of each update's
    output projection, without the bridge's wrapper segments."""
    from s2e_lens.engine.mapper import output_projection

    # by the weight's storage: the bridge may wrap or re-house a projection (GPT-2's c_proj is
    # the bridge's attn.o), but the transformers state dict shares the tensor it edits
    by_storage = {t.data_ptr(): key for key, t in model.hf_state_dict().items() if key.endswith(".weight")}
    out = {}
    for u in updates:
        weight = output_projection(model, u.kind, u.layer).weight
        assert isinstance(weight, torch.Tensor)
        key = by_storage.get(weight.data_ptr())
        if key is None:
            raise InvalidInputError(
                f"cannot find the transformers name of layer {u.layer}'s {u.kind} output projection"
            )
        out[(u.kind, u.layer)] = key.removesuffix(".weight")
    return out


def adapter_tensors(model: LoadedModel, plans: Sequence[EditPlan]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The adapter's tensors under PEFT's names, and each target module's rank."""
    updates = low_rank_updates(plans)
    if not updates:
        raise InvalidInputError("the plan edits no head and no neuron: there is nothing to export as an adapter")
    names = module_names(model, updates)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for u in updates:
        name = names[(u.kind, u.layer)]
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = u.A.contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = u.B.contiguous()
        ranks[name] = u.rank
    return tensors, ranks


def adapter_config(model: LoadedModel, ranks: dict[str, int], base: str) -> dict[str, Any]:
    """A LoRA config PEFT reads: every edited projection targeted by its full name, with its own
    rank and ``alpha = rank`` (scaling 1); Conv1D projections (GPT-2) set ``fan_in_fan_out``."""
    from peft import LoraConfig

    # by the weight's storage, as module_names found the names (the bridge may re-house a module)
    conv1d = {m.weight.data_ptr() for m in model.hf_model.modules() if isinstance(m, Conv1D)}
    state = model.hf_state_dict()
    layouts = {state[f"{name}.weight"].data_ptr() in conv1d for name in ranks}
    if len(layouts) != 1:  # PEFT has one fan_in_fan_out per adapter
        raise InvalidInputError("the edited projections mix Linear and Conv1D layers: one adapter cannot hold both")
    (conv,) = layouts
    top = max(ranks.values())
    config = LoraConfig(
        r=top,
        lora_alpha=top,
        target_modules=sorted(ranks),
        # PEFT reads these keys as regular expressions: escaped, each matches its module only
        rank_pattern={re.escape(name): r for name, r in sorted(ranks.items())},
        alpha_pattern={re.escape(name): r for name, r in sorted(ranks.items())},
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=conv,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
        inference_mode=True,
    )
    raw = config.to_dict()
    return {k: (sorted(v) if isinstance(v, set) else getattr(v, "value", v)) for k, v in raw.items()}


def export_adapter(
    model: LoadedModel,
    plans: Sequence[EditPlan],
    directory: str | Path,
    *,
    overwrite: bool = False,
    card: Callable[[Path], None] | None = None,
    companion: Callable[[], list[Path]] | None = None,
) -> Path:
    """Write ``plans`` (applied in order to the unedited ``model``) as one PEFT LoRA adapter in
    ``directory``: all or nothing, like every export (``overwrite`` replaces only an earlier
    export). ``card(out)`` may add files (the model card) before the directory lands."""
    if model.applied_plans:
        raise InvalidInputError(
            "export an adapter from the unedited model: the adapter is the difference to the base weights, "
            "and this model already has plans applied (revert them first)"
        )
    for plan in plans:
        check_identity(plan.model, model, "this edit plan")
    target = check_output(directory, kind="dir", overwrite=overwrite, what="adapter directory", record=EXPORT_RECORD)
    tensors, ranks = adapter_tensors(model, plans)
    base = model.card.checkpoint or model.card.name
    config = adapter_config(model, ranks, base)
    record = {
        "format": "peft",
        "base_model": model.card.name,
        "fingerprint": model.card.fingerprint,
        "edits": [plan.describe() for plan in plans],
        "ranks": ranks,
    }
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with atomic_directory(
        target, overwrite=overwrite, record=EXPORT_RECORD, companion=companion, size_hint=size
    ) as out:
        save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (out / EXPORT_RECORD).write_text(finite_json(record, indent=2) + "\n")
        if card is not None:
            card(out)
    return target
