"""Nothing lost, nothing silent: one test per defect found by the bad-input and fault trial
(issue 11), the write path as a property over writers and targets, and every command's error
boundary. Every test that touches disk hashes the whole tree before and after."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, tiny_set
from typer.testing import CliRunner

from s2e_lens.behaviours.datasets import DataDirError, DataFormatError
from s2e_lens.cli import app
from s2e_lens.core.plan import EditPlan, PlanError
from s2e_lens.core.settings import EditSettings
from s2e_lens.core.statistics import ContrastiveStatistics
from s2e_lens.core.vectors import SteeringVectors
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.engine.interventions import steered
from s2e_lens.engine.mapper import EditConflictError, UnsafeEditError, apply_plan, revert
from s2e_lens.engine.planning import compute_plan
from s2e_lens.errors import InvalidInputError, S2EError
from s2e_lens.io import files, serialization
from s2e_lens.models.export import export_model
from s2e_lens.models.loaded import LoadedModel
from s2e_lens.models.loading import load_model

runner = CliRunner()
SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
UNWRITABLE = Path("/proc/s2e-no-such/out")  # even root cannot create anything under /proc


def tree_hash(root: Path) -> str:
    """Names, kinds, modes and contents of everything under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest.update(f"{path.relative_to(root)}|{st.st_mode}".encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def forbid_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading a model fail the test, in every module that binds ``load_model`` at import
    (imported here first, so that none binds the stand-in for good and leaks it into later tests)."""
    import s2e_lens.experiments.ablation
    import s2e_lens.experiments.pipelines
    import s2e_lens.models.loading

    def no_loading(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded before the settings were checked")

    for module in (s2e_lens.models.loading, s2e_lens.experiments.pipelines, s2e_lens.experiments.ablation):
        monkeypatch.setattr(module, "load_model", no_loading)


@pytest.fixture(scope="module")
def tiny(tiny_dirs: dict[str, Path]) -> dict[str, object]:
    """A tiny llama, its statistics, a plan and vectors (shared, read-only)."""
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    stats = collect_statistics(model, tiny_set(6), progress=False)
    plan = compute_plan(model, stats, EditSettings(rho_attn=0.2, rho_mlp=0.5, alpha=0.5))
    return {
        "dir": str(tiny_dirs["llama"]),
        "model": model,
        "stats": stats,
        "plan": plan,
        "vectors": SteeringVectors.from_statistics(stats),
    }


@pytest.fixture
def workdir(tmp_path: Path, tiny: dict[str, object]) -> Iterator[Path]:
    """home/work holding a plan, statistics and vectors; the test runs inside work (so that
    '..' is home, which the test owns too)."""
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (tmp_path / "home" / "sibling.txt").write_text("mine")
    tiny["plan"].save(work / "plan")  # type: ignore[attr-defined]
    tiny["stats"].save(work / "statistics")  # type: ignore[attr-defined]
    tiny["vectors"].save(work / "vectors")  # type: ignore[attr-defined]
    old = Path.cwd()
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(old)


# ----------------------------------------------------------------- 1. export into . or ..


@pytest.mark.parametrize("target", [".", ".."])
def test_1_export_into_the_current_directory_or_its_parent_loses_nothing(
    workdir: Path, tiny: dict[str, object], target: str
) -> None:
    before = tree_hash(workdir.parent)
    for extra in ([], ["--overwrite"]):
        result = invoke("export", "plan.safetensors", "--out", target, "--model", str(tiny["dir"]), *extra)
        assert_one_line_error(result, "current directory")
    assert tree_hash(workdir.parent) == before


# ---------------------------------------------------------- 2. saving over existing files


def test_2a_edit_refuses_to_write_its_plan_over_its_input(workdir: Path, tiny: dict[str, object]) -> None:
    before = tree_hash(workdir)
    for extra in ([], ["--overwrite"]):
        result = invoke(
            "edit", "statistics.safetensors", "--out", "statistics.safetensors", "--model", str(tiny["dir"]), *extra
        )
        assert_one_line_error(result, "would overwrite the input")
    assert tree_hash(workdir) == before


def test_2b_extract_refuses_to_replace_existing_statistics(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    out = tmp_path / "stats"
    out.mkdir()
    (out / "statistics.safetensors").write_bytes(b"another model's statistics")
    before = tree_hash(tmp_path)
    result = invoke("extract", "safety", "--model", str(tiny_dirs["qwen2"]), "--out", str(out))
    assert_one_line_error(result, "exists; pass --overwrite")
    assert tree_hash(tmp_path) == before
    ok = invoke("extract", "safety", "--model", str(tiny_dirs["qwen2"]), "--out", str(out), "--overwrite", "--json")
    assert ok.exit_code == 0, ok.output
    assert serialization.kind_of(out / "statistics") == "contrastive_statistics"


# ------------------------------------------------- 3. options that cannot apply are refused


def test_3_edit_of_a_plan_refuses_options_it_would_ignore(workdir: Path, tiny: dict[str, object]) -> None:
    before = tree_hash(workdir)
    result = invoke(
        "edit", "plan.safetensors", "--rho-attn", "0.3", "--alpha", "0.9", "--out", "new", "--model", str(tiny["dir"])
    )
    assert_one_line_error(result, "already a plan", "--rho-attn", "--alpha", "--out")
    assert tree_hash(workdir) == before and not Path("new.safetensors").exists()


# ---------------------------------------------------------------------- 4. weights guarded


def test_4a_a_plan_with_nan_or_huge_lambdas_is_refused(workdir: Path, tiny: dict[str, object]) -> None:
    plan: EditPlan = tiny["plan"]  # type: ignore[assignment]
    model: LoadedModel = tiny["model"]  # type: ignore[assignment]
    weights = {k: v.clone() for k, v in model.hf_state_dict().items()}
    nan = EditPlan(**{**plan.__dict__, "head_lambda": plan.head_lambda.clone().fill_(math.nan)})
    with pytest.raises(serialization.FileFormatError, match="NaN or infinite"):
        nan.save(workdir / "nan")
    with pytest.raises(UnsafeEditError, match="NaN or infinite"):
        apply_plan(model, nan)
    # a file damaged on disk (the trial wrote NaN into a saved plan)
    tensors, meta = serialization.load(workdir / "plan", kind="edit_plan")
    tensors["head_lambda"] = torch.full_like(tensors["head_lambda"], math.nan)
    from safetensors.torch import save_file

    save_file(tensors, str(workdir / "damaged.safetensors"), metadata={"s2e": json.dumps(meta)})
    result = invoke("export", "damaged.safetensors", "--out", "exp", "--model", str(tiny["dir"]))
    assert_one_line_error(result, "damaged.safetensors", "NaN or infinite")
    huge_lambda = plan.head_lambda.clone()
    huge_lambda[plan.edited_heads] = 1e30
    huge = EditPlan(**{**plan.__dict__, "head_lambda": huge_lambda})
    with pytest.raises(UnsafeEditError, match=r"larger than 100x .*L\dH\d"):
        apply_plan(model, huge)
    assert all(torch.equal(v, weights[k]) for k, v in model.hf_state_dict().items())
    assert not Path("exp").exists()


def test_4b_a_near_zero_budget_is_refused_unless_forced(workdir: Path, tiny: dict[str, object]) -> None:
    before = tree_hash(workdir)
    args = ["edit", "statistics.safetensors", "--rho-attn", "1e-9", "--rho-mlp", "1e-9", "--model", str(tiny["dir"])]
    assert_one_line_error(invoke(*args), "larger than 100x", "rho_attn=1e-09", "--force")
    assert tree_hash(workdir) == before
    assert invoke(*args, "--force").exit_code == 0


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["corrupt", "truncate", "corrupt, size and mtime kept"])
def test_4c_a_damaged_model_cache_is_refused_with_the_rebuild_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    from s2e_lens.errors import WeightsCorruptError
    from s2e_lens.models.cache import checkpoint_dir
    from s2e_lens.models.registry import DEFAULT_MODEL, PACKAGED_MODELS

    spec = PACKAGED_MODELS[DEFAULT_MODEL]
    original = checkpoint_dir(spec)
    monkeypatch.setenv("S2E_CACHE", str(tmp_path))
    copy = checkpoint_dir(spec)
    shutil.copytree(original, copy)
    weights = copy / "model.safetensors"
    load_model(DEFAULT_MODEL, progress=False)  # the copy is verified once (and its new times recorded)
    before = weights.stat()
    with weights.open("r+b") as fh:
        if damage.startswith("corrupt"):  # same size, a few values changed (NaN bytes)
            fh.seek(weights.stat().st_size // 2)
            fh.write(b"\x7f\xc0\x00\x00" * 64)
        else:
            fh.truncate(weights.stat().st_size // 3)
    if damage == "corrupt, size and mtime kept":
        os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # what touch -r does
        assert weights.stat().st_mtime_ns == before.st_mtime_ns and weights.stat().st_size == before.st_size
    with pytest.raises(WeightsCorruptError, match=rf"damaged.*s2e models pull {DEFAULT_MODEL} --rebuild"):
        load_model(DEFAULT_MODEL, progress=False)
    result = invoke("chat", "hi", env={"S2E_CACHE": str(tmp_path)})
    assert_one_line_error(result, "damaged", "--rebuild")


# ------------------------------------------------------------ 5. tracebacks become one line


def test_5a_a_missing_data_file(tiny: dict[str, object], tmp_path: Path) -> None:
    result = invoke(
        "extract",
        "custom",
        "--data",
        str(tmp_path / "rows.jsonl"),
        "--model",
        str(tiny["dir"]),
        "--out",
        str(tmp_path / "x"),
    )
    assert_one_line_error(result, "rows.jsonl", "no such file")


def test_5b_out_at_a_file_or_an_unwritable_place_fails_before_any_work(
    tmp_path: Path, tiny: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    import s2e_lens.models.loading

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(s2e_lens.models.loading, "load_model", no_loading)
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    before = tree_hash(tmp_path)
    assert_one_line_error(invoke("extract", "safety", "--out", str(a_file)), "is a file")
    assert_one_line_error(invoke("extract", "safety", "--out", str(UNWRITABLE)), "cannot write")
    assert_one_line_error(invoke("export", str(tmp_path / "nope"), "--out", str(UNWRITABLE)), "cannot write")
    assert tree_hash(tmp_path) == before


def test_5c_an_unwritable_model_cache() -> None:
    result = invoke("models", "show", "smollm2-135m-instruct", env={"S2E_CACHE": str(UNWRITABLE)})
    assert_one_line_error(result, "S2E_CACHE")


def test_5d_a_plan_header_without_settings(workdir: Path) -> None:
    tensors, meta = serialization.load(workdir / "plan", kind="edit_plan")
    del meta["settings"]
    from safetensors.torch import save_file

    save_file(tensors, str(workdir / "nosettings.safetensors"), metadata={"s2e": json.dumps(meta)})
    with pytest.raises(serialization.FileFormatError, match=r"nosettings.safetensors: the header lacks \['settings'\]"):
        EditPlan.load(workdir / "nosettings")
    assert_one_line_error(invoke("export", "nosettings.safetensors", "--out", "e"), "lacks ['settings']")


def test_5e_a_model_directory_with_pickled_weights(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dirs["llama"], pickled)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # written here, never loaded
    assert_one_line_error(invoke("models", "show", str(pickled)), "pytorch_model.bin", "never loads pickled")


def test_5f_an_input_longer_than_the_context(tiny: dict[str, object]) -> None:
    long = "a" * 1_000_000
    assert_one_line_error(invoke("chat", long, "--model", str(tiny["dir"])), "context of 1,024")
    model: LoadedModel = tiny["model"]  # type: ignore[assignment]
    from s2e_lens.core.contrastive import ContrastiveSet

    with pytest.raises(S2EError, match="context"):
        collect_statistics(model, ContrastiveSet.from_pairs([("a" * 1100, "b")], [("c", "d")]), progress=False)


# ----------------------------------------------------------- 6. faults and permissions


@pytest.mark.slow
def test_6a_sigterm_during_export_leaves_nothing_behind(tmp_path: Path, default_stats) -> None:
    from s2e_lens.models.loading import load_model as load

    plan = compute_plan(load(progress=False), default_stats, EditSettings(rho_attn=0.15, alpha=0.5))
    plan.save(tmp_path / "plan")
    before = sorted(p.name for p in tmp_path.iterdir())
    cmd = [
        sys.executable,
        "-c",
        "from s2e_lens.cli import main; main()",
        "export",
        "plan.safetensors",
        "--out",
        "exp",
        "--force",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".exp.") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert any(p.name.startswith(".exp.") for p in tmp_path.iterdir()), "the export never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_6b_outputs_get_the_usual_permissions(tmp_path: Path, tiny: dict[str, object], umask: int) -> None:
    old = os.umask(umask)
    try:
        tiny["plan"].save(tmp_path / "plan")  # type: ignore[attr-defined]
        export_model(tiny["model"], tmp_path / "exp")  # type: ignore[arg-type]
    finally:
        os.umask(old)
    assert (tmp_path / "plan.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "plan.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "exp").stat().st_mode & 0o777 == 0o777 & ~umask
    for f in (tmp_path / "exp").iterdir():
        assert f.stat().st_mode & 0o777 in (0o666 & ~umask, 0o644 & ~umask), f


# -------------------------------------------------------------------- 7. clear messages


def test_7a_a_bad_row_is_reported_at_its_line_after_blank_lines(tmp_path: Path) -> None:
    from s2e_lens.behaviours import custom_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text(
        '{"prompt": "a", "response": "b", "label": "positive"}\n\n\n'
        '{"prompt": "a", "response": "c", "label": "maybe"}\n'
    )
    with pytest.raises(DataFormatError, match=r"rows.jsonl:4: label 'maybe'"):
        custom_jsonl(path)


def test_7b_non_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    from s2e_lens.behaviours import custom_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b", "label": "positive"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"rows.jsonl:2: not UTF-8"):
        custom_jsonl(path)


def test_7c_a_pickle_file_is_named_as_such(workdir: Path) -> None:
    Path("plan.pt").write_bytes(b"\x80\x04not really")
    with pytest.raises(serialization.FileFormatError, match=r"plan.pt is not an s2e_lens file.*never loads pickles"):
        EditPlan.load("plan.pt")


def test_7d_the_message_names_the_files_written(workdir: Path, tiny: dict[str, object]) -> None:
    Path("plans").mkdir()
    result = invoke("edit", "statistics.safetensors", "--out", "plans", "--model", str(tiny["dir"]))
    assert_one_line_error(result, "plans is a directory")
    ok = invoke("edit", "statistics.safetensors", "--out", "plans/p1", "--model", str(tiny["dir"]))
    assert ok.exit_code == 0 and "plan written to plans/p1.safetensors" in ok.output


def test_7e_a_bad_json_header_names_the_file(workdir: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, "broken.safetensors", metadata={"s2e": "{not json"})
    with pytest.raises(
        serialization.FileFormatError, match=r"broken.safetensors: its s2e_lens header is not valid JSON"
    ):
        EditPlan.load("broken")


def test_7f_data_dir_errors_name_the_flag_they_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from s2e_lens.behaviours.datasets import data_dir

    monkeypatch.setenv("S2E_DATA", str(SHARED))
    with pytest.raises(DataDirError, match=r"^--data-dir"):
        data_dir(tmp_path / "missing")
    monkeypatch.setenv("S2E_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataDirError, match=r"^S2E_DATA"):
        data_dir()


def test_7g_a_mistyped_local_path_is_not_blamed_on_the_hub(tmp_path: Path) -> None:
    result = invoke("models", "show", str(tmp_path / "my-model"))
    assert_one_line_error(result, "no such directory")
    result = invoke("models", "show", "models/my-mdoel")  # relative, hub-id shaped
    assert_one_line_error(result, "no local directory models/my-mdoel")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--rho-attn", "nan"], "rho_attn must be a finite number"),
        (["--alpha", "1.5"], "alpha must be in [0, 1)"),
    ],
)
def test_7h_bad_settings_fail_before_the_model_loads(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str
) -> None:
    forbid_model_loading(monkeypatch)
    assert_one_line_error(invoke("edit", "statistics.safetensors", *args), needle)
    assert_one_line_error(invoke("sweep", "safety", "--rho-attn", "nan"), "rho_attn must be a finite number")


# ---------------------------------------------------------------------- 8. explicit state


def test_8a_applying_the_same_plan_twice_is_refused(tiny: dict[str, object], tmp_path: Path) -> None:
    model: LoadedModel = tiny["model"]  # type: ignore[assignment]
    plan: EditPlan = tiny["plan"]  # type: ignore[assignment]
    first = apply_plan(model, plan)
    try:
        after_one = {k: v.clone() for k, v in model.hf_state_dict().items()}
        with pytest.raises(EditConflictError, match="already applied"):
            apply_plan(model, EditPlan.load(plan.save(tmp_path / "same")))  # equal content, another object
        assert all(torch.equal(v, after_one[k]) for k, v in model.hf_state_dict().items())
        second = apply_plan(model, plan, allow_stack=True)
        revert(model, second)
    finally:
        revert(model, first)
    assert not model.applied_plans


def test_8b_statistics_record_the_model_state_and_are_refused_in_another(tiny: dict[str, object]) -> None:
    model: LoadedModel = tiny["model"]  # type: ignore[assignment]
    plan: EditPlan = tiny["plan"]  # type: ignore[assignment]
    applied = apply_plan(model, plan)
    try:
        edited_stats = collect_statistics(model, tiny_set(3), progress=False)
    finally:
        revert(model, applied)
    with steered(model, tiny["vectors"], 1.0):  # type: ignore[arg-type]
        steered_stats = collect_statistics(model, tiny_set(3), progress=False)
    assert edited_stats.provenance["model_state"]["edits"] == [plan.describe()]
    assert steered_stats.provenance["model_state"]["steering"] == ["steer gamma=1"]
    for stats in (edited_stats, steered_stats):
        with pytest.raises(PlanError, match="collected on a modified model"):
            compute_plan(model, stats)
        compute_plan(model, stats, allow_other_state=True)
    assert compute_plan(model, collect_statistics(model, tiny_set(3), progress=False)).n_edited is not None


@pytest.mark.parametrize("gamma", [math.nan, math.inf])
def test_8c_non_finite_gamma_is_refused(tiny: dict[str, object], gamma: float) -> None:
    with pytest.raises(InvalidInputError, match="gamma must be a finite number"):
        with steered(tiny["model"], tiny["vectors"], gamma):  # type: ignore[arg-type]
            pass
    assert tiny["model"].steering == []  # type: ignore[attr-defined]


# ----------------------------------------------- the write path, as a property over targets


def _write_run_directory(target: str, overwrite: bool) -> None:
    """What RunResult.save and main_job do: build in a scratch directory, rename at the end."""
    with files.atomic_directory(target, overwrite=overwrite, record=files.RUN_RECORD) as scratch:
        (scratch / files.RUN_RECORD).write_text("{}")


def _writers(tiny: dict[str, object]) -> dict[str, Callable[[str, bool], object]]:
    return {
        "plan": lambda t, ow: tiny["plan"].save(t, overwrite=ow),  # type: ignore[attr-defined]
        "statistics": lambda t, ow: tiny["stats"].save(t, overwrite=ow),  # type: ignore[attr-defined]
        "vectors": lambda t, ow: tiny["vectors"].save(t, overwrite=ow),  # type: ignore[attr-defined]
        "export": lambda t, ow: export_model(tiny["model"], t, overwrite=ow),  # type: ignore[arg-type]
        "run outputs": _write_run_directory,
    }


TARGETS = {  # name -> path, relative to the work directory
    ".": ".",
    "..": "..",
    "the input file": "plan.safetensors",
    "an existing file": "existing.safetensors",
    "an existing non-empty directory": "full",
    "an earlier s2e output directory": "ours",
    "an unwritable place": str(UNWRITABLE),
}


@pytest.mark.parametrize("writer", ["plan", "statistics", "vectors", "export", "run outputs"])
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("overwrite", [False, True])
def test_every_write_succeeds_as_documented_or_changes_nothing(
    workdir: Path, tiny: dict[str, object], writer: str, target: str, overwrite: bool
) -> None:
    Path("existing.safetensors").write_text("mine")
    Path("full").mkdir()
    (Path("full") / "keep.txt").write_text("mine")
    Path("ours").mkdir()
    for record in (files.EXPORT_RECORD, files.RUN_RECORD):  # what an earlier export or run left
        (Path("ours") / record).write_text("{}")
    home = workdir.parent
    before = tree_hash(home)
    is_dir_writer = writer in ("export", "run outputs")
    try:
        _writers(tiny)[writer](TARGETS[target], overwrite)
    except S2EError:
        assert tree_hash(home) == before, f"{writer} -> {target}: refused, but the disk changed"
        return
    # it wrote: only where the documentation says it may replace what is there
    documented = {
        "the input file": overwrite and not is_dir_writer,  # a library save replaces a file when told to
        "an existing file": overwrite and not is_dir_writer,
        "an existing non-empty directory": False,  # not made by s2e: never replaced, --overwrite or not
        "an earlier s2e output directory": overwrite and is_dir_writer,
    }
    assert documented.get(target, False), f"{writer} wrote to {target} (overwrite={overwrite})"
    assert (home / "sibling.txt").read_text() == "mine"
    assert [p.name for p in home.rglob(".*")] == []  # no scratch or renamed-aside directory left


# ------------------------------------------------------------- every command's boundary


COMMANDS_WITH_FILE_INPUT = {
    "edit": ["edit", "{missing}"],
    "export": ["export", "{missing}", "--out", "{out}"],
    "eval --plan": ["eval", "safety", "--plan", "{missing}", "--data-dir", str(SHARED)],
    "eval --vectors": ["eval", "safety", "--vectors", "{missing}", "--data-dir", str(SHARED)],
    "plot": ["plot", "{missing}", "--out", "{out}"],
    "report": ["report", "{missing}"],
    "compare": ["compare", "{missing}", "{missing}", "--out", "{out}"],
    "extract": ["extract", "custom", "--data", "{missing}", "--out", "{out}"],
}


@pytest.mark.parametrize("command", list(COMMANDS_WITH_FILE_INPUT))
@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_every_command_turns_a_bad_input_into_one_line(tmp_path: Path, command: str, fault: str) -> None:
    bad = tmp_path / ("missing.safetensors" if fault == "missing" else "corrupt.safetensors")
    if fault == "corrupt":
        bad.write_bytes(b"\x00\x01garbage" * 10)
    if command == "extract" or command == "report":
        bad = bad.with_suffix(".jsonl") if command == "extract" else bad
        if fault == "corrupt" and command == "extract":
            bad.write_bytes(b"\xff\xfe not json\n")
        if fault == "corrupt" and command == "report":
            bad = tmp_path / "corrupt-run"
            bad.mkdir()
            (bad / "summary.json").write_text("{")
            (bad / "results.csv").write_text("x\n")
    args = [a.format(missing=bad, out=tmp_path / "out") for a in COMMANDS_WITH_FILE_INPUT[command]]
    before = tree_hash(tmp_path)
    assert_one_line_error(invoke(*args))
    assert tree_hash(tmp_path) == before


OUTPUT_COMMANDS = {
    "extract": ["extract", "safety", "--out", "{out}"],
    "edit": ["edit", "{stats}", "--out", "{out}/plan"],
    "edit --export": ["edit", "{stats}", "--export", "{out}"],
    "export": ["export", "{plan}", "--out", "{out}"],
    "run": ["run", "safety", "--out", "{out}", "--data-dir", str(SHARED)],
    "sweep": ["sweep", "safety", "--out", "{out}", "--data-dir", str(SHARED)],
    "plot": ["plot", "{plan}", "--out", "{out}", "--format", "html"],
    "compare": ["compare", "{plan}", "{plan}", "--out", "{out}", "--format", "html"],
}


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
def test_every_command_refuses_an_unwritable_output_in_one_line(workdir: Path, command: str) -> None:
    args = [
        a.format(out=UNWRITABLE, stats="statistics.safetensors", plan="plan.safetensors")
        for a in OUTPUT_COMMANDS[command]
    ]
    before = tree_hash(workdir)
    assert_one_line_error(invoke(*args), "cannot")
    assert tree_hash(workdir) == before


# --------------------------------------------- 9. round 2: concurrent and interrupted writes


def test_9a_a_directory_that_appears_meanwhile_is_kept_not_replaced(tmp_path: Path) -> None:
    """Two writers race for one --out without --overwrite: the one that finishes second must
    neither replace the first one's output nor report success."""
    target = tmp_path / "exported"
    with pytest.raises(files.OutputError, match="appeared while this output was being written"):
        with files.atomic_directory(target, record=files.EXPORT_RECORD) as scratch:
            (scratch / files.EXPORT_RECORD).write_text("second")
            target.mkdir()  # the other writer renames its complete output in first
            (target / files.EXPORT_RECORD).write_text("first")
    assert (target / files.EXPORT_RECORD).read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no scratch left


def test_9b_two_concurrent_exports_to_one_out_leave_one_and_refuse_the_other(
    workdir: Path, tiny: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both pass the existence check before either renames (the race seen with two shells)."""
    import s2e_lens.models.export as export

    real = export.atomic_directory
    other_done = []

    @contextlib.contextmanager
    def racing(target: Path, **kwargs: object) -> Iterator[Path]:
        with real(target, **kwargs) as scratch:  # type: ignore[arg-type]
            yield scratch
            if not other_done:  # the other process finishes first, while this one still writes
                other_done.append(True)
                export_model(tiny["model"], target)  # type: ignore[arg-type]

    monkeypatch.setattr(export, "atomic_directory", racing)
    with pytest.raises(files.OutputError, match="appeared"):
        export_model(tiny["model"], "cexp")  # type: ignore[arg-type]
    assert (Path("cexp") / files.EXPORT_RECORD).is_file() and (Path("cexp") / "config.json").is_file()
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []


def test_9c_a_home_directory_is_never_replaced_even_with_overwrite(
    tmp_path: Path, tiny: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from outside the home directory (so the current-directory rule does not apply)."""
    home = tmp_path / "someone"
    (home / "thesis").mkdir(parents=True)
    (home / "thesis" / "chapter1.tex").write_text("mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tiny["plan"].save(elsewhere / "plan")  # type: ignore[attr-defined]
    monkeypatch.chdir(elsewhere)
    before = tree_hash(home)
    for out in ("~", str(home)):
        result = invoke("export", "plan.safetensors", "--out", out, "--overwrite", env={"HOME": str(home)})
        assert_one_line_error(result, "not made by s2e", files.EXPORT_RECORD)
    assert tree_hash(home) == before


@pytest.mark.parametrize(
    "args",
    [
        ["edit", "statistics.safetensors", "--out", "~nosuchuser-s2e/plan"],
        ["export", "plan.safetensors", "--out", "~nosuchuser-s2e/model"],
        ["extract", "custom", "--data", "rows.jsonl", "--out", "~nosuchuser-s2e"],
        ["extract", "custom", "--data", "~nosuchuser-s2e/rows.jsonl", "--out", "stats"],
    ],
)
def test_9d_a_home_path_that_cannot_be_expanded_is_one_line(workdir: Path, args: list[str]) -> None:
    Path("rows.jsonl").write_text('{"prompt": "a", "response": "b", "label": "pos"}\n')
    before = tree_hash(workdir.parent)
    assert_one_line_error(invoke(*args), "cannot expand '~nosuchuser-s2e'", "there is no user")
    assert tree_hash(workdir.parent) == before


def test_9e_tilde_without_home_is_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOME")
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    assert_one_line_error(invoke("export", "plan.safetensors", "--out", "~/model"), "cannot expand '~'")


def test_9f_a_signal_while_a_set_of_files_is_renamed_leaves_all_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM arriving between the renames of a set (statistics.json renamed, statistics.safetensors
    not yet) must wait until the set is complete; the command then ends as terminated."""
    files.terminate_gracefully()
    try:
        real_replace = os.replace
        calls = []

        def replace_then_signal(src: str, dst: str | Path) -> None:
            real_replace(src, dst)
            calls.append(dst)
            if len(calls) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # delivered now unless held

        monkeypatch.setattr(files.os, "replace", replace_then_signal)
        contents: dict[Path, str | bytes] = {tmp_path / f"part{i}": f"{i}" for i in range(4)}
        with pytest.raises(files.Terminated):
            files.write_all(contents)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["part0", "part1", "part2", "part3"]
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_9g_extract_writes_statistics_and_vectors_as_one_output(
    workdir: Path, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while the second object's files are written leaves none of the four."""
    Path("rows.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "response": f"r{i}", "label": "pos" if i % 2 else "neg"}) + "\n"
            for i in range(6)
        )
    )
    real_fsync = os.fsync
    synced = []

    def fsync_then_fail(fd: int) -> None:
        real_fsync(fd)
        synced.append(fd)
        if len(synced) == 3:  # statistics (2 files) synced, the vectors' first file too
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fsync_then_fail)
    result = invoke("extract", "custom", "--model", str(tiny_dirs["llama"]), "--data", "rows.jsonl", "--out", "out")
    assert_one_line_error(result, "no space left on device", "nothing was written")
    assert not Path("out").exists() or list(Path("out").iterdir()) == []
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    ok = invoke("extract", "custom", "--model", str(tiny_dirs["llama"]), "--data", "rows.jsonl", "--out", "out")
    assert ok.exit_code == 0, ok.output  # a rerun needs no --overwrite: nothing complete was there
    assert sorted(p.name for p in Path("out").iterdir()) == [
        "statistics.json",
        "statistics.safetensors",
        "steering_vectors.json",
        "steering_vectors.safetensors",
    ]


def test_9h_a_full_disk_during_export_is_one_line(
    workdir: Path, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """safetensors reports a full disk with its own error type, not an OSError."""
    from safetensors import SafetensorError

    def full(*args: object, **kwargs: object) -> None:
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, message: No space left on device })")

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full)
    before = tree_hash(workdir.parent)
    result = invoke("export", "plan.safetensors", "--model", str(tiny_dirs["llama"]), "--out", "out")
    assert_one_line_error(result, "no space left on device", "it needs about", " free in ")
    assert tree_hash(workdir.parent) == before


@pytest.mark.parametrize("failing", ["export", "plan"])
def test_9p_edit_writes_its_plan_and_its_export_together_or_not_at_all(
    workdir: Path, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """``s2e edit --out PLAN --export DIR`` makes two outputs; a failure in either leaves neither."""
    from safetensors import SafetensorError

    from s2e_lens.core.plan import EditPlan

    if failing == "export":

        def full(*args: object, **kwargs: object) -> None:
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, message: No space left on device })")

        monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full)
    else:

        def refuse(self: EditPlan, path: str | Path, *, overwrite: bool = False) -> Path:
            raise files.OutputError(f"cannot write {path}: injected failure")

        monkeypatch.setattr(EditPlan, "save", refuse)
    before = tree_hash(workdir.parent)
    args = ("edit", "statistics.safetensors", "--model", str(tiny_dirs["llama"]), "--out", "again", "--export", "exp")
    result = invoke(*args)
    assert_one_line_error(result, "no space left on device" if failing == "export" else "injected failure")
    assert tree_hash(workdir.parent) == before  # neither the plan nor the export, no scratch left
    monkeypatch.undo()
    ok = invoke(*args)
    assert ok.exit_code == 0, ok.output
    assert Path("again.safetensors").is_file() and (Path("exp") / files.EXPORT_RECORD).is_file()


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("n_eval=-3", "n_eval must be a whole number >= 1, got -3"),
        ("temperature=nan", "temperature must be a finite number >= 0"),
        ("max_kl=nan", "max_kl must be a finite number > 0"),
        ("keep_edits=0", "keep_edits must be a whole number >= 1, got 0"),
        ("top_p=0", "top_p must be a number > 0 and <= 1"),
        ("n_mc=0", "n_mc must be a whole number >= 1"),
    ],
)
def test_9i_every_run_setting_is_range_checked_before_the_model_loads(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, setting: str, needle: str
) -> None:
    forbid_model_loading(monkeypatch)
    for command in ("sweep", "run"):
        assert_one_line_error(invoke(command, "safety", "--set", setting, "--out", "r"), needle)
    assert not Path("r").exists()


@pytest.mark.parametrize("header", ["as written", "from before dtypes were recorded"])
def test_9j_a_plan_whose_lambdas_were_stored_as_bool_is_refused(workdir: Path, header: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open("plan.safetensors", framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    assert json.loads(meta["s2e"])["dtypes"]["head_lambda"] == "float32"
    if header != "as written":
        doc = json.loads(meta["s2e"])
        del doc["dtypes"]
        meta = {"s2e": json.dumps(doc)}
    tensors["head_lambda"] = tensors["head_lambda"] != 0  # signs and sizes lost
    save_file(tensors, "plan.safetensors", metadata=meta)
    before = tree_hash(workdir.parent)
    for command in (["export", "plan.safetensors", "--out", "exported"], ["edit", "plan.safetensors"]):
        assert_one_line_error(invoke(*command), "head_lambda", "bool")
    with pytest.raises(serialization.FileFormatError, match="changed after"):
        EditPlan.load("plan.safetensors")
    assert tree_hash(workdir.parent) == before


@pytest.mark.parametrize("where", ["extra", "prompt"])
def test_9k_a_row_nested_thousands_of_levels_deep_is_one_line(workdir: Path, where: str) -> None:
    deep = "[" * 5000 + "]" * 5000
    row = (
        '{"prompt": "a", "response": "b", "label": "pos", "extra": ' + deep + "}"
        if where == "extra"
        else '{"prompt": ' + deep + ', "response": "b", "label": "pos"}'
    )
    Path("rows.jsonl").write_text('{"prompt": "q", "response": "r", "label": "neg"}\n' + row + "\n")
    result = invoke("extract", "custom", "--data", "rows.jsonl", "--out", "stats")
    assert_one_line_error(result, "rows.jsonl:2", "5001 levels deep", "at most 64")
    assert not Path("stats").exists()


@pytest.mark.parametrize("out", ["/", "~"])
def test_9l_extract_does_not_write_straight_into_the_root_or_home(workdir: Path, out: str) -> None:
    Path("rows.jsonl").write_text('{"prompt": "q", "response": "r", "label": "neg"}\n')
    home = workdir.parent
    before = tree_hash(home)
    result = invoke("extract", "custom", "--data", "rows.jsonl", "--out", out, env={"HOME": str(home)})
    assert_one_line_error(result, "straight into", "give a folder")
    assert tree_hash(home) == before and not Path("/statistics.json").exists()


def test_9m_ctrl_c_ends_with_130_and_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import s2e_lens.models.loading

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(s2e_lens.models.loading, "load_model", interrupted)
    result = invoke("export", "plan.safetensors", "--out", "exported")
    assert result.exit_code == 130, result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        "error: interrupted; nothing partial was left behind"
    ]
    assert not Path("exported").exists()


FAULT_TRIALS = 20


def _s2e(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "from s2e_lens.cli import main; main()", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", ["extract", "export"])
def test_9n_sigterm_at_random_points_leaves_the_output_complete_or_absent(
    tmp_path: Path, tiny_dirs: dict[str, Path], tiny: dict[str, object], command: str
) -> None:
    """Twenty SIGTERMs at random moments of a small s2e extract / s2e export: every time the
    output is complete (every file there and loadable) or absent, and nothing hidden is left."""
    import random

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "response": f"r{i}", "label": "pos" if i % 2 else "neg"}) + "\n"
            for i in range(8)
        )
    )
    tiny["plan"].save(tmp_path / "plan")  # type: ignore[attr-defined]
    model = str(tiny_dirs["llama"])

    def args(out: Path) -> list[str]:
        if command == "extract":
            return ["extract", "custom", "--model", model, "--data", str(rows), "--out", str(out)]
        return ["export", str(tmp_path / "plan.safetensors"), "--model", model, "--out", str(out)]

    def complete(out: Path) -> bool:
        if command == "extract":
            ContrastiveStatistics.load(out / "statistics")
            SteeringVectors.load(out / "steering_vectors")
            return sorted(p.name for p in out.iterdir()) == [
                "statistics.json",
                "statistics.safetensors",
                "steering_vectors.json",
                "steering_vectors.safetensors",
            ]
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(out)
        return (out / files.EXPORT_RECORD).is_file()

    started = time.perf_counter()  # one run to the end: how long the whole command takes
    first = _s2e(*args(tmp_path / "whole"))
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()[-2000:]
    duration = time.perf_counter() - started
    assert complete(tmp_path / "whole")
    rng = random.Random(0)
    outcomes = []
    for trial in range(FAULT_TRIALS):
        out = tmp_path / f"t{trial}"
        proc = _s2e(*args(out))
        time.sleep(rng.uniform(0.2, duration))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
        code = proc.returncode
        assert code in (0, 143, -signal.SIGTERM), (code, err.decode()[-2000:])  # finished, or stopped by it
        present = out.exists() and any(out.iterdir())
        assert not present or complete(out), f"trial {trial}: a partial output ({sorted(os.listdir(out))})"
        outcomes.append("complete" if present else "absent")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
    print(f"{command}: {outcomes.count('complete')} complete, {outcomes.count('absent')} absent of {FAULT_TRIALS}")


def test_9o_no_nan_reaches_a_json_file(tmp_path: Path) -> None:
    from s2e_lens.io.serialization import finite_json

    text = finite_json({"temperature": math.nan, "gaps": [0.1, -math.inf], "n": 3})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "temperature": None,
        "gaps": [0.1, None],
        "n": 3,
    }
