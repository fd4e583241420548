"""The installed version of s2e_lens (written into every saved file and report)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("s2e-lens")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
