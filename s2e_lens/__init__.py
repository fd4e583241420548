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
    "Pair": "s2e_lens.contrastive",
    "ContrastiveSet": "s2e_lens.contrastive",
    "collect_statistics": "s2e_lens.extraction",
    "ContrastiveStatistics": "s2e_lens.statistics",
    "SteeringVectors": "s2e_lens.steering",
    "EditSettings": "s2e_lens.edits",
    "EditPlan": "s2e_lens.plan",
    "compute_plan": "s2e_lens.plan",
    "orthogonalisation_plan": "s2e_lens.plan",
    "apply_plan": "s2e_lens.mapper",
    "revert": "s2e_lens.mapper",
    "revert_all": "s2e_lens.mapper",
    "export_model": "s2e_lens.export",
    "steered": "s2e_lens.activation_steering",
    "Generation": "s2e_lens.generation",
    "GenerationSettings": "s2e_lens.generation",
    "generate": "s2e_lens.generation",
    "LoadedModel": "s2e_lens.loading",
    "load_model": "s2e_lens.loading",
}

if TYPE_CHECKING:
    from s2e_lens.activation_steering import steered
    from s2e_lens.card import ModelCard
    from s2e_lens.contrastive import ContrastiveSet, Pair
    from s2e_lens.edits import EditSettings
    from s2e_lens.export import export_model
    from s2e_lens.extraction import collect_statistics
    from s2e_lens.mapper import apply_plan, revert, revert_all
    from s2e_lens.plan import EditPlan, compute_plan, orthogonalisation_plan
    from s2e_lens.statistics import ContrastiveStatistics
    from s2e_lens.steering import SteeringVectors
    from s2e_lens.generation import Generation, GenerationSettings, generate
    from s2e_lens.loading import LoadedModel, load_model


# submodules reachable as attributes (s2e.behaviours, s2e.figures, ...), imported on first use
_SUBMODULES = {"behaviours", "datasets", "figures", "metrics", "evaluation", "interventions", "sweep",
               "pipelines", "report", "attention_view", "edits", "plan", "mapper", "generation"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return import_module(f"s2e_lens.{name}")
    raise AttributeError(f"module 's2e_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ContrastiveSet",
    "ContrastiveStatistics",
    "EditPlan",
    "EditSettings",
    "Pair",
    "SteeringVectors",
    "apply_plan",
    "collect_statistics",
    "compute_plan",
    "export_model",
    "orthogonalisation_plan",
    "revert",
    "revert_all",
    "steered",
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
