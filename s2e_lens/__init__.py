"""s2e_lens: Steer2Edit on TransformerLens.

Turn activation-steering vectors into sparse, training-free rank-1 edits of individual
attention heads (``W_O``) and MLP neurons (``W_out``).

Quick start::

    import s2e_lens as s2e
    model = s2e.load_model()            # smollm2-135m-instruct, offline
    print(model.card)
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from s2e_lens.errors import S2EError
from s2e_lens.registry import DEFAULT_MODEL, PACKAGED_MODELS

try:
    __version__ = version("s2e-lens")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

# Heavy names (torch, transformers, TransformerLens) are imported on first use, so that
# `import s2e_lens` and light CLI commands stay fast.
_LAZY = {
    "ModelCard": "s2e_lens.card",
    "Generation": "s2e_lens.generation",
    "GenerationSettings": "s2e_lens.generation",
    "generate": "s2e_lens.generation",
    "LoadedModel": "s2e_lens.loading",
    "load_model": "s2e_lens.loading",
}

if TYPE_CHECKING:
    from s2e_lens.card import ModelCard
    from s2e_lens.generation import Generation, GenerationSettings, generate
    from s2e_lens.loading import LoadedModel, load_model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 's2e_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT_MODEL",
    "PACKAGED_MODELS",
    "Generation",
    "GenerationSettings",
    "LoadedModel",
    "ModelCard",
    "S2EError",
    "__version__",
    "generate",
    "load_model",
]
