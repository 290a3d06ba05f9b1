"""The library's own errors: one class per kind of problem a user can fix, each with its exit code.

Every error a user can act on is raised as one of these, with a message that names what is wrong
and how to fix it. The command line prints ``irepa <command>: <message>`` and exits with
:attr:`IrepaError.exit_code` of the class; nothing else reaches the user as a traceback unless
``--debug`` (or ``IREPA_DEBUG=1``) is given.

The classes also derive from the built-in exception a caller would expect (``ValueError`` for bad
values, ``FileNotFoundError`` for missing weights...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class IrepaError(Exception):
    """Base class. ``exit_code`` is what ``irepa`` returns for this kind of error."""

    exit_code = 1
    kind = "error"


class ConfigError(IrepaError, ValueError):
    """A configuration value or command-line argument is invalid or inconsistent."""

    exit_code = 2
    kind = "configuration"


class DataError(IrepaError, ValueError):
    """Input data is missing, unreadable or does not match what the run expects."""

    exit_code = 3
    kind = "input data"


class WeightsError(IrepaError, FileNotFoundError):
    """Pretrained weights are not available locally (and cannot or may not be downloaded)."""

    exit_code = 4
    kind = "missing weights"


class CheckpointError(IrepaError, RuntimeError):
    """A checkpoint (or other written artifact) is missing, damaged or does not belong to this run."""

    exit_code = 5
    kind = "checkpoint"


class TrainingDiverged(IrepaError, RuntimeError):
    """The loss or the gradient norm stopped being finite; the last good checkpoint is untouched."""

    exit_code = 6
    kind = "divergence"


__all__ = ["IrepaError", "ConfigError", "DataError", "WeightsError", "CheckpointError", "TrainingDiverged"]
