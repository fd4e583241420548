"""The notebooks run top to bottom at small settings (S2E_SMALL=1), so they cannot rot.
They are committed without outputs; this executes them in memory and checks for errors."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_the_four_notebooks_exist_and_are_committed_without_outputs() -> None:
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quickstart",
        "02_truthfulness",
        "03_concise_reasoning",
        "04_compare_models_and_behaviours",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S2E_SMALL", "1")
    monkeypatch.setenv("S2E_DATA", str(SHARED))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # every figure cell produced a plotly figure
    figure_cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("figures.")]
    for cell in figure_cells:
        assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in cell.outputs), cell.source
