"""Every error backupkit raises on purpose, and the exit code the ``backupkit`` command gives it.

One base class, so callers can catch everything backupkit means to say with a
single ``except BackupkitError``.  Each class carries its exit code
(``exit_code``); a subclass inherits its parent's unless it sets its own, so the
CLI needs no list to look it up in (``backupkit.cli.exit_code``).  README lists
the codes.

    BackupkitError                 1  (only its subclasses are raised)
    ├── ConfigError                2  bad arguments, missing DSN, unknown parameter
    ├── ConnectionFailed           3  cannot reach or log in to PostgreSQL
    ├── ToolError                  4  pg_dump / pg_restore missing, too old, or failed
    ├── SourceError                5  the database refuses what a backup needs
    │   └── RowLevelSecurityError  5  COPY would silently skip rows hidden by RLS
    ├── SnapshotError              7  a snapshot folder that cannot be used
    │   ├── SnapshotNotFound       7
    │   ├── SnapshotDamaged        6  verification failed; ``problems`` lists why
    │   └── StorageError           8  the snapshot cannot be written (disk full, permissions)
    ├── RestoreError               9  the restore stopped; ``left_behind`` says what remains
    │   └── TargetNotEmpty         9  the target already has tables from the snapshot
    ├── LockError                 10  another backup or prune holds the directory's lock
    ├── RetentionError            11  a policy that makes no sense, or would remove the last snapshot
    ├── BucketError               13  Storage's S3 endpoint cannot be read or written (keys, bucket, network)
    └── DrillFailed               14  a drill's restored database differs from its snapshot

The command's other codes are no error classes: 0 success, 1 an unexpected
exception (a bug), 12 ``diff --exit-code`` found differences, 15 and 16 ``status``'s
stale and last-run-failed states (``monitor.status.STATE_CODES``), 130 interrupted.

Messages and hints name a parameter as a Python caller knows it, never by a
command-line flag: as the first word of a ConfigError's or RetentionError's message
("jobs must be at least 1"), or anywhere between backquotes ("raise
`lock_wait_timeout`").  The CLI puts its flag in the name's place when it reports
the error ("--jobs must be at least 1", "raise `--lock-wait-timeout`").
Messages never contain a password: build them from ``dsn.redact`` output only.
"""

from __future__ import annotations

from typing import ClassVar


class BackupkitError(Exception):
    """Base class of every error backupkit raises deliberately."""

    #: The ``backupkit`` command's exit status for this error; a subclass inherits its parent's
    #: unless it sets its own.  1 (an unexpected error) here: only subclasses are raised.
    exit_code: ClassVar[int] = 1

    #: One line telling the user what to do next; printed after the message.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __reduce__(self) -> tuple[type[BackupkitError], tuple[object, ...], dict[str, object]]:
        # Keep hint and other attributes when a worker process sends the error back.
        return (self.__class__, self.args[:1], self.__dict__)


class ConfigError(BackupkitError):
    """Arguments or environment do not describe a runnable job."""

    exit_code = 2


class ConnectionFailed(BackupkitError):
    """PostgreSQL could not be reached or refused the login."""

    exit_code = 3


class ToolError(BackupkitError):
    """An external PostgreSQL tool (pg_dump, pg_restore) is missing, too old or failed."""

    exit_code = 4


class SourceError(BackupkitError):
    """The source database cannot give a complete, consistent copy."""

    exit_code = 5


class RowLevelSecurityError(SourceError):
    """Row-level security would hide rows from COPY, so the backup would be partial."""


class SnapshotError(BackupkitError):
    """A snapshot folder cannot be used."""

    exit_code = 7


class SnapshotNotFound(SnapshotError):
    """No snapshot at the given path or id."""


class SnapshotDamaged(SnapshotError):
    """A snapshot failed verification."""

    exit_code = 6

    def __init__(self, message: str, problems: list[str] | None = None, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.problems = list(problems or [])


class StorageError(SnapshotError):
    """The backup directory cannot be written: disk full, permissions, read-only."""

    exit_code = 8


class RestoreError(BackupkitError):
    """A restore did not complete."""

    exit_code = 9

    def __init__(self, message: str, left_behind: str | None = None, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.left_behind = left_behind


class TargetNotEmpty(RestoreError):
    """The target database already holds tables the snapshot would create."""


class LockError(BackupkitError):
    """The backup directory is locked by another live backup or prune."""

    exit_code = 10


class RetentionError(BackupkitError):
    """A retention policy is invalid or would break a safety floor."""

    exit_code = 11


class BucketError(BackupkitError):
    """Supabase Storage (its S3 endpoint) cannot be read or written: keys, bucket, network."""

    exit_code = 13


class DrillFailed(BackupkitError):
    """A restore drill found the restored database different from what its snapshot recorded."""

    exit_code = 14

    def __init__(self, message: str, differences: list[str] | None = None, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.differences = list(differences or [])
