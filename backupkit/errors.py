"""Every error backupkit raises on purpose.

One base class, so callers can catch everything backupkit means to say with a
single ``except BackupkitError``.  The CLI turns each class into an exit code in
one place (``backupkit.cli.EXIT_CODES``); README lists them.

    BackupkitError
    ├── ConfigError            bad arguments, missing DSN, unknown parameter
    ├── ConnectionFailed       cannot reach or log in to PostgreSQL
    ├── ToolError              pg_dump / pg_restore missing, too old, or failed
    ├── SourceError            the database refuses what a backup needs
    │   └── RowLevelSecurityError  COPY would silently skip rows hidden by RLS
    ├── SnapshotError          a snapshot folder that cannot be used
    │   ├── SnapshotNotFound
    │   ├── SnapshotDamaged    verification failed; ``problems`` lists why
    │   └── StorageError       the snapshot cannot be written (disk full, permissions)
    ├── RestoreError           the restore stopped; ``left_behind`` says what remains
    │   └── TargetNotEmpty     the target already has tables from the snapshot
    ├── LockError              another backup or prune holds the directory's lock
    └── RetentionError         a policy that makes no sense, or would remove the last snapshot

Messages never contain a password: build them from ``dsn.redact`` output only.
"""

from __future__ import annotations


class BackupkitError(Exception):
    """Base class of every error backupkit raises deliberately."""

    #: One line telling the user what to do next; printed after the message.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __reduce__(self):
        # Keep hint and other attributes when a worker process sends the error back.
        return (self.__class__, self.args[:1], self.__dict__)


class ConfigError(BackupkitError):
    """Arguments or environment do not describe a runnable job."""


class ConnectionFailed(BackupkitError):
    """PostgreSQL could not be reached or refused the login."""


class ToolError(BackupkitError):
    """An external PostgreSQL tool (pg_dump, pg_restore) is missing, too old or failed."""


class SourceError(BackupkitError):
    """The source database cannot give a complete, consistent copy."""


class RowLevelSecurityError(SourceError):
    """Row-level security would hide rows from COPY, so the backup would be partial."""


class SnapshotError(BackupkitError):
    """A snapshot folder cannot be used."""


class SnapshotNotFound(SnapshotError):
    """No snapshot at the given path or id."""


class SnapshotDamaged(SnapshotError):
    """A snapshot failed verification."""

    def __init__(self, message: str, problems: list[str] | None = None, **kw):
        super().__init__(message, **kw)
        self.problems = list(problems or [])


class StorageError(SnapshotError):
    """The backup directory cannot be written: disk full, permissions, read-only."""


class RestoreError(BackupkitError):
    """A restore did not complete."""

    def __init__(self, message: str, left_behind: str | None = None, **kw):
        super().__init__(message, **kw)
        self.left_behind = left_behind


class TargetNotEmpty(RestoreError):
    """The target database already holds tables the snapshot would create."""


class LockError(BackupkitError):
    """The backup directory is locked by another live backup or prune."""


class RetentionError(BackupkitError):
    """A retention policy is invalid or would break a safety floor."""
