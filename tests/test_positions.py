"""Statistics over the last prompt positions (issue 15): where a model decides before its
first response token. Checked against one forward pass per sample by hand, the identity that
pairs sharing a prompt give no prompt-end contrast, and the CLI's probe choices."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_set
from typer.testing import CliRunner

from s2e_lens.cli import app
from s2e_lens.core.contrastive import ContrastiveSet
from s2e_lens.engine.extraction import collect_statistics
from s2e_lens.models.loading import load_model
from s2e_lens.models.tokens import encode_pairs

SHARED = Path(os.environ.get("S2E_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
runner = CliRunner()


def _by_hand(model, pairs, positions: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean attn_out and z over each sample's window, then over samples: one unpadded pass each."""
    names = [f"blocks.{layer}.attn.hook_out" for layer in range(model.card.n_layers)]
    names += [f"blocks.{layer}.attn.hook_z" for layer in range(model.card.n_layers)]
    attn, z = [], []
    for sample in encode_pairs(model.tokenizer, pairs):
        lo, hi = sample.window(positions, n)
        with torch.no_grad():
            _, cache = model.bridge.run_with_cache(torch.tensor([sample.ids]), names_filter=names)
        L = model.card.n_layers
        attn.append(torch.stack([cache[names[i]][0, lo:hi].float().mean(0) for i in range(L)]))
        z.append(torch.stack([cache[names[L + i]][0, lo:hi].float().mean(0) for i in range(L)]))
    return torch.stack(attn).mean(0), torch.stack(z).mean(0)


@pytest.mark.parametrize("positions", ["prompt_end", "both"])
def test_prompt_end_statistics_against_one_pass_per_sample(tiny_dirs: dict[str, Path], positions: str) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    data = tiny_set(5)
    stats = collect_statistics(model, data, positions=positions, prompt_positions=3, batch_size=2, progress=False)
    attn, z = _by_hand(model, data.positive, positions, 3)
    torch.testing.assert_close(stats.positive.attn_out, attn, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats.positive.z, z, rtol=1e-4, atol=1e-5)
    windows = [s.window(positions, 3) for s in encode_pairs(model.tokenizer, data.positive)]
    assert stats.positive.n_tokens == sum(hi - lo for lo, hi in windows)
    assert "last 3" in stats.positions and stats.provenance["positions"]["rule"] == positions


def test_pairs_that_share_prompts_have_no_prompt_end_contrast(tiny_dirs: dict[str, Path]) -> None:
    """A causal model's prompt positions see only the prompt: the same prompts on both sides
    give the same prompt-end means, whatever the responses."""
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    data = tiny_set(4)  # the same prompts, different responses
    stats = collect_statistics(model, data, positions="prompt_end", progress=False)
    torch.testing.assert_close(stats.positive.attn_out, stats.negative.attn_out, rtol=1e-5, atol=1e-6)
    other = ContrastiveSet.from_pairs([("abc abc", "x")], [("hgf edc ba", "x")], {"source": "test"})
    differ = collect_statistics(model, other, positions="prompt_end", progress=False)
    assert (differ.positive.attn_out - differ.negative.attn_out).norm() > 1e-3


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared evaluation data not present")
def test_extract_probe_choices(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = str(tiny_dirs["llama"])
    base = ["extract", "safety", "--model", model, "--data-dir", str(SHARED), "--json"]
    result = runner.invoke(
        app, [*base, "--out", str(tmp_path / "p"), "--probe", "prompts", "--positions", "prompt_end"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["data"]["mode"] == "prompt_contrast" and doc["data"]["positions"]["rule"] == "prompt_end"
    assert max(doc["v_attn_norm"]) > 0  # harmful and harmless prompts differ at their ends
    # the paper's own probe on a model that never refuses: said so, with the count and the fix
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "o"), "--probe", "own"])
    assert result.exit_code == 2 and "refused none of the" in result.output and "teacher-forced" in result.output
    assert not (tmp_path / "o").exists()
    for extra, message in (
        (["--probe", "teacher-forced", "--positions", "prompt_end"], "put the same prompts on both sides"),
        (["--probe", "prompts"], "use it with --positions prompt_end"),
        (["--positions", "middle"], "positions must be one of response, prompt_end, both"),
    ):
        result = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(
        app, ["extract", "truthfulness", "--model", model, "--probe", "own", "--out", str(tmp_path / "t")]
    )
    assert result.exit_code == 2 and "choose safety probe data" in result.output
