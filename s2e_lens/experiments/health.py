"""Is the stack sane? Checks that a broken install cannot pass.

The first sign of a broken stack (a transformers or TransformerLens release that changes how
the bridge sees the KV cache, position ids or the attention mask) is generation: one forward
pass can still match transformers while cached decoding goes wrong from the second token on.
These checks compare the paths that must agree and ask the model questions whose answers are
known:

- :func:`decoding_check`: batched, left-padded, KV-cached greedy generation equals a plain
  argmax loop that recomputes the whole sequence for each prompt alone;
- :func:`known_answers_check`: short greedy answers contain the known answer and do not
  degenerate;
- :func:`logits_check`: the bridge's logits equal those of a plain transformers copy of the
  same checkpoint;
- :func:`static_export_check`: a figure can be written as PNG.

:func:`preflight` runs the first two before any evaluation (``s2e run``, ``s2e sweep``,
``s2e eval``) and raises :class:`StackBrokenError` naming the versions and the likely cause.
``s2e doctor`` runs them all.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import torch

from s2e_lens.core import metrics
from s2e_lens.engine.generation import GenerationSettings, eos_token_ids, generate
from s2e_lens.errors import S2EError
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.tokens import encode_prompt, has_chat_template

STACK_PACKAGES = ("torch", "transformers", "transformer-lens", "s2e-lens")
REINSTALL = (
    "reinstall the locked versions: 'make install' (or pip install --require-hashes --no-deps -r "
    "requirements.lock, then torch as the README's install section says)"
)


class StackBrokenError(S2EError):
    """The installed stack (or the model's weights) gives wrong or degenerate generations."""


@dataclass(frozen=True)
class KnownAnswer:
    prompt: str
    answers: tuple[str, ...]  # any of these, case-insensitive, counts as correct


# Short greedy answers that every packaged model gets right (checked on both): chat models
# get questions as user turns, base models a sentence to complete.
CHAT_ANSWERS: tuple[KnownAnswer, ...] = (
    KnownAnswer("What is the capital of France?", ("paris",)),
    KnownAnswer("What is the opposite of hot?", ("cold",)),
    KnownAnswer("What language is spoken in Spain?", ("spanish",)),
    KnownAnswer("What is 2 + 3?", ("5", "five")),
    KnownAnswer("How many days are in a week?", ("7", "seven")),
)
PLAIN_ANSWERS: tuple[KnownAnswer, ...] = (
    KnownAnswer("On a clear day, the sky is", ("blue",)),
    KnownAnswer("The opposite of hot is", ("cold",)),
    KnownAnswer("The official language of Spain is", ("spanish",)),
    KnownAnswer("Monday, Tuesday, Wednesday,", ("thursday",)),
    KnownAnswer("Romeo and Juliet was written by", ("shakespeare",)),
)
DECODING_PROMPTS = ("What is the capital of France?", "Tell me a short story about a cat.", "hi")


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``fix`` says what to do when ``ok`` is False."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def stack_versions() -> dict[str, str]:
    """Python and the versions of the packages whose combination decides correctness."""
    out = {"python": platform.python_version()}
    for dist in STACK_PACKAGES:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def describe_stack() -> str:
    return ", ".join(f"{k} {v}" for k, v in stack_versions().items())


# ----------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodingComparison:
    """Cached generation vs the recomputing argmax loop for one prompt."""

    prompt: str
    cached: list[int]
    reference: list[int]
    first_difference: int | None  # index of the first differing token, None if equal
    margin: float  # reference's logit gap between its token and the cached one there (0 if equal)
    scale: float = 0.0  # the largest |logit| there: a low-precision dtype rounds in proportion to it

    def agrees(self, tie_tolerance: float, relative: float = 0.0) -> bool:
        """Equal token for token, or they part only where the reference's top two logits tie
        within ``max(tie_tolerance, relative * scale)`` (rounding decides a tie; everything
        after it may differ)."""
        return self.first_difference is None or self.margin <= max(tie_tolerance, relative * self.scale)


def argmax_reference(
    model: LoadedModel, prompts: Sequence[str], max_new_tokens: int
) -> list[tuple[list[int], list[torch.Tensor]]]:
    """Greedy decoding the slow, obviously correct way: no KV cache, the whole sequence
    recomputed for every new token. The prompts share each forward pass, right-padded: in a
    causal model the padding after a sequence cannot reach its positions, so no attention
    mask or position ids are involved (the opposite of cached generation, which left-pads).
    Returns, per prompt, the tokens and the logits of every step. Hooks and edits on ``model``
    apply as usual."""
    seqs = [encode_prompt(model.tokenizer, p) for p in prompts]
    eos = set(eos_token_ids(model))
    out: list[list[int]] = [[] for _ in prompts]
    steps: list[list[torch.Tensor]] = [[] for _ in prompts]
    running = list(range(len(prompts)))
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            if not running:
                break
            rows = [seqs[i] + out[i] for i in running]
            width = max(len(r) for r in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, : len(r)] = torch.tensor(r)
            ends = sorted({len(r) - 1 for r in rows})  # the LM head only where a row ends
            logits = (
                model.hf_model(
                    input_ids=ids.to(model.device),
                    use_cache=False,
                    logits_to_keep=torch.tensor(ends, device=model.device),
                )
                .logits.float()
                .cpu()
            )
            still = []
            for j, i in enumerate(running):
                last = logits[j, ends.index(len(rows[j]) - 1)]
                steps[i].append(last)
                token = int(last.argmax())
                if token not in eos:
                    out[i].append(token)
                    still.append(i)
            running = still
    return list(zip(out, steps, strict=True))


def compare_decoding(
    model: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 8
) -> list[DecodingComparison]:
    """Cached, batched (left-padded) greedy generation against :func:`argmax_reference`."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    cached = generate(model, prompts, settings)
    references = argmax_reference(model, prompts, max_new_tokens)
    out = []
    for prompt, gen, (reference, steps) in zip(prompts, cached, references, strict=True):
        got = list(gen.token_ids)
        first = next((i for i, (a, b) in enumerate(zip(got, reference, strict=False)) if a != b), None)
        if first is None and len(got) != len(reference):
            first = min(len(got), len(reference))
        margin = scale = 0.0
        if first is not None and first < len(steps):
            logits = steps[first]  # the cached run took got[first], or stopped (an EOS) there
            taken = logits[got[first]] if first < len(got) else logits[eos_token_ids(model)].max()
            margin = float(logits.max() - taken)
            scale = float(logits.abs().max())
        out.append(DecodingComparison(prompt, got, reference, first, margin, scale))
    return out


TIE_ROUNDINGS = 4  # a tie in a low-precision dtype: within this many roundings of the largest logit


def decoding_check(
    model: LoadedModel,
    prompts: Sequence[str] = DECODING_PROMPTS,
    max_new_tokens: int = 16,
    tie_tolerance: float = 1e-3,
) -> Check:
    """Cached generation must equal the recomputing argmax loop (see :func:`compare_decoding`),
    up to ties: where the two part, the reference's top logits may differ by no more than
    ``tie_tolerance`` or, in a low-precision dtype, a few roundings at the logits' scale (the
    cached and uncached passes multiply matrices of different shapes, which round differently
    in bfloat16; a broken cache parts with margins of several logits)."""
    rows = compare_decoding(model, prompts, max_new_tokens)
    relative = TIE_ROUNDINGS * torch.finfo(next(model.hf_model.parameters()).dtype).eps
    bad = [r for r in rows if not r.agrees(tie_tolerance, relative)]
    if not bad:
        ties = [r for r in rows if r.first_difference is not None]
        detail = f"{len(rows)} prompts x {max_new_tokens} tokens agree"
        if ties:
            detail += f" ({len(ties)} part at a tie: logit margin {max(r.margin for r in ties):.3g})"
        return Check("cached generation == uncached argmax loop", True, detail)
    r = bad[0]
    tok = model.tokenizer
    detail = (
        f"{len(bad)}/{len(rows)} prompts differ; {r.prompt!r}: cached {tok.decode(r.cached)!r} vs "
        f"uncached {tok.decode(r.reference)!r} (first difference at token {r.first_difference}, "
        f"logit margin {r.margin:.3g})"
    )
    return Check(
        "cached generation == uncached argmax loop",
        False,
        detail,
        f"KV-cached decoding through the bridge is broken on this stack ({describe_stack()}); {REINSTALL}",
    )


# ------------------------------------------------------------------------ known answers


def known_answers(model: LoadedModel) -> tuple[KnownAnswer, ...]:
    return CHAT_ANSWERS if has_chat_template(model.tokenizer) else PLAIN_ANSWERS


@dataclass(frozen=True)
class AnswerResult:
    prompt: str
    text: str
    correct: bool
    degenerate: bool


def answer_known_questions(model: LoadedModel, max_new_tokens: int = 16) -> list[AnswerResult]:
    items = known_answers(model)
    gens = generate(model, [k.prompt for k in items], GenerationSettings(max_new_tokens=max_new_tokens))
    return [
        AnswerResult(k.prompt, g.text, any(a in g.text.lower() for a in k.answers), metrics.is_degenerate(g.text))
        for k, g in zip(items, gens, strict=True)
    ]


def known_answers_check(model: LoadedModel, min_share: float = 0.8) -> Check:
    """At least ``min_share`` of the known questions answered correctly and without
    degenerating, and at most one degenerate answer."""
    rows = answer_known_questions(model)
    good = [r for r in rows if r.correct and not r.degenerate]
    degenerate = [r for r in rows if r.degenerate]
    ok = len(good) >= min_share * len(rows) and len(degenerate) <= 1
    detail = f"{len(good)}/{len(rows)} known answers right and sane"
    if not ok:
        worst = next(r for r in rows if not (r.correct and not r.degenerate))
        detail += f"; e.g. {worst.prompt!r} -> {worst.text[:80]!r}" + (" (degenerate)" if worst.degenerate else "")
    fix = (
        ""
        if ok
        else "the model answers simple questions wrongly or degenerately: check that its weights "
        "are intact ('s2e doctor'; rebuild a packaged model's cache with 's2e models pull NAME' after "
        f"'make clean-cache') and that the stack is the locked one ({describe_stack()}); {REINSTALL}"
    )
    return Check("known answers", ok, detail, fix)


# ------------------------------------------------------------------------------ logits


def logits_check(model: LoadedModel, tolerance: float = 1e-3) -> Check:
    """The bridge's logits vs a plain transformers copy of the same checkpoint (needs the
    model's checkpoint directory: packaged and local models)."""
    from transformers import AutoModelForCausalLM

    checkpoint = model.card.checkpoint
    if checkpoint is None:
        return Check("bridge logits == transformers logits", True, "skipped: no local checkpoint")
    from s2e_lens.models.progress import transformers_progress

    with transformers_progress(False):
        plain = (
            AutoModelForCausalLM.from_pretrained(
                checkpoint, dtype=next(model.hf_model.parameters()).dtype, attn_implementation="eager"
            )
            .to(model.device)  # type: ignore[arg-type]
            .eval()
        )
    ids = torch.tensor([encode_prompt(model.tokenizer, DECODING_PROMPTS[1])], device=model.device)
    with torch.inference_mode():
        ours = model.bridge(ids, return_type="logits").float()
        theirs = plain(input_ids=ids).logits.float()
    diff = float((ours - theirs).abs().max())
    scale = float(theirs.abs().max())
    ok = diff <= tolerance * max(scale, 1.0)
    return Check(
        "bridge logits == transformers logits",
        ok,
        f"max |difference| {diff:.2e} (logit scale {scale:.1f})",
        ""
        if ok
        else f"the bridge computes a different model than transformers on this stack ({describe_stack()}); {REINSTALL}",
    )


# ------------------------------------------------------------------------------ figures


def static_export_check() -> Check:
    """A small plotly figure written as PNG through kaleido. Without a Chrome/Chromium the
    check passes as "not available" (static figures are optional); a browser that is found
    but fails to export fails the check."""
    import tempfile
    from pathlib import Path

    import plotly.graph_objects as go

    from s2e_lens.reporting import figures

    if not figures.can_export_static():
        # optional: without a browser, reports keep their interactive HTML figures
        return Check(
            "static figure export (PNG)",
            True,
            "not available (optional: no Chrome/Chromium for kaleido, so reports keep interactive HTML "
            "figures only); to enable: 'make browser INSTALL_CHROMIUM=yes' or any Chrome (BROWSER_PATH)",
        )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = figures.save_figure(go.Figure(go.Bar(y=[1, 2])), Path(tmp) / "check.png")
            size = path.stat().st_size
        except Exception as err:  # noqa: BLE001 - any failure of the browser is the answer
            return Check("static figure export (PNG)", False, f"{type(err).__name__}: {err}", figures.BROWSER_HINT)
    return Check("static figure export (PNG)", size > 0, f"wrote a {size:,}-byte PNG")


# ---------------------------------------------------------------------------- preflight


@dataclass
class Preflight:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def preflight(model: LoadedModel, *, known: bool = True) -> Preflight:
    """Check the unedited model before any evaluation: cached decoding agrees with the
    recomputing loop and (``known=True``) it answers known questions sanely. Raises
    :class:`StackBrokenError` with the versions and the likely cause on failure.

    ``known=False`` keeps only the decoding check, for models that cannot be expected to
    answer (tiny random test models, or a model trained on other text)."""
    result = Preflight([decoding_check(model)])
    if known and result.ok:
        result.checks.append(known_answers_check(model))
    failed = [c for c in result.checks if not c.ok]
    if failed:
        c = failed[0]
        raise StackBrokenError(
            f"the unedited model {model.card.name!r} failed the check '{c.name}' before any evaluation: "
            f"{c.detail}. Likely cause: {c.fix}. Nothing was evaluated."
        )
    return result


# ------------------------------------------------------------------------------- doctor


def packaged_model_check(name: str, *, required: bool = True) -> Check:
    """A packaged model's weight packages are installed at their pins, the GGUF's sha256
    matches the registry, and the float32 conversion is cached. A model that is not
    ``required`` and has none of its packages installed passes as "not installed"."""
    from s2e_lens.models.cache import checkpoint_dir, is_cached
    from s2e_lens.models.gguf import verify_cache_entry, weight_files_digest
    from s2e_lens.models.registry import packaged_model

    spec = packaged_model(name)
    label = f"packaged model {name}"
    pull = f"s2e models pull {name}"
    if not required and len(spec.missing_packages()) == len(spec.packages):
        return Check(label, True, f"not installed (optional; {pull} installs it)")
    if spec.missing_packages():
        missing = ", ".join(f"{p.dist}=={p.version}" for p in spec.missing_packages())
        return Check(label, False, f"weight package(s) not installed: {missing}", pull)
    try:
        digest = weight_files_digest(spec)
    except S2EError as err:
        return Check(label, False, str(err), pull)
    if digest != spec.sha256:
        return Check(
            label,
            False,
            f"sha256 {digest[:16]}... differs from the registry's {spec.sha256[:16]}...",
            spec.reinstall_command,
        )
    if not is_cached(spec):
        return Check(label, False, "sha256 matches, but the float32 conversion is not cached", pull)
    try:
        verify_cache_entry(spec, checkpoint_dir(spec), full=True)
    except S2EError as err:
        return Check(label, False, str(err).split("; rebuild")[0], f"{pull} --rebuild")
    return Check(label, True, f"sha256 {spec.sha256[:16]}... matches; converted cache matches its checksums")


def environment() -> dict[str, str]:
    """Versions, threads and device, as ``s2e doctor`` prints them."""
    out = stack_versions()
    out["torch threads"] = str(torch.get_num_threads())
    out["device"] = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return out


def doctor(model_name: str | None = None, *, figures_check: bool = True) -> list[Check]:
    """Every check, in order: the packaged models' files (a model none of whose packages is
    installed is noted, not failed, unless it is the default or ``model_name``), then on ``model_name`` (default:
    the default packaged model) logits parity, cached vs uncached decoding and known answers,
    then static figure export. A check that cannot run (its model failed to load) fails."""
    from s2e_lens.models.loading import load_model
    from s2e_lens.models.registry import DEFAULT_MODEL, PACKAGED_MODELS

    name = model_name or DEFAULT_MODEL
    # the default model and the one checked must be there; others only if (partly) installed
    checks = [packaged_model_check(m, required=m in (name, DEFAULT_MODEL)) for m in PACKAGED_MODELS]
    try:
        model = load_model(name, progress=False)
    except S2EError as err:
        checks.append(
            Check(
                f"load {name}",
                False,
                str(err).splitlines()[0],
                f"s2e models pull {name}" if name in PACKAGED_MODELS else "check the model name or path",
            )
        )
    else:
        checks += [logits_check(model), decoding_check(model), known_answers_check(model)]
    if figures_check:
        checks.append(static_export_check())
    return checks
