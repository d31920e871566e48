"""``main``: parse, run one command, and turn what went wrong into one line and an exit code;
``command``: the executable around it."""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from ..errors import BackupkitError, ConfigError, RetentionError, SnapshotError, StorageError
from ..terminal import paint
from .codes import EXIT_INTERRUPTED, EXIT_PIPE_CLOSED
from .parser import build_parser, commands_of

#: PostgreSQL keeps a time limit in milliseconds in a 32-bit integer: at most about 24.8 days.
MAX_SECONDS = 2_147_483

#: Library parameters whose option has another name (a repeatable option is singular).
_PARAMETER_OPTIONS = {"schemas": "schema", "tables": "table", "exclude": "exclude_table"}


def _flags(command: argparse.ArgumentParser) -> dict[str, str]:
    """The command's options by the library parameter each passes on, which mostly has the
    option's name: ``{"lock_wait_timeout": "--lock-wait-timeout", "jobs": "--jobs", ...}``."""
    flags: dict[str, str] = {}
    for action in command._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if long and action.dest != "help":
            named = "--" + action.dest.replace("_", "-")
            flags[action.dest] = named if named in long else long[0]
    return flags


def _in_flags(text: str, flags: dict[str, str], *, leading: bool) -> str:
    """A library message or hint in the command's words: a parameter name between backquotes,
    as in "pass a larger `timeout`", becomes its flag (`--timeout`); with ``leading``, so does
    the name that opens the text ("jobs 0 is out of range" -> "--jobs 0 is out of range")."""

    def quoted(m: re.Match[str]) -> str:
        flag = flags.get(m[1]) or flags.get(_PARAMETER_OPTIONS.get(m[1], ""))
        return f"`{flag}`" if flag else m[0]

    text = re.sub(r"`([a-z][a-z0-9_]*)`", quoted, text)
    first = re.match(r"[a-z][a-z0-9_]*(?= )", text)
    if leading and first and first[0] in flags:
        text = flags[first[0]] + text[first.end() :]
    return text


def in_flags_of(command: argparse.ArgumentParser) -> Callable[[str], str]:
    """A function that shows a library text in ``command``'s words (``_in_flags``)."""
    flags = _flags(command)
    return lambda text: _in_flags(text, flags, leading=False)


class _FlagsFormatter(logging.Formatter):
    """``warning: message`` (``info:`` with -v), like the command's ``error:`` lines, with the
    library's parameter names shown as this command's flags."""

    def __init__(self, flags: dict[str, str]):
        super().__init__("%(message)s")
        self.flags = flags

    def format(self, record: logging.LogRecord) -> str:
        level = paint(record.levelname.lower(), stream=sys.stderr)
        return f"{level}: {_in_flags(super().format(record), self.flags, leading=False)}"


def _os_error(exc: OSError) -> BackupkitError:
    """A last net for file-system errors no command turned into its own message: one line,
    exit 8 when something could not be written (disk full, read-only), else 7 (cannot read)."""
    import errno

    # os.fdopen and friends name the file by its descriptor ("cannot access 3"): no name is better.
    where = f"{exc.filename}: " if isinstance(exc.filename, str) and exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
        return StorageError(f"cannot write {where}{exc.strerror or exc}")
    return SnapshotError(
        f"cannot access {where}{exc.strerror or exc}",
        hint="check that this user may read (and for backup/prune/pin, write) the backup directory",
    )


def _check_time_limits(args: argparse.Namespace) -> None:
    """A time limit beyond what PostgreSQL (or a timer) can hold fails here, in one line, rather
    than on the server after the work began, or silently not at all."""
    for dest in ("timeout", "lock_wait_timeout"):
        value = getattr(args, dest, None)
        if isinstance(value, float) and math.isfinite(value) and value > MAX_SECONDS:
            raise ConfigError(
                f"{dest} {value:g} is out of range: use at most {MAX_SECONDS} seconds (about 24 days)",
                hint="0 means no limit",
            )


def _keep_undecodable_names() -> None:
    """A path that is not UTF-8 (``backup --to $'r\\xff'``) is printed with its own bytes, as
    the shell gave it: under a strict UTF-8 stdout, printing a published snapshot's path
    would otherwise fail after the backup succeeded."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None and getattr(sys.stdout, "errors", None) == "strict":
        reconfigure(errors="surrogateescape")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``backupkit`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = _flags(commands_of(parser)[args.command])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FlagsFormatter(flags))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    notifier = None
    try:
        from . import places  # after parsing: --version and --help need none of it

        places.check(args)
        _check_time_limits(args)
        if getattr(args, "jobs", None) is not None:
            from ..snapshot.verify import check_jobs

            check_jobs(args.jobs)
        if "notify" in args:  # backup, drill and prune tell a monitor how they went
            from ..monitor.notify import Notifier

            notifier = Notifier.from_option(args.notify, args.command)
            if notifier is not None:
                notifier.start()
        started = time.monotonic()
        from ..runtime.signals import sigterm_as_interrupt

        try:
            # SIGTERM (systemd's stop, `timeout`, a cancelled CI job) ends every command as
            # Ctrl-C does: locks released, unfinished folders removed, the monitor told.
            # Killed outright, a prune or copy left its lock, which another host waits out.
            with sigterm_as_interrupt():
                code = args.func(args)
        except BrokenPipeError:
            # `backupkit list | head`: the reader has what it wanted.  Nothing more can be
            # written there, and Python's own flush at exit must not fail on it again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            if notifier is not None:
                notifier.failure("standard output was closed before the command had printed everything")
            return EXIT_PIPE_CLOSED
        except OSError as exc:
            raise _os_error(exc) from None
        if notifier is not None:
            notifier.success(getattr(args, "snapshot_id", None), time.monotonic() - started)
        return code
    except KeyboardInterrupt:
        if notifier is not None:
            notifier.failure("interrupted")
        print(
            "interrupted (an unfinished backup never looks like a snapshot; a one-transaction restore was rolled back)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except BackupkitError as exc:
        from ..pg.dsn import redact

        # Only a bad-argument error opens with the name of what was given wrong.
        bad_argument = isinstance(exc, ConfigError | RetentionError)
        line = redact(_in_flags(str(exc), flags, leading=bad_argument))
        if notifier is not None:
            notifier.failure(line)
        print(f"{paint('error', stream=sys.stderr)}: {line}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {_in_flags(exc.hint, flags, leading=False)}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug: the monitor hears of it too, then the traceback shows
        if notifier is not None:
            notifier.failure(f"unexpected error ({type(exc).__name__}); see the job's log")
        raise


def command() -> NoReturn:
    """The ``backupkit`` executable: ``main`` with the process's arguments, then exit with its code."""
    _keep_undecodable_names()
    code = main()
    # The command is done and has said so: a Ctrl-C or SIGTERM from here on must not turn a
    # published snapshot's exit 0 into 130, after its path was printed.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    # The process ends here: Python's shutdown would otherwise run full garbage collections
    # over every object of the run (~30 ms, a tenth of a small backup) to free memory the
    # exit frees anyway.  Open files were closed by the commands; stdout and stderr are
    # flushed at exit as before.
    gc.freeze()
    sys.exit(code)
