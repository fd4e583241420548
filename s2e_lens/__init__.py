"""s2e_lens: Steer2Edit on TransformerLens.

Turn activation-steering vectors into sparse, training-free rank-1 edits of individual
attention heads (``W_O``) and MLP neurons (``W_out``).

Quick start::

    import s2e_lens as s2e
    model = s2e.load_model()            # smollm2-135m-instruct, offline
    print(model.card)

The package reads as the method and its users' path (imports run one way, downward):
``cli`` -> ``experiments`` -> ``reporting`` -> ``behaviours`` -> ``engine`` -> ``models`` ->
``core`` -> ``io`` (with ``errors`` and ``version`` below everything).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from s2e_lens.errors import S2EError
from s2e_lens.models.registry import DEFAULT_MODEL, PACKAGED_MODELS
from s2e_lens.version import __version__

# Heavy names (torch, transformers, TransformerLens) are imported on first use, so that
# `import s2e_lens` and light CLI commands stay fast.
_LAZY = {
    "ModelCard": "s2e_lens.models.card",
    "Pair": "s2e_lens.core.contrastive",
    "ContrastiveSet": "s2e_lens.core.contrastive",
    "collect_statistics": "s2e_lens.engine.extraction",
    "ContrastiveStatistics": "s2e_lens.core.statistics",
    "SteeringVectors": "s2e_lens.core.vectors",
    "EditSettings": "s2e_lens.core.settings",
    "EditPlan": "s2e_lens.core.plan",
    "compute_plan": "s2e_lens.engine.planning",
    "orthogonalisation_plan": "s2e_lens.engine.planning",
    "apply_plan": "s2e_lens.engine.mapper",
    "revert": "s2e_lens.engine.mapper",
    "revert_all": "s2e_lens.engine.mapper",
    "export_model": "s2e_lens.models.export",
    "steered": "s2e_lens.engine.interventions",
    "edited": "s2e_lens.engine.interventions",
    "Generation": "s2e_lens.engine.generation",
    "GenerationSettings": "s2e_lens.engine.generation",
    "generate": "s2e_lens.engine.generation",
    "LoadedModel": "s2e_lens.models.loaded",
    "load_model": "s2e_lens.models.loading",
    "Run": "s2e_lens.core.run",
    "save_control_vector": "s2e_lens.core.control_vector",
    "load_control_vector": "s2e_lens.core.control_vector",
}

if TYPE_CHECKING:
    from s2e_lens.core.contrastive import ContrastiveSet, Pair
    from s2e_lens.core.control_vector import load_control_vector, save_control_vector
    from s2e_lens.core.plan import EditPlan
    from s2e_lens.core.run import Run
    from s2e_lens.core.settings import EditSettings
    from s2e_lens.core.statistics import ContrastiveStatistics
    from s2e_lens.core.vectors import SteeringVectors
    from s2e_lens.engine.extraction import collect_statistics
    from s2e_lens.engine.generation import Generation, GenerationSettings, generate
    from s2e_lens.engine.interventions import edited, steered
    from s2e_lens.engine.mapper import apply_plan, revert, revert_all
    from s2e_lens.engine.planning import compute_plan, orthogonalisation_plan
    from s2e_lens.models.card import ModelCard
    from s2e_lens.models.export import export_model
    from s2e_lens.models.loaded import LoadedModel
    from s2e_lens.models.loading import load_model


# submodules reachable as attributes (s2e.behaviours, s2e.figures, ...), imported on first use
_SUBMODULES = {
    "behaviours": "s2e_lens.behaviours",
    "datasets": "s2e_lens.behaviours.datasets",
    "figures": "s2e_lens.reporting.figures",
    "report": "s2e_lens.reporting.report",
    "attention_view": "s2e_lens.reporting.attention_view",
    "metrics": "s2e_lens.core.metrics",
    "comparison": "s2e_lens.core.comparison",
    "edit_rule": "s2e_lens.core.edit_rule",
    "plan": "s2e_lens.core.plan",
    "scoring": "s2e_lens.engine.scoring",
    "interventions": "s2e_lens.engine.interventions",
    "mapper": "s2e_lens.engine.mapper",
    "generation": "s2e_lens.engine.generation",
    "sweep": "s2e_lens.experiments.sweep",
    "pipelines": "s2e_lens.experiments.pipelines",
    "health": "s2e_lens.experiments.health",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return import_module(_SUBMODULES[name])
    raise AttributeError(f"module 's2e_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names and sub-modules: what tab completion offers (``s2e.figures`` too)."""
    return sorted({*__all__, *_SUBMODULES})


__all__ = [
    "DEFAULT_MODEL",
    "PACKAGED_MODELS",
    "ContrastiveSet",
    "ContrastiveStatistics",
    "EditPlan",
    "EditSettings",
    "Generation",
    "GenerationSettings",
    "LoadedModel",
    "ModelCard",
    "Pair",
    "Run",
    "S2EError",
    "SteeringVectors",
    "__version__",
    "apply_plan",
    "collect_statistics",
    "compute_plan",
    "edited",
    "export_model",
    "generate",
    "load_control_vector",
    "load_model",
    "orthogonalisation_plan",
    "revert",
    "revert_all",
    "save_control_vector",
    "steered",
]
