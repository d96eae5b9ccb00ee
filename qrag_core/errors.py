"""The exceptions qrag raises, so callers can catch one family and still get a precise message; and its warnings.

Every error says what was wrong and, where it can, what to do about it. A warning names the caller's line,
not one inside qrag (:func:`warn_caller`).
"""

from __future__ import annotations

import sys
import warnings

LIBRARY_MODULES = ("qrag_core", "qrag_integrations", "torch")
"""Modules whose frames a warning skips: qrag itself and the torch wrappers around its inference code."""


class QRAGError(Exception):
    """Base class of every error raised by qrag."""


class InvalidInputError(QRAGError, ValueError):
    """A question, document, chunk or option that cannot be used as given."""


class ModelNotFoundError(QRAGError, FileNotFoundError):
    """A model name or path that resolves to nothing loadable."""


class CheckpointError(QRAGError):
    """A model or index directory that is corrupt, incomplete or does not match its config."""


class DataFormatError(InvalidInputError):
    """A malformed line of a data or text file; the message names the file, line and problem."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(f"{path}:{line}: {problem}")


class UnsafeOutputError(QRAGError, FileExistsError):
    """An output path a save refuses to replace: a user's directory, the working or home directory, or
    qrag's own earlier output when overwriting was not asked for."""


class StorageError(QRAGError, OSError):
    """A write that failed because the disk is full; the previous copy is kept."""


class TrainingError(QRAGError):
    """Training that cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class DivergedError(TrainingError):
    """An optimiser step with a non-finite loss (refused before it) or one that made the weights non-finite."""


def warn_caller(message: str) -> None:
    """A UserWarning attributed to the first caller outside :data:`LIBRARY_MODULES` (the user's own line)."""
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").split(".")[0] in LIBRARY_MODULES:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, UserWarning, stacklevel=level)
