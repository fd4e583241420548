"""Error types raised by s2e_lens.

Every error the toolkit raises on bad input derives from :class:`S2EError`, and its message
names the problem and the fix. The CLI turns these into a one-line message and exit code 2.
"""

from __future__ import annotations


class S2EError(Exception):
    """Base class of every error s2e_lens raises on bad input or a bad environment."""


class UnknownModelError(S2EError, KeyError):
    """A model name that is neither packaged, a local directory, nor a hub id."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class WeightsNotInstalledError(S2EError):
    """A packaged model whose weight package is not installed."""


class WeightsCorruptError(S2EError):
    """A weight file whose checksum or size is wrong."""


class UnsupportedArchitectureError(S2EError):
    """A transformers architecture the toolkit cannot edit."""


class HubUnreachableError(S2EError):
    """A hub model name that could not be fetched (offline or unknown)."""


class InvalidInputError(S2EError, ValueError):
    """An argument out of range or of the wrong kind (a setting, a name, an empty list)."""


class DataFormatError(S2EError, ValueError):
    """A data file row with a missing or ill-typed field (the message names file and line)."""
