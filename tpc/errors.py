"""Errors that reach the user as one line, and the exit codes they map to.

A ``TpcError`` is a user-facing failure (bad input, bad artifact, a failed
verification). The CLI prints ``error: <message>`` and exits with ``exit_code``.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class TpcError(Exception):
    """Base class of every user-facing error."""

    exit_code = 1


class UsageError(TpcError):
    """The user asked for something invalid (ratio out of range, unknown model...)."""

    exit_code = 2


class ModelLoadError(TpcError):
    """A checkpoint could not be found, loaded, or is not of a supported family."""

    exit_code = 3


class ArtifactError(TpcError):
    """An artifact directory is missing, incomplete, or was modified after compile."""

    exit_code = 4


class ParityError(TpcError):
    """The compiled graphs disagree with the PyTorch reference of the method."""

    exit_code = 5


class ExportError(TpcError):
    """Tracing, a graph pass or the ONNX export failed."""

    exit_code = 6
