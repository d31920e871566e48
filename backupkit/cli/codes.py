"""The ``backupkit`` command's exit codes that belong to no error class.

The others are on the error classes (``BackupkitError.exit_code``); README lists all of them.
"""

from __future__ import annotations

from ..errors import BackupkitError

#: Exit codes that belong to no error class (those are on the classes: ``BackupkitError.exit_code``).
#: An exception backupkit did not raise on purpose: a bug.
EXIT_UNEXPECTED = 1
#: ``diff --exit-code``: the snapshots differ (like ``git diff --exit-code``); 0 when the same.
EXIT_DIFFERENT = 12
EXIT_INTERRUPTED = 130
#: Standard output was closed before the command had printed everything (``| head``), as a
#: command ended by SIGPIPE reports it (128 + 13).
EXIT_PIPE_CLOSED = 141


def exit_code(exc: BaseException) -> int:
    """The documented exit code for an exception: its class's ``exit_code``, 1 for anything else."""
    return exc.exit_code if isinstance(exc, BackupkitError) else EXIT_UNEXPECTED
