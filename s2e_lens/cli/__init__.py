"""The ``s2e`` command line: one module per command group, one error boundary
(:mod:`s2e_lens.cli.app`)."""

from __future__ import annotations

import signal
import sys

from s2e_lens.cli import blocks, checks, models, runs  # noqa: F401  (each registers its commands)
from s2e_lens.cli.app import app
from s2e_lens.io.files import Terminated, terminate_gracefully

__all__ = ["app", "main"]


def main() -> None:  # console-script entry point
    terminate_gracefully()
    try:
        app()
    except Terminated:  # a SIGTERM outside a command's own boundary (while arguments are parsed)
        print("error: terminated; nothing partial was left behind", file=sys.stderr)
        raise SystemExit(143) from None
    finally:  # the command is over, its output complete or absent: a late SIGTERM just ends the process
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
