"""The settings of a run: the one source of its defaults (``s2e run`` and ``s2e sweep`` read
theirs from :class:`RunConfig`; each behaviour's presets adjust it by size). Light to import:
the CLI reads it at start-up; what it checks against is imported when it is checked."""

from __future__ import annotations

import math
import types
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from s2e_lens.core.comparison import DEGENERATE_LIMIT
from s2e_lens.errors import InvalidInputError
from s2e_lens.io.files import expand_user
from s2e_lens.models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch

    from s2e_lens.behaviours.base import SuiteSize

SIZES = ("quick", "full")
SELECTIONS = ("screen", "paper", "heldout")
PROTOCOLS = ("ours", "paper")
# --protocol paper (safety): the reference's choices; the sizes fit 2 CPU cores (quick) or follow the
# paper (full: 100 adversarial prompts, 10 samples of 128 tokens each)
PAPER_PROTOCOL: dict[str, dict[str, Any]] = {
    "base": {
        "probe": "own",
        "attacks": ("advllm",),
        "judge": "paper",
        "temperature": None,  # the model's generation config, as the reference samples
        "top_p": 1.0,
        "selection": "paper",
        "utility": "generated",
        "keep_edits": 10,
        "baselines": False,
    },
    "quick": {"samples": 3, "max_new_tokens": 64, "n_eval": 16},
    "full": {"samples": 10, "max_new_tokens": 128, "n_eval": 100, "n_gsm8k": 30},
}
STATISTICS_BATCH_SIZE = 16  # on the CPU (the README's runs used it)
# what `quick` changes for every behaviour (each behaviour's own "quick" preset comes after)
# n_mc=70 per set gives 210 utility items: a 95% interval of about +-0.07 at accuracy 0.5 (30
# items gave +-0.17, too wide for two frontiers to share a utility range)
QUICK = {"keep_edits": 3, "baselines": False, "n_eval": 24, "n_mc": 70, "alpha": (0.5, 0.8)}
QUICK_GAMMAS = (0.5, 1.0, 2.0)  # a behaviour whose base preset sets gammas keeps its first three


MAX_GRID = 1000  # points one range may expand to


def parse_grid(text: str, name: str = "grid") -> tuple[float, ...]:
    """Grid values from text: comma-separated numbers and ``start:stop:step`` ranges (both
    ends included), in the order given.

    >>> parse_grid("0.16:0.24:0.02")
    (0.16, 0.18, 0.2, 0.22, 0.24)
    >>> parse_grid("0,0.5:1:0.25")
    (0.0, 0.5, 0.75, 1.0)
    """
    values: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            bounds = [float(x) for x in part.split(":")]
        except ValueError:
            raise InvalidInputError(
                f"{name} takes numbers and start:stop:step ranges separated by commas, got {part!r}"
            ) from None
        if len(bounds) == 1:
            values.append(bounds[0])
            continue
        if len(bounds) != 3:
            raise InvalidInputError(f"{name}: a range is start:stop:step, got {part!r}")
        start, stop, step = bounds
        if not step > 0 or stop < start:
            raise InvalidInputError(f"{name}: in {part!r} the step must be > 0 and stop >= start")
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count > MAX_GRID:
            raise InvalidInputError(f"{name}: {part!r} expands to {count} points; at most {MAX_GRID} per range")
        values += [round(start + i * step, 10) for i in range(count)]
    return tuple(values)


def evaluated_behaviour(name: str) -> None:
    """Refuse a behaviour without an evaluation suite (runs and sweeps need one)."""
    from s2e_lens.behaviours.base import names

    runnable = names(evaluated=True)
    if name not in runnable:
        raise InvalidInputError(f"behaviour must be one of {', '.join(runnable)}, got {name!r}")


@dataclass(frozen=True)
class Range:
    """The values a numeric setting admits: declared with the field (``metadata=at_least(1)``)
    and checked for every field that has one when a :class:`RunConfig` is made, before any
    model loads. NaN and infinities never pass; an integer setting takes whole numbers only."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    integer: bool = False
    optional: bool = False  # None allowed (it means "the default of something else")

    def check(self, name: str, value: object) -> None:
        if value is None and self.optional:
            return
        kind = "a whole number" if self.integer else "a number"
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (self.integer and not isinstance(value, int))
        ):
            raise InvalidInputError(f"{name} must be {kind}{self.describe()}, got {value!r}")
        if not math.isfinite(value):
            raise InvalidInputError(f"{name} must be a finite number{self.describe()}, got {value!r}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if too_low or (self.high is not None and value > self.high):
            raise InvalidInputError(f"{name} must be {kind}{self.describe()}, got {value!r}")

    def describe(self) -> str:
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = None if self.high is None else f"<= {self.high:g}"
        return " " + " and ".join(x for x in (low, high) if x) if (low or high) else ""


def at_least(low: float, *, integer: bool = True, optional: bool = False) -> dict[str, Range]:
    return {"range": Range(low=low, integer=integer, optional=optional)}


def between(low: float, high: float, *, low_open: bool = False) -> dict[str, Range]:
    return {"range": Range(low=low, high=high, low_open=low_open)}


FINITE = {"range": Range()}
POSITIVE = {"range": Range(low=0.0, low_open=True)}


@dataclass
class RunConfig:
    """Knobs of a run. The defaults fit in minutes on a 2-core CPU for a 135M model."""

    model: str = DEFAULT_MODEL
    behaviour: str = "safety"
    gammas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    rho_attn: tuple[float, ...] = (0.08, 0.1, 0.12, 0.15, 0.2, 0.3)
    rho_mlp: tuple[float, ...] = (0.0, 1.0)
    alpha: tuple[float, ...] = (0.5, 0.7, 0.8)
    keep_edits: int = field(default=7, metadata=at_least(1))  # Steer2Edit candidates evaluated after pruning
    max_kl: float = field(
        default=0.5, metadata=POSITIVE
    )  # pruning: candidates that move benign next-token distributions more are dropped
    baselines: bool = True  # also evaluate weight orthogonalisation and an ITI-style top-K-heads shift
    iti_k: int = field(default=8, metadata=at_least(1))
    iti_gamma: float = field(default=2.0, metadata=FINITE)
    n_eval: int = field(default=40, metadata=at_least(1))  # held-out prompts (or questions) per evaluation set
    n_mc: int = field(
        default=70, metadata=at_least(1)
    )  # multiple-choice items per utility set (ARC-Easy, PIQA, HellaSwag): 3 x 70 = 210 items
    max_new_tokens: int = field(default=32, metadata=at_least(1))
    batch_size: int | str | None = None  # statistics: see statistics_batch_size()
    # where the model runs (load_model's dtype, device, device_map, as text: see placement())
    dtype: str = "float32"
    device: str | None = None  # None: the CPU (or wherever device_map puts each module)
    device_map: str | None = None
    data_dir: str | None = None
    seed: int = field(default=0, metadata=at_least(0))
    # before any evaluation, the unedited model must decode the same with and without its KV
    # cache (always) and answer known questions sanely (this flag; off for models that cannot)
    check_answers: bool = True
    # interventions with more than this share of degenerate generations are excluded
    max_degenerate: float = field(default=DEGENERATE_LIMIT, metadata=between(0.0, 1.0))
    # every intervention's generation and scoring in shared batches, each row under its own
    # intervention (engine.shared_batches), where the suite allows it; false: one at a time
    shared_batches: bool = True
    # how generated attributes are measured (safety): decoding, judge, attack sets
    samples: int = field(default=1, metadata=at_least(1))  # completions per prompt (more than 1 needs temperature > 0)
    temperature: float | None = field(
        default=0.0, metadata=at_least(0.0, integer=False, optional=True)
    )  # 0 = greedy; None = the model's generation config (with top_p)
    top_p: float = field(default=1.0, metadata=between(0.0, 1.0, low_open=True))
    judge: str = "strict"  # paper | strict | MODULE:function | path/to/file.py:function
    judge_timeout: float = field(default=30.0, metadata=POSITIVE)  # seconds per call of a user judge
    attacks: tuple[str, ...] = ("plain",)  # advllm | plain | FILE.jsonl/.csv; the first is the attribute
    prompt_field: str = "prompt"  # the prompt's field (column) in your own attack files
    system_prompt: str | None = None  # for every probe pair and every evaluated prompt
    # the probe data the statistics come from (safety): teacher-forced texts, the model's own
    # answers (the paper's construction), or a JSONL of prompt, response, label rows
    probe: str = "teacher-forced"
    probe_prompts: str | None = None  # own: harmful prompts instead of MaliciousInstruct (.txt/.jsonl/.csv)
    benign_prompts: str | None = None  # own: benign prompts instead of Alpaca
    # which edits are evaluated: screen (KL screen, every kept edit reported on the test split),
    # paper (every grid point scored on the attack set, the top keep_edits by attribute evaluated
    # fully, as the reference does), heldout (KL screen, then the tune split's frontier reported
    # on the test split)
    selection: str = "screen"
    utility: str = "loglik"  # loglik (multiple choice by log-likelihood) or generated (by generated letter)
    n_gsm8k: int = field(default=0, metadata=at_least(0))  # also GSM8K accuracy by generation on this many problems
    reference_strip: bool = False  # reproduce the reference's .strip() of the probe prompts (a quirk)
    # the edit rule (EditSettings' variant fields; the defaults are the paper's) and how plans
    # are made: layer-sequential in blocks of ``sequential`` layers (0: off), each block's inputs
    # re-estimated on at most ``sequential_pairs`` probe pairs per side (0: all); ``target_kl``
    # replaces the budget grid by calibration: one edit per (alpha, target), its budgets scaled
    # from the first rho_attn / rho_mlp, and one steering strength per target
    direction: str = "gradient"
    importance: str = "cosine"
    edit_selection: str = "elastic_net"
    top_k: int = field(
        default=0, metadata=at_least(0)
    )  # edit_selection top_k: components kept per block type switched on
    magnitude: str = "paper"
    vectors: str = "layer"
    sequential: int = 0  # checked in __post_init__ (a block size >= 1, or 0: off)
    sequential_pairs: int = 128  # checked in __post_init__ (pairs >= 1, or 0: all)
    target_kl: tuple[float, ...] = ()
    # where the statistics average: response (the paper's), prompt_end (the last prompt_positions
    # prompt tokens; needs prompts that differ between the sets, e.g. probe "prompts"), or both
    positions: str = "response"
    prompt_positions: int = field(default=4, metadata=at_least(1))

    def __post_init__(self) -> None:
        """Bad settings are refused here, before any model is loaded."""
        from s2e_lens.engine.interventions import grid

        for f in fields(self):
            if "range" in f.metadata:
                f.metadata["range"].check(f.name, getattr(self, f.name))

        evaluated_behaviour(self.behaviour)
        grid(self.rho_attn, self.rho_mlp, self.alpha, **self.edit_variant())  # EditSettings checks each point
        if isinstance(self.sequential, bool) or not isinstance(self.sequential, int) or self.sequential < 0:
            raise InvalidInputError(f"sequential must be a block size >= 1 (or 0: off), got {self.sequential!r}")
        if (
            isinstance(self.sequential_pairs, bool)
            or not isinstance(self.sequential_pairs, int)
            or self.sequential_pairs < 0
        ):
            raise InvalidInputError(
                f"sequential_pairs must be a number of pairs >= 1 (or 0: all), got {self.sequential_pairs!r}"
            )
        bad_kl = [t for t in self.target_kl if not (math.isfinite(t) and t > 0)]
        if bad_kl:
            raise InvalidInputError(f"KL targets must be positive numbers, got {bad_kl}")
        bad = [g for g in self.gammas if not math.isfinite(g)]
        if bad:
            raise InvalidInputError(f"steering gammas must be finite numbers, got {bad}")
        if not 0.0 <= self.max_degenerate <= 1.0:
            raise InvalidInputError(f"max_degenerate must be in [0, 1], got {self.max_degenerate}")
        self.placement()  # checks dtype, device and device_map
        if self.utility not in ("loglik", "generated"):
            raise InvalidInputError(f"utility must be loglik or generated, got {self.utility!r}")
        if self.n_gsm8k < 0:
            raise InvalidInputError(f"n_gsm8k must be >= 0, got {self.n_gsm8k}")
        if self.selection not in SELECTIONS:
            raise InvalidInputError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        self.check_positions()
        self.check_protocol()
        self.statistics_batch_size("cpu")  # checks batch_size

    def edit_variant(self) -> dict[str, Any]:
        """EditSettings' rule fields for every grid point."""
        return {
            "direction": self.direction,
            "importance": self.importance,
            "selection": self.edit_selection,
            "top_k_attn": self.top_k,
            "top_k_mlp": self.top_k,
            "magnitude": self.magnitude,
            "vectors": self.vectors,
        }

    def check_protocol(self) -> None:
        """Decoding, judge and attack sets: checked (files read, the judge imported and tried)
        before any model work."""
        from s2e_lens.engine.generation import GenerationSettings

        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise InvalidInputError(f"samples must be a whole number >= 1, got {self.samples!r}")
        if self.temperature is None:  # the model's own sampling settings, read once it is loaded
            if self.max_new_tokens < 1:
                raise InvalidInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        elif self.samples > 1 and self.temperature == 0:
            raise InvalidInputError(
                f"{self.samples} samples per prompt need sampling: give a temperature > 0 (greedy decoding "
                "gives one answer per prompt)"
            )
        else:
            GenerationSettings(
                max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, n=self.samples
            )  # checks temperature >= 0, top_p in (0, 1], max_new_tokens >= 1
        if self.behaviour != "safety":
            return
        from s2e_lens.behaviours.attacks import load_attack_set
        from s2e_lens.engine.reading_judge import check_judge

        check_judge(self.judge, timeout_s=self.judge_timeout)
        self.check_probe()
        if not self.attacks:
            raise InvalidInputError("give at least one attack set (advllm, plain or a file)")
        names = [load_attack_set(a, prompt_field=self.prompt_field, data_dir=self.data_dir).name for a in self.attacks]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"attack sets need distinct names; got {names}")

    def check_positions(self) -> None:
        """Where the statistics average, and whether the probe data can differ there."""
        from s2e_lens.models.tokens import POSITIONS

        if self.positions not in POSITIONS:
            raise InvalidInputError(f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if self.prompt_positions < 1:
            raise InvalidInputError(f"prompt_positions must be >= 1, got {self.prompt_positions}")
        if self.probe == "prompts" and self.positions != "prompt_end":
            raise InvalidInputError(
                "--probe prompts pairs harmful with harmless prompts and placeholder responses: use it "
                "with --positions prompt_end (statistics over the last prompt tokens)"
            )
        if self.positions == "prompt_end" and (self.behaviour != "safety" or self.probe in ("teacher-forced", "own")):
            raise InvalidInputError(
                f"{self.behaviour}'s probe data ({self.probe}) put the same prompts on both sides, so their last "
                "prompt positions do not differ: for safety use --probe prompts (harmful vs harmless prompts) "
                "with --positions prompt_end, or --positions both"
            )

    def check_probe(self) -> None:
        from s2e_lens.behaviours.custom import custom_jsonl
        from s2e_lens.behaviours.safety import PROBES, read_prompt_list

        if self.probe not in PROBES:
            if not expand_user(self.probe).is_file():
                raise InvalidInputError(
                    f"probe {self.probe!r}: use teacher-forced, own, or a JSONL file of prompt, response, label rows"
                )
            custom_jsonl(self.probe)  # reads and checks every row
        if (self.probe_prompts or self.benign_prompts) and self.probe != "own":
            raise InvalidInputError("--probe-prompts and --benign-prompts go with --probe own")
        for path in (self.probe_prompts, self.benign_prompts):
            if path:
                read_prompt_list(path)

    def statistics_batch_size(self, device: str | torch.device) -> int | Literal["auto"]:
        """The statistics pass's batch size on ``device``: as set, else 16 on the CPU and
        "auto" (the largest that fits) on accelerators."""
        import torch

        from s2e_lens.engine.batching import resolve

        return resolve(self.batch_size, torch.device(device), STATISTICS_BATCH_SIZE)  # type: ignore[arg-type]

    def statistics_options(self, device: str | torch.device) -> dict[str, Any]:
        """``collect_statistics``' (and ``sequential_plan``'s) keywords for this run's probe data."""
        return {
            "batch_size": self.statistics_batch_size(device),
            "system": self.system_prompt,
            "reference_strip": self.reference_strip,
            "positions": self.positions,
            "prompt_positions": self.prompt_positions,
        }

    def placement(self) -> dict[str, Any]:
        """``load_model``'s dtype, device and device_map keywords for this run."""
        from s2e_lens.models.loading import placement_from_text

        return placement_from_text(self.dtype, self.device, self.device_map)

    @classmethod
    def preset(
        cls, behaviour: str = "safety", size: str = "quick", *, protocol: str = "ours", **overrides: Any
    ) -> RunConfig:
        """Settings by behaviour and size. ``quick`` (what ``s2e run`` and ``make demo`` use)
        evaluates 3 steering strengths and 3 edits on small held-out sets, a few minutes for
        a 135M model on 2 CPU cores; ``full`` is the sweep behind the README's tables. Each
        behaviour's presets adjust the grids (truthfulness needs larger budgets than safety)."""
        from s2e_lens.behaviours.base import get

        evaluated_behaviour(behaviour)
        if size not in SIZES:
            raise InvalidInputError(f"size must be quick or full, got {size!r}")
        presets = get(behaviour).presets
        settings: dict[str, Any] = {"behaviour": behaviour, **presets.get("base", {})}
        if size == "quick":
            settings.update(QUICK, gammas=tuple(settings.get("gammas", QUICK_GAMMAS))[:3])
        settings.update(presets.get(size, {}))
        if protocol not in PROTOCOLS:
            raise InvalidInputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if protocol == "paper":
            if behaviour != "safety":
                raise InvalidInputError("--protocol paper is defined for safety (the paper's refusal protocol)")
            settings.update(PAPER_PROTOCOL["base"], **PAPER_PROTOCOL[size])
        settings.update(overrides)
        return cls(**settings)

    def suite_size(self) -> SuiteSize:
        from s2e_lens.behaviours.base import SuiteSize

        return SuiteSize(
            n_eval=self.n_eval,
            n_mc=self.n_mc,
            max_new_tokens=self.max_new_tokens,
            data_dir=self.data_dir,
            seed=self.seed,
            samples=self.samples,
            temperature=self.temperature,
            top_p=self.top_p,
            judge=self.judge,
            judge_timeout=self.judge_timeout,
            attacks=tuple(self.attacks),
            prompt_field=self.prompt_field,
            system_prompt=self.system_prompt,
            utility=self.utility,
            n_gsm8k=self.n_gsm8k,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` texts as RunConfig fields, each converted by the field's type: grids take
    :func:`parse_grid` ranges, lists are comma-separated, ``none`` clears an optional field.
    Unknown keys and values of the wrong type are refused with the fields named.

    >>> config_overrides(["n_eval=16", "attacks=advllm,plain", "rho_attn=0.1:0.3:0.1", "temperature=none"])
    {'n_eval': 16, 'attacks': ('advllm', 'plain'), 'rho_attn': (0.1, 0.2, 0.3), 'temperature': None}
    """
    import typing

    hints = typing.get_type_hints(RunConfig)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            known = ", ".join(sorted(hints))
            raise InvalidInputError(f"--set takes KEY=VALUE with KEY a run setting; got {pair!r}. Settings: {known}")
        out[key] = _convert(text.strip(), hints[key], key)
    return out


def _convert(text: str, hint: Any, key: str) -> Any:
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional and text.lower() in ("none", "null", ""):
        return None
    if optional and len(args) == 1:
        hint = args[0]
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            inner = typing.get_args(hint)[0]
            if inner is float:
                return parse_grid(text, key)
            return tuple(x.strip() for x in text.split(",") if x.strip())
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if origin is typing.Union or origin is types.UnionType:  # e.g. int | str | None: keep text or int
            return int(text) if text.isdigit() else text
        return text
    except InvalidInputError:
        raise
    except ValueError:
        raise InvalidInputError(f"--set {key}={text!r}: not a valid {getattr(hint, '__name__', hint)}") from None
