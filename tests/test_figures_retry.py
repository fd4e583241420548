"""Static export on a busy machine: kaleido's page can fail to load in time (a JavaScript
error); static_image tries again with a growing wait, and still fails clearly when every
attempt fails or the browser is missing."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from s2e_lens.reporting.figures import StaticExportError, static_image


class JavascriptError(Exception):
    """Named as kaleido's error is: static_image recognises it by name."""


def _flaky(failures: int, error: type[Exception] = JavascriptError) -> tuple[go.Figure, list[int]]:
    calls: list[int] = []
    fig = go.Figure()

    def to_image(**_: object) -> bytes:
        calls.append(1)
        if len(calls) <= failures:
            raise error("ReferenceError: kaleido_scopes is not defined")
        return b"PNG"

    object.__setattr__(fig, "to_image", to_image)
    return fig, calls


def test_a_slow_page_is_tried_again() -> None:
    fig, calls = _flaky(3)
    assert static_image(fig, attempts=4, wait_s=0.0) == b"PNG" and len(calls) == 4


def test_every_attempt_failing_is_a_clear_error() -> None:
    fig, calls = _flaky(10)
    with pytest.raises(StaticExportError, match="static png export failed .*save as .html instead"):
        static_image(fig, attempts=3, wait_s=0.0)
    assert len(calls) == 3


def test_other_errors_are_not_retried() -> None:
    fig, calls = _flaky(10, RuntimeError)
    with pytest.raises(StaticExportError, match="RuntimeError"):
        static_image(fig, attempts=4, wait_s=0.0)
    assert len(calls) == 1
