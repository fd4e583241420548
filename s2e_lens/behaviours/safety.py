"""Safety: refusing harmful requests.

Contrastive data: the project's harmful prompts with refusing (positive) and compliant
(negative) responses, teacher-forced, or the model's own sampled responses split by a judge.
Evaluation: refusal rate on held-out harmful prompts (the attribute); multiple-choice accuracy
(the utility), over-refusal on harmless and scary-but-safe prompts, benign cross-entropy, KL to
the unedited model and the degeneracy of every generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from s2e_lens.behaviours.attacks import load_attack_set
from s2e_lens.behaviours.base import (
    GENERATIONS,
    ITEMS,
    Behaviour,
    Suite,
    SuiteSize,
    benign_pairs,
    gsm8k_items,
    register,
    utility_items,
    utility_measure,
)
from s2e_lens.behaviours.datasets import load_harmful_prompts, load_safety_prompts
from s2e_lens.behaviours.splits import split
from s2e_lens.core import judges, metrics
from s2e_lens.core.contrastive import ContrastiveSet, ContrastiveSetError
from s2e_lens.core.intervals import rate_interval
from s2e_lens.core.items import MathItem, MultipleChoice
from s2e_lens.core.judges import JudgeError, load_judge, verdicts
from s2e_lens.engine.generation import Generation, GenerationSettings, generate
from s2e_lens.engine.scoring import KLReference
from s2e_lens.errors import InvalidInputError
from s2e_lens.models.loaded import LoadedModel


def safety_prompts(part: str = "test") -> dict[str, list[str]]:
    """The project's harmful and harmless prompts of one split (for evaluation)."""
    data = load_safety_prompts()
    return {
        "harmful": [r["prompt"] for r in split(data["harmful"], lambda r: r["prompt"], part)],
        "harmless": [r["prompt"] for r in split(data["harmless"], lambda r: r["prompt"], part)],
        "scary_but_safe": [
            r["prompt"] for r in split(data["harmless"], lambda r: r["prompt"], part) if r["scary_but_safe"]
        ],
    }


def safety(
    model: LoadedModel | None = None,
    *,
    mode: str = "teacher_forced",
    part: str = "tune",
    limit: int | None = None,
    samples: int = 4,
    judge: metrics.Judge | None = None,
    settings: GenerationSettings | None = None,
) -> ContrastiveSet:
    """Refusal. Positive: harmful prompts with refusing responses; negative: the same prompts
    with compliant responses.

    ``mode="teacher_forced"`` (default) uses the project's written refusal and compliance texts
    (for models that never refuse on their own). ``mode="own"`` samples ``samples`` responses
    per prompt from ``model`` and splits them with ``judge`` (substring refusal judge unless
    given); it fails if the model never (or always) refuses.
    """
    rows = split(load_harmful_prompts(), lambda r: r["prompt"], part)[:limit]
    provenance: dict[str, Any] = {
        "behaviour": "safety",
        "mode": mode,
        "split": part,
        "source": "s2e_lens/data/safety/harmful.jsonl",
        "n_prompts": len(rows),
    }
    if mode == "teacher_forced":
        return ContrastiveSet.from_pairs(
            [(r["prompt"], r["refusal"]) for r in rows], [(r["prompt"], r["compliance"]) for r in rows], provenance
        )
    if mode != "own":
        raise InvalidInputError(f"mode must be teacher_forced or own, got {mode!r}")
    if model is None:
        raise InvalidInputError("mode='own' needs the model whose responses to use")
    settings = settings or GenerationSettings(max_new_tokens=48, temperature=0.8, top_p=0.95, n=samples, seed=0)
    gens = generate(model, [r["prompt"] for r in rows], settings)
    judge = judge or (lambda _p, r: metrics.is_refusal(r))
    pos = [(g.prompt, g.text) for g in gens if g.text.strip() and judge(g.prompt, g.text)]
    neg = [(g.prompt, g.text) for g in gens if g.text.strip() and not judge(g.prompt, g.text)]
    if not pos or not neg:
        rate = len(pos) / max(1, len(pos) + len(neg))
        raise ContrastiveSetError(
            f"the model refused {rate:.0%} of {len(gens)} sampled responses to harmful prompts, so "
            "its own responses cannot form both sets; use mode='teacher_forced'"
        )
    provenance["refusal_rate_of_own_samples"] = len(pos) / (len(pos) + len(neg))
    return ContrastiveSet.from_pairs(pos, neg, provenance)


@dataclass(frozen=True)
class RefusalResult:
    rate: float
    degenerate: float
    responses: list[str]
    refused: list[list[bool]] = field(default_factory=list)  # per prompt, per sample
    records: list[dict[str, Any]] = field(default_factory=list)  # per generation (see generation_records)


def generation_records(
    gens: Sequence[Generation], n_samples: int, judges: dict[str, metrics.Judge], *, max_new_tokens: int
) -> list[dict[str, Any]]:
    """One record per generation: which prompt and sample, the text, its length, whether it
    stopped at EOS or was cut off at ``max_new_tokens``, the degeneracy flag and every judge's
    verdict (a judge that scores in batches gets them all at once), so a run can be re-scored
    without generating again. A user judge's failure names the prompt."""
    pairs = [(g.prompt, g.text) for g in gens]
    table: dict[str, list[bool]] = {}
    for name, judge in judges.items():
        try:
            table[name] = verdicts(judge, pairs)
        except JudgeError as err:
            if err.index is None:
                raise
            k = err.index
            raise JudgeError(
                f"{err.detail}, at prompt {k // n_samples} ({gens[k].prompt[:60]!r}); nothing was written"
            ) from None
    return [
        {
            "prompt_index": k // n_samples,
            "prompt": g.prompt,
            "sample": k % n_samples,
            "text": g.text,
            "n_tokens": g.n_tokens,
            "cut_off": not g.stopped and g.n_tokens >= max_new_tokens,
            "degenerate": metrics.is_degenerate(g.text),
            "judges": {name: table[name][k] for name in judges},
        }
        for k, g in enumerate(gens)
    ]


def refusal_eval(
    model: LoadedModel,
    prompts: Sequence[str],
    settings: GenerationSettings | None = None,
    judge: metrics.Judge | None = None,
    *,
    progress: bool = False,
) -> RefusalResult:
    """Refusal rate of the model's generations (``settings.n`` per prompt) by ``judge`` (ours,
    :func:`s2e_lens.core.judges.strict_refusal`, unless given). Every generation is recorded
    with the verdicts of the paper's judge, ours and ``judge``."""
    settings = settings or GenerationSettings(max_new_tokens=32)
    gens = generate(model, prompts, settings, progress=progress)
    chosen_name = getattr(judge, "name", "custom") if judge is not None else "strict"
    recorded = {**judges.BUILT_IN, **({chosen_name: judge} if judge is not None else {})}
    records = generation_records(gens, settings.n, recorded, max_new_tokens=settings.max_new_tokens)
    flags = [r["judges"][chosen_name] for r in records]  # each generation judged once
    refused = [flags[i * settings.n : (i + 1) * settings.n] for i in range(len(prompts))]
    texts = [g.text for g in gens]
    return RefusalResult(
        rate=sum(flags) / len(flags),
        degenerate=sum(r["degenerate"] for r in records) / len(records),
        responses=texts,
        refused=refused,
        records=records,
    )


def safety_suite(
    model: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    mc_items: Sequence[MultipleChoice] = (),
    benign_pairs: Sequence[tuple[str, str]] = (),
    scary_but_safe: Sequence[str] = (),
    max_new_tokens: int = 32,
    judge: metrics.Judge | None = None,
    decoding: GenerationSettings | None = None,
    attack_name: str = "harmful",
    other_attacks: dict[str, Sequence[str]] | None = None,
    by_generation: bool = False,
    gsm8k_items: Sequence[MathItem] = (),
) -> Suite:
    """Attribute: refusal rate on ``harmful`` (an attack set). Utility: multiple-choice
    accuracy on ``mc_items`` if given, else ``1 - over-refusal`` on ``harmless``. Also
    reported: over-refusal (harmless, scary-but-safe), degeneracy, benign cross-entropy and KL.
    ``decoding`` (greedy with ``max_new_tokens`` unless given) decides the samples per prompt."""
    settings = decoding or GenerationSettings(max_new_tokens=max_new_tokens, batch_size=48)

    def attribute(m: LoadedModel) -> dict[str, Any]:
        r = refusal_eval(m, harmful, settings, judge)
        b = refusal_eval(m, harmless, settings, judge)
        row: dict[str, Any] = {
            "attribute": r.rate,
            "refusal_harmful": r.rate,
            "over_refusal_harmless": b.rate,
            "harmless_answered": 1.0 - b.rate,
            "degenerate_harmful": r.degenerate,
            "degenerate_harmless": b.degenerate,
            "example_harmful": r.responses[0],
            "example_harmless": b.responses[0],
        }
        for name in judges.BUILT_IN:  # both judges' refusal rates, whichever one decides
            row[f"refusal_{name}"] = sum(x["judges"][name] for x in r.records) / len(r.records)
        sets = {attack_name: r, "harmless": b}
        if scary_but_safe:
            s = refusal_eval(m, scary_but_safe, settings, judge)
            row["over_refusal_scary"] = s.rate
            sets["scary_but_safe"] = s
        for name, prompts in (other_attacks or {}).items():  # every attack set given is reported
            o = refusal_eval(m, prompts, settings, judge)
            row[f"refusal_{name}"] = o.rate
            ci = rate_interval([[float(v) for v in p] for p in o.refused])
            row[f"refusal_{name}_low"], row[f"refusal_{name}_high"] = ci.low, ci.high
            sets[name] = o
        records = [{"set": name, **x} for name, res in sets.items() for x in res.records]
        row["degenerate"] = sum(x["degenerate"] for x in records) / len(records)
        row[ITEMS] = {"attribute": [[float(v) for v in p] for p in r.refused]}
        row[GENERATIONS] = records
        if not mc_items:  # utility = share of harmless prompts answered
            row["utility"] = row["harmless_answered"]
            row[ITEMS]["utility"] = [[1.0 - float(v) for v in p] for p in b.refused]
        return row

    def attack_only(m: LoadedModel) -> dict[str, Any]:
        return {"attribute": refusal_eval(m, harmful, settings, judge).rate}

    return Suite(
        "safety",
        attribute,
        utility_measure(mc_items, benign_pairs, by_generation=by_generation, gsm8k_items=gsm8k_items),
        KLReference(model, benign_pairs[:16]) if benign_pairs else None,
        {
            "n_harmful": len(harmful),
            "n_harmless": len(harmless),
            "n_mc": len(mc_items),
            "attack_set": attack_name,
            "other_attack_sets": {k: len(v) for k, v in (other_attacks or {}).items()},
            "judge": getattr(judge, "name", "strict" if judge is None else "custom"),
            "samples": settings.n,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_new_tokens": settings.max_new_tokens,
            "seed": settings.seed,
            "utility": "mc_generated" if by_generation and mc_items else "mc_accuracy" if mc_items else "harmless",
            "n_gsm8k": len(gsm8k_items),
        },
        attack_only,
        shareable=True,
    )


def decoding(size: SuiteSize, model: LoadedModel | None = None) -> GenerationSettings:
    """The evaluation's decoding: greedy (one sample) unless ``size`` asks for samples; seeded.
    ``temperature=None`` takes the temperature and top_p of ``model``'s generation config."""
    temperature, top_p = size.temperature, size.top_p
    if temperature is None:
        if model is None:
            raise InvalidInputError("temperature=None (the generation config's) needs the model")
        temperature, top_p = generation_config_sampling(model)
    if temperature == 0 and size.samples == 1:
        return GenerationSettings(max_new_tokens=size.max_new_tokens, batch_size=48, system=size.system_prompt)
    return GenerationSettings(
        max_new_tokens=size.max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        n=size.samples,
        seed=size.seed,
        system=size.system_prompt,
    )


def _suite(model: LoadedModel, size: SuiteSize) -> Suite:
    test = safety_prompts(size.part)
    attacks = [load_attack_set(a, prompt_field=size.prompt_field, data_dir=size.data_dir) for a in size.attacks]
    first, *others = [a.part(size.part) for a in attacks]
    return safety_suite(
        model,
        first.prompts[: size.n_eval],
        test["harmless"][: size.n_eval],
        scary_but_safe=test["scary_but_safe"][: size.n_eval],
        mc_items=utility_items(size),
        benign_pairs=benign_pairs(),
        max_new_tokens=size.max_new_tokens,
        judge=load_judge(size.judge, timeout_s=size.judge_timeout),
        decoding=decoding(size, model),
        attack_name=first.name,
        other_attacks={a.name: a.prompts[: size.n_eval] for a in others},
        by_generation=size.utility == "generated",
        gsm8k_items=gsm8k_items(size),
    )


def _examples(size: SuiteSize, n_attribute: int = 4, n_benign: int = 2) -> list[tuple[str, str]]:
    test = safety_prompts("test")
    return [("harmful", p) for p in test["harmful"][:n_attribute]] + [
        ("harmless", p) for p in test["harmless"][:n_benign]
    ]


BEHAVIOUR = register(
    Behaviour(
        name="safety",
        summary="refusing harmful requests (teacher-forced refusal vs compliance texts)",
        build=lambda model=None, data=None, data_dir=None, part="tune": safety(part=part),
        suite=_suite,
        labels={
            "attribute": "refusal rate on held-out harmful prompts",
            "utility": "multiple-choice accuracy (ARC-Easy, PIQA, HellaSwag)",
        },
        examples=_examples,
        presets={"quick": {"rho_attn": (0.1, 0.15, 0.2, 0.3), "rho_mlp": (0.0,)}},
    )
)


# ------------------------------------------------------------------ probe data: the paper's own

PROBES = ("teacher-forced", "own", "prompts")  # or a JSONL file of prompt, response, label rows
PLACEHOLDER = "OK"  # the response of a prompt-contrast pair: statistics over the prompt never read it


def prompt_contrast(part: str = "tune") -> ContrastiveSet:
    """Where refusal is decided before the first response token: harmful prompts (positive)
    against harmless ones (negative, scary-but-safe ones included), for statistics over the
    last prompt positions (``positions="prompt_end"``). Teacher-forced and own-answer sets pair
    the same prompts on both sides, so their prompt positions do not differ; this one does.
    Each pair's response is a placeholder that prompt-end statistics never read."""
    data = safety_prompts(part)
    harmful = [r["prompt"] for r in split(load_harmful_prompts(), lambda r: r["prompt"], part)]
    return ContrastiveSet.from_pairs(
        [(p, PLACEHOLDER) for p in harmful],
        [(p, PLACEHOLDER) for p in data["harmless"]],
        {
            "behaviour": "safety",
            "mode": "prompt_contrast",
            "split": part,
            "source": "s2e_lens/data/safety (harmful vs harmless prompts)",
            "n_prompts": len(harmful),
        },
    )


def generation_config_sampling(model: LoadedModel) -> tuple[float, float]:
    """The sampling the reference uses for its probe answers: the model's generation config's
    temperature and top_p where set, else 1.0 (vLLM's defaults). Its top_k is not applied."""
    cfg = model.hf_model.generation_config
    temperature = getattr(cfg, "temperature", None)
    top_p = getattr(cfg, "top_p", None)
    return (float(temperature) if temperature else 1.0), (float(top_p) if top_p else 1.0)


def own_probe(
    model: LoadedModel,
    *,
    harmful: Sequence[str] | None = None,
    benign: Sequence[str] | None = None,
    data_dir: str | None = None,
    settings: GenerationSettings | None = None,
    judge: metrics.Judge | None = None,
) -> ContrastiveSet:
    """The paper's probe data: positives are the model's own sampled answers to the harmful
    prompts (MaliciousInstruct unless given), negatives its own answers to the benign prompts
    (Alpaca unless given) re-paired, by position, with the harmful questions. No refusal
    filter, one sample per prompt, stripped as the reference strips them. ``settings``
    defaults to the model's generation-config sampling with 128 new tokens, seed 0.

    The refusals among the positives are counted with ``judge`` (ours unless given): a model
    that refuses none of them gives no refusal direction, and is refused here with the advice
    to use the teacher-forced texts."""
    from s2e_lens.behaviours.datasets import load_alpaca, load_malicious_instruct

    harmful = list(harmful) if harmful is not None else load_malicious_instruct(data_dir)
    benign = list(benign) if benign is not None else load_alpaca(data_dir)
    n = min(len(harmful), len(benign))
    if n < 2:
        raise ContrastiveSetError(f"the own probe needs at least 2 harmful and 2 benign prompts, got {n}")
    harmful, benign = harmful[:n], benign[:n]
    if settings is None:
        temperature, top_p = generation_config_sampling(model)
        settings = GenerationSettings(max_new_tokens=128, temperature=temperature, top_p=top_p, seed=0)
    answers_h = [g.text.strip() for g in generate(model, harmful, settings)]
    answers_b = [g.text.strip() for g in generate(model, benign, settings)]
    kept = [i for i in range(n) if answers_h[i] and answers_b[i]]  # an empty answer has no span to average
    judge = judge or judges.strict_refusal
    refusals = sum(verdicts(judge, [(harmful[i], answers_h[i]) for i in kept]))
    if refusals == 0:
        raise ContrastiveSetError(
            f"the model refused none of the {len(kept)} harmful probe prompts it answered (judge: "
            f"{getattr(judge, 'name', 'strict')}), so its own answers carry no refusal to extract; use the "
            "teacher-forced texts (--probe teacher-forced), which give it refusals to read"
        )
    provenance: dict[str, Any] = {
        "behaviour": "safety",
        "mode": "own",
        "n_prompts": len(kept),
        "dropped_empty": n - len(kept),
        "refusals_among_positives": refusals,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_new_tokens": settings.max_new_tokens,
        "seed": settings.seed,
    }
    return ContrastiveSet.from_pairs(
        [(harmful[i], answers_h[i]) for i in kept], [(harmful[i], answers_b[i]) for i in kept], provenance
    )


def read_prompt_list(path: str) -> list[str]:
    """Prompts from a ``.txt`` file (one per line) or a JSONL/CSV file with a ``prompt`` field."""
    from pathlib import Path

    from s2e_lens.behaviours.attacks import read_prompts

    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidInputError(f"prompt file {path} not found")
    if file.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise InvalidInputError(f"{path}: no prompts (the file is empty)")
        return lines
    return read_prompts(file, "prompt")
