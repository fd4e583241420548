"""The ``s2e`` application, its error boundary and the options its commands share.

Commands are thin: check every argument and output target, then load the model, call the
library, print. One error boundary (:class:`ErrorBoundary`) turns a user or environment error
(an :class:`S2EError`, or an ``OSError`` such as a missing, unreadable or unwritable file) into
one line on stderr and exit code 2; a traceback means a bug of ours.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer._click.core import Context as TyperContext  # the click that typer ships
from typer.core import TyperGroup

from s2e_lens.errors import S2EError
from s2e_lens.io.files import Terminated


def one_line(err: BaseException) -> str:
    """An error as one line: the message, or for an OSError the file and the reason."""
    if isinstance(err, OSError) and not isinstance(err, S2EError):
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror or err}"
    else:
        text = str(err)
    return " ".join(text.split())


class ErrorBoundary(TyperGroup):
    """Every command runs inside this: our errors and the environment's become one line and
    exit code 2; SIGTERM (turned into :class:`Terminated`) exits 143 and Ctrl-C 130, after
    cleanup ran, as a shell expects."""

    def invoke(self, ctx: TyperContext) -> Any:
        try:
            return super().invoke(ctx)
        except (S2EError, OSError) as err:
            typer.secho(f"error: {one_line(err)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        except Terminated:
            typer.secho("error: terminated; nothing partial was left behind", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=143) from None
        except KeyboardInterrupt:
            typer.secho("error: interrupted; nothing partial was left behind", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=130) from None


app = typer.Typer(
    name="s2e",
    help="Steer2Edit on TransformerLens: steering vectors -> sparse rank-1 weight edits.",
    cls=ErrorBoundary,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List, install and inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Packaged model name, local transformers directory, or hub id (org/name).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="KEY=VALUE: any run setting (repeatable; a RunConfig field, typed and checked), e.g. "
        "--set prompt_positions=8 --set rho_attn=0.1:0.3:0.05. It overrides the options above.",
    ),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing output files or a non-empty output directory.")
]
DataDirOpt = Annotated[str | None, typer.Option(help="Evaluation data folder (default: $S2E_DATA).")]
MaxDegenerateOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Exclude interventions with more than this share of degenerate generations (loops, "
        "repeated tokens, runs of punctuation) from the comparison and the headline.",
    ),
]
AnswerCheckOpt = Annotated[
    bool,
    typer.Option(
        "--answer-check/--skip-answer-check",
        help="Before evaluating, the unedited model must decode the same with and without its KV cache "
        "(always checked) and answer a few known questions sanely (skip this part for a model "
        "that cannot, e.g. one trained on code).",
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option("--dtype", help="Weights' dtype: float32 (the default), bfloat16 or float16."),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="Where the model runs: cpu (the default), cuda, cuda:1, mps."),
]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="Spread the model over devices with accelerate (instead of --device): auto, balanced, "
        'sequential, a JSON object such as \'{"model.layers.0": 0, "": "cpu"}\', or a JSON file.',
    ),
]
SamplesOpt = Annotated[
    int | None, typer.Option("--samples", help="Completions per evaluated prompt (needs --temperature > 0).")
]
TemperatureOpt = Annotated[float | None, typer.Option("--temperature", help="Sampling temperature; 0 = greedy.")]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling: keep this probability mass.")]
MaxNewTokensOpt = Annotated[int | None, typer.Option("--max-new-tokens", help="Tokens per evaluated generation.")]
JudgeOpt = Annotated[
    str | None,
    typer.Option(
        "--judge",
        help="Refusal judge: strict (ours, the default), paper (the reference's 32 case-sensitive substrings), "
        "reading (qwen2.5-coder-1.5b-instruct reads each answer against the gold-set rubric), "
        "or MODULE:function / path/to/file.py:function returning True for a refusal.",
    ),
]
AttackOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--attack",
        help="Attack set (repeatable; the first is the attribute, each is reported): advllm (the adversarial "
        "prompts in $S2E_DATA), plain (our harmful prompts, the default), or a .jsonl/.csv file.",
    ),
]
PromptFieldOpt = Annotated[
    str | None, typer.Option("--prompt-field", help="The prompt's field (column) in your own attack files.")
]
SystemPromptOpt = Annotated[
    str | None, typer.Option("--system-prompt", help="A system prompt for every probe pair and evaluated prompt.")
]
ReferenceStripOpt = Annotated[
    bool,
    typer.Option(
        "--reference-strip",
        help="Reproduce the reference code's quirk: .strip() the templated probe prompt (dropping the chat "
        "template's trailing newline) before appending the response. Off by default.",
    ),
]
ProbeOpt = Annotated[
    str | None,
    typer.Option(
        "--probe",
        help="Safety probe data: teacher-forced (our written refusal/compliance texts, the default), own (the "
        "paper's: the model's own answers to MaliciousInstruct vs to Alpaca re-paired with the same questions), "
        "prompts (harmful vs harmless prompts, for --positions prompt_end), or a JSONL of prompt, response, "
        "label rows.",
    ),
]
ProbePromptsOpt = Annotated[
    str | None, typer.Option("--probe-prompts", help="--probe own: harmful prompts (.txt lines, .jsonl/.csv prompt).")
]
BenignPromptsOpt = Annotated[
    str | None, typer.Option("--benign-prompts", help="--probe own: benign prompts (.txt lines, .jsonl/.csv prompt).")
]
SelectionOpt = Annotated[
    str | None,
    typer.Option(
        "--selection",
        help="Which edits are evaluated: screen (KL screen, the default), paper (every grid point scored on the "
        "attack set, the top 10 by attribute evaluated fully, as the reference does), or heldout (chosen on the "
        "tune split's frontier, reported on the test split).",
    ),
]
UtilityOpt = Annotated[
    str | None,
    typer.Option(
        "--utility",
        help="Utility: loglik (multiple choice by log-likelihood, the default) or generated (the model answers "
        "each item with a letter, as the paper measures).",
    ),
]
Gsm8kOpt = Annotated[
    int | None, typer.Option("--gsm8k", min=0, help="Also GSM8K accuracy by generation on N problems.")
]
BehaviourArg = Annotated[str, typer.Argument(help="safety or truthfulness")]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output directory.")]


def placement(dtype: str | None, device: str | None, device_map: str | None) -> dict[str, Any]:
    """``load_model``'s keywords from ``--dtype``, ``--device`` and ``--device-map``, checked
    before any model loads."""
    from s2e_lens.models.loading import placement_from_text

    return placement_from_text(dtype, device, device_map)


def check_data_dir(directory: str | None) -> None:
    """Check the evaluation-data folder before any model is loaded."""
    from s2e_lens.behaviours.datasets import data_dir

    data_dir(directory)
