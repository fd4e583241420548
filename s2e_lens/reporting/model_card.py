"""The model card (``README.md``) that every export carries: what the base model is, what
was edited and by which rule, what the run measured (when the plan came from one), and how to
load the result with transformers, PEFT and vLLM."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from s2e_lens.core.plan import EditPlan
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.version import __version__

MEASURED = ("attribute", "utility", "kl", "degenerate")


def run_measurements(plan_path: str | Path) -> dict[str, Any] | None:
    """The row of a run's results.csv for a plan saved in that run (``RUN/best_plan`` or
    ``RUN/plans/edit_NN``), with the run's behaviour and directory; None for a plan saved
    elsewhere."""
    path = Path(plan_path).with_suffix("")
    for run_dir in (path.parent, path.parent.parent):
        summary_file, results_file = run_dir / "summary.json", run_dir / "results.csv"
        if not (summary_file.is_file() and results_file.is_file()):
            continue
        summary = json.loads(summary_file.read_text())
        files = {str(Path(f).with_suffix("")): name for name, f in summary.get("plan_files", {}).items()}
        relative = str(path.relative_to(run_dir))
        label = summary.get("best_plan") if relative == "best_plan" else files.get(relative)
        if label is None:
            return None
        results = pd.read_csv(results_file)
        row = results[results["label"].astype(str) == str(label)]
        if row.empty:
            return None
        values = {k: float(row.iloc[0][k]) for k in row.columns if k in MEASURED or k.endswith(("_low", "_high"))}
        config = summary.get("config", {})
        return {"run": str(run_dir), "label": label, "behaviour": config.get("behaviour"), **values}
    return None


def _edited_heads(plan: EditPlan) -> str:
    heads = plan.edited_heads.nonzero().tolist()
    shown = ", ".join(f"L{layer}H{h} ({float(plan.head_lambda[layer, h]):+.3f})" for layer, h in heads[:40])
    return shown + (f", ... ({len(heads)} in all)" if len(heads) > 40 else "") if heads else "none"


def _edited_neurons(plan: EditPlan) -> str:
    per_layer = plan.edited_neurons.sum(-1).tolist()
    parts = [f"L{layer}: {int(n)}" for layer, n in enumerate(per_layer) if n]
    return ", ".join(parts) if parts else "none"


def render(
    model: LoadedModel,
    plans: Sequence[EditPlan],
    *,
    fmt: str,
    measured: dict[str, Any] | None = None,
    base_sha256: str | None = None,
) -> str:
    """The card's Markdown. ``fmt`` is "checkpoint" (edited weights) or "peft" (an adapter)."""
    card = model.card
    lines = [
        f"# {card.name}, edited with Steer2Edit ({'PEFT LoRA adapter' if fmt == 'peft' else 'full checkpoint'})",
        "",
        "Written by s2e_lens " + __version__ + ": rank-1 edits of attention-head output projections "
        "(`W_O`) and MLP output projections (`W_out`) computed from steering vectors "
        "(Steer2Edit, arXiv 2602.09870). Nothing else differs from the base model.",
        "",
        "## Base model",
        "",
        f"- name: `{card.name}` ({card.architecture}, {card.n_params / 1e6:.1f} M parameters)",
        f"- source: {card.source}",
        f"- weight fingerprint (s2e_lens): `{card.fingerprint}`",
    ]
    if base_sha256:
        lines.append(f"- sha256 of the weights file it was converted from: `{base_sha256}`")
    if card.license:
        lines.append(f"- licence: {card.license}")
    for i, plan in enumerate(plans, start=1):
        s = plan.settings
        lines += [
            "",
            f"## Edit {i} of {len(plans)}" if len(plans) > 1 else "## The edit",
            "",
            f"- rule: {plan.variant}; rho_attn {s.rho_attn}, rho_mlp {s.rho_mlp}, alpha {s.alpha}; direction "
            f"{s.direction}, importance {s.importance}, selection {s.selection}, magnitude {s.magnitude}, "
            f"vectors {s.vectors}",
            f"- behaviour: {plan.provenance.get('behaviour', plan.provenance.get('source', 'custom'))}",
            f"- edited heads ({plan.n_edited['heads']} of {plan.head_g.numel()}), layer/head (lambda): "
            + _edited_heads(plan),
            f"- edited neurons ({plan.n_edited['neurons']} of {plan.neuron_g.numel()}) per layer: "
            + _edited_neurons(plan),
        ]
    if measured:
        lines += ["", "## Measured by the run that chose it", ""]
        lines.append(f"Run `{measured['run']}`, intervention `{measured['label']}` ({measured.get('behaviour')}):")
        for key in MEASURED:
            if key in measured:
                low, high = measured.get(f"{key}_low"), measured.get(f"{key}_high")
                interval = f" (95% interval {low:.3f} to {high:.3f})" if low is not None and high is not None else ""
                lines.append(f"- {key}: {measured[key]:.3f}{interval}")
        lines.append("")
        lines.append("The run directory's report says which prompts, judge and utility items these are.")
    lines += ["", "## How to load it", ""]
    if fmt == "peft":
        base = card.checkpoint or card.name
        lines += [
            "The adapter holds only the low-rank factors; load it on the unedited base model:",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM",
            "from peft import PeftModel",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{base}")',
            'model = PeftModel.from_pretrained(base, "THIS_DIRECTORY")',
            "merged = model.merge_and_unload()  # the same weights as `s2e export --format checkpoint`",
            "```",
            "",
            "vLLM serves it as a LoRA module beside others on one base model:",
            "",
            "```bash",
            f"vllm serve {base} --enable-lora --max-lora-rank 16 --lora-modules edit=THIS_DIRECTORY",
            "```",
        ]
    else:
        lines += [
            "A plain transformers checkpoint (same config and tensor names as the base model):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("THIS_DIRECTORY")',
            'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY")',
            "```",
            "",
            "Any engine that reads transformers checkpoints serves it, e.g. `vllm serve THIS_DIRECTORY`.",
        ]
    lines += ["", "`s2e_edits.json` beside this card records the same edits for s2e_lens.", ""]
    return "\n".join(lines)
