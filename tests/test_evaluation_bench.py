"""``s2e bench evaluate`` on a tiny model: the figures it prints are consistent with each other
and with what the engine gives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s2e_lens.cli import app
from s2e_lens.engine.shared_batches import MIXED_BATCH_SIZE
from s2e_lens.experiments.evaluation_bench import PARTS, EvaluationBench

SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
SMALL = {
    "n_eval": "3",
    "n_mc": "2",
    "max_new_tokens": "4",
    "check_answers": "false",  # random weights babble
    "max_degenerate": "1",
    "max_kl": "1e9",
    "keep_edits": "2",
    "rho_attn": "0.2,0.3",
    "alpha": "0.5",
    "data_dir": str(SHARED),
}


def test_the_bench_measures_both_modes_and_their_parts(tiny_dirs: dict[str, Path]) -> None:
    runner = CliRunner()
    args = ["bench", "evaluate", "safety", "--model", str(tiny_dirs["llama"])]
    args += [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]
    bad = runner.invoke(app, [*args, "--batch-sizes", "1,x"])
    assert bad.exit_code != 0 and "--batch-sizes" in bad.output
    done = runner.invoke(app, [*args, "--batch-sizes", "1,3", "--json"])
    assert done.exit_code == 0, done.output
    result = EvaluationBench(**json.loads(done.output))
    # the unedited model, the quick preset's three steering strengths and the two kept edits
    assert result.interventions[0] == "unedited" and len(result.interventions) == 6
    assert sum(label.startswith("steer") for label in result.interventions) == 3
    alone, together = result.modes["one at a time"], result.modes["shared batches"]
    assert result.same_table  # shared batches change the speed, not the table
    assert alone["tokens"] == together["tokens"] > 0
    for m in (alone, together):
        # every kind of engine call was timed, and the parts add up to the whole
        assert all(m[k] > 0 for k in PARTS), m
        assert m["other"] >= 0 and sum(m[k] for k in PARTS) + m["other"] == pytest.approx(m["seconds"])
    # each intervention generates for the same prompts
    assert result.plain["sequences"] % 6 == 0 and result.plain["batch"] == MIXED_BATCH_SIZE
    assert [c["batch"] for c in result.curve] == [1, 3] and all(c["ours"] > 0 and c["plain"] > 0 for c in result.curve)
    # PEFT's mixed-adapter batches and the per-row hooks decode the same tokens on a tiny model
    assert result.adapters["edits"] == 2 and result.adapters["same_tokens"] == 1.0
    text = "\n".join(result.lines())
    assert "shared / one at a time = " in text and "the same table: yes" in text and "hooks / PEFT" in text
