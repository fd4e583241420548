"""The s2e command line: output, JSON, and exit codes on bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from s2e_lens.cli import app

runner = CliRunner()


def test_models_list_json() -> None:
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-1.5b-instruct"]
    assert rows[0]["default"] and rows[0]["installed"]
    assert not any(r["default"] for r in rows[1:])
    assert rows[0]["params"] == 134_515_008


def test_models_list_table() -> None:
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "smollm2-135m-instruct *" in result.output and "134.5M" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["models", "pull", "nope"], "unknown packaged model 'nope'"),
        (["models", "show", "/no/such/dir"], "no such directory: /no/such/dir"),
        (["chat", "hi", "--model", "nope"], "unknown model 'nope'"),
    ],
)
def test_bad_input_exits_2_with_a_message(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.slow
def test_chat_on_the_default_model() -> None:
    result = runner.invoke(app, ["chat", "What is the capital of France?", "--json"])
    assert result.exit_code == 0, result.output
    assert "Paris" in json.loads(result.stdout)["answer"]
