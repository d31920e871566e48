"""The ``backupkit`` command: parse, make one library call, print.

Each error class carries its exit code (``backupkit.errors``: ``exc.exit_code``); the few
codes of no error class are in ``codes``; README lists them all.  ``parser`` builds the
argument parser (and docs/cli.md from it), ``commands`` holds one function per command,
``run.main`` ties them together, and ``run.command`` is the executable.  Library messages
name parameters as Python callers know them (``lock_wait_timeout``); ``main`` turns those
names into the command's flags (``--lock-wait-timeout``) when it reports an error or logs
a line.
"""

from .codes import EXIT_DIFFERENT, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED, EXIT_UNEXPECTED, exit_code
from .parser import build_parser, help_markdown
from .run import command, main

__all__ = [
    "EXIT_DIFFERENT",
    "EXIT_INTERRUPTED",
    "EXIT_PIPE_CLOSED",
    "EXIT_UNEXPECTED",
    "build_parser",
    "command",
    "exit_code",
    "help_markdown",
    "main",
]
