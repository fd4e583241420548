"""Export a (possibly edited) model as a standard transformers checkpoint.

The checkpoint has the same config and tensor names as the original model, no extra
modules and no hooks: plain ``AutoModelForCausalLM.from_pretrained`` (or any engine that
reads transformers checkpoints) loads the edited weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from s2e_lens.errors import S2EError
from s2e_lens.io.files import EXPORT_RECORD, atomic_directory, check_output
from s2e_lens.models.loaded import LoadedModel

EDIT_RECORD = EXPORT_RECORD


def export_model(
    model: LoadedModel,
    directory: str | Path,
    *,
    overwrite: bool = False,
    card: Callable[[Path], None] | None = None,
    companion: Callable[[], list[Path]] | None = None,
) -> Path:
    """Write ``model`` (with whatever edits are applied) to ``directory`` as one output: built
    in a scratch directory beside it and renamed into place when complete. A non-empty
    ``directory`` is replaced only with ``overwrite``, and only if an earlier export made it;
    the current directory and its parents never are. ``card(out)`` may add files (the model
    card) before the directory lands; ``companion`` writes an output that must land together
    with this one (see :func:`~s2e_lens.io.files.atomic_directory`)."""
    target = check_output(directory, kind="dir", overwrite=overwrite, what="export directory", record=EDIT_RECORD)
    hf = model.hf_model
    state = model.hf_state_dict()
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(hf.config, attn_implementation="eager")
    missing, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k not in _tied_keys(fresh)]
    if missing or unexpected:
        raise S2EError(
            f"cannot map the model's tensors onto {type(fresh).__name__}: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    fresh.tie_weights()
    fresh.generation_config = hf.generation_config
    record = {
        "base_model": model.card.name,
        "fingerprint": model.card.fingerprint,
        "edits": [applied.plan.describe() for applied in model.applied_plans],
    }
    size = sum(t.numel() * t.element_size() for t in state.values())
    with atomic_directory(target, overwrite=overwrite, record=EDIT_RECORD, companion=companion, size_hint=size) as out:
        fresh.save_pretrained(out)
        model.tokenizer.save_pretrained(out)
        (out / EDIT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if card is not None:
            card(out)
    return target


def _tied_keys(model: torch.nn.Module) -> set[str]:
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if not isinstance(tied, dict) else set(tied.keys())
