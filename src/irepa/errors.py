"""The library's own errors: one class per kind of problem a user can fix, each with its exit code.

Every error a user can act on is raised as one of these, with a message that names what is wrong
and how to fix it. The command line prints ``irepa <command>: <message>`` and exits with
:attr:`IrepaError.exit_code` of the class; nothing else reaches the user as a traceback unless
``--debug`` (or ``IREPA_DEBUG=1``) is given.

The classes also derive from the built-in exception a caller would expect (``ValueError`` for bad
values, ``FileNotFoundError`` for missing weights...), so ``except ValueError`` keeps working.

Exit codes of the ``irepa`` command (documented in ``docs/cli.md``):

====  ==========================================================================
0     success
1     anything else: a missing optional package, an unexpected internal error
2     configuration or command-line argument (:class:`ConfigError`, usage errors)
3     input data (:class:`DataError`)
4     missing weights / offline (:class:`WeightsError`)
5     checkpoint missing, damaged or of another run; an output folder another process
      is writing (:class:`CheckpointError`, :class:`FolderInUseError`)
6     training diverged (:class:`TrainingDiverged`)
7     file system: no such file, permission denied, disk full (``OSError``)
130   interrupted (Ctrl-C); everything written so far is complete
====  ==========================================================================
"""

from __future__ import annotations

import os

EXIT_OTHER = 1
EXIT_FILESYSTEM = 7
EXIT_INTERRUPTED = 130


class IrepaError(Exception):
    """Base class. ``exit_code`` is what ``irepa`` returns for this kind of error.

    ``fix``, when given, is how to repair the problem; the message then reads ``<what> — <fix>``.
    """

    exit_code = 1
    kind = "error"

    def __init__(self, message: str = "", *args: object, fix: str | None = None):
        message = _unwrap_worker_message(message)
        super().__init__(message, *args)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} — {self.fix}" if self.fix else str(self.message)


def _unwrap_worker_message(message: str) -> str:
    """The original message of an error raised in a DataLoader worker process.

    PyTorch re-raises such an error in the main process as ``type(err)(text)`` where ``text`` is
    ``"Caught <type> in DataLoader worker process N. Original Traceback ..."`` ending in
    ``"<module>.<type>: <message>"``; the user should see only that message.
    """
    if not isinstance(message, str) or not message.startswith("Caught ") or "Original Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    name, sep, text = last.partition(": ")
    return text if sep and " " not in name else last


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


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was asked for."""


class ForeignCheckpointError(CheckpointError, ValueError):
    """A checkpoint of another run: settings that shape its weights differ from the ones given now."""


class RunExistsError(CheckpointError, FileExistsError):
    """The output folder already holds a run that this command would overwrite."""


class FolderInUseError(RunExistsError):
    """Another live process holds the output folder (a run or a sampling job writing into it)."""


class DamagedFileError(CheckpointError):
    """A written file (checkpoint, cache, shard) is truncated or fails its checksum; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str = "", fix: str | None = None, what: str = "file"):
        super().__init__(f"{what} {path} is damaged ({reason})" if reason else str(path), fix=fix)
        self.path = str(path)
        self.reason = reason


class TrainingDiverged(IrepaError, RuntimeError):
    """The loss or the gradient norm stopped being finite; the last good checkpoint is untouched."""

    exit_code = 6
    kind = "divergence"


__all__ = [
    "EXIT_FILESYSTEM",
    "EXIT_INTERRUPTED",
    "EXIT_OTHER",
    "IrepaError",
    "ConfigError",
    "DataError",
    "WeightsError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ForeignCheckpointError",
    "RunExistsError",
    "FolderInUseError",
    "DamagedFileError",
    "TrainingDiverged",
]
