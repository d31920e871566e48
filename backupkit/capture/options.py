"""What a backup is asked to do, checked before anything is connected to or written.

``backup()`` turns its keyword arguments into a ``BackupOptions`` through the checks
here: each bad value is a ``ConfigError`` that says what to give instead, raised before
a connection is opened, a folder made or a byte written.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StorageError
from ..storage.base import Storage
from ..storage.local import LocalStorage
from ..storage.location import open_storage
from .chunks import CHUNK_BYTES, MIN_CHUNK_BYTES
from .contents import Selection

if TYPE_CHECKING:  # the buckets modules (and botocore) load only when buckets are backed up
    from ..buckets.capture import BucketChoice
    from ..buckets.endpoint import Endpoint

log = logging.getLogger("backupkit")

#: Default seconds to wait for one table's lock (``pg_dump --lock-wait-timeout``).  Long
#: enough to ride out the short exclusive locks of ordinary DDL and deploy migrations;
#: short enough that a backup started under a long one (VACUUM FULL, a table rewrite)
#: fails with a clear message instead of waiting for ever, queueing other sessions' locks.
LOCK_WAIT_TIMEOUT = 60.0
#: Default limit on a whole backup run, in seconds: the original system's 30 minutes.
TIMEOUT = 30 * 60.0
#: S3 Object Lock modes (``object_lock_mode``); the first is the default.
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
#: The longest Object Lock retention ``object_lock_days`` takes (S3's own bound on a default retention).
MAX_LOCK_DAYS = 36500


@dataclass
class BackupOptions:
    """How a backup runs, checked: what it covers and the limits it keeps."""

    selection: Selection
    jobs: int = 1
    label: str | None = None
    allow_partial: bool = False
    progress: bool | None = None
    chunk_bytes: int = CHUNK_BYTES
    on_snapshot: Callable[[str], object] | None = None
    lock_wait_timeout: float | None = LOCK_WAIT_TIMEOUT
    timeout: float | None = TIMEOUT
    key: Any = None  # an Ed25519 private key, when the snapshot is signed
    #: Age public keys every file but the manifest is encrypted to (none: not encrypted).
    recipients: tuple[str, ...] = ()
    #: (mode, days) of the S3 Object Lock retention every object of the snapshot gets; None: none.
    object_lock: tuple[str, float] | None = None
    #: Data files go into the repository's pool of shared files (``storage.pool``).
    dedup: bool = True
    #: Supabase Storage buckets to back up beside the database; None: none.
    buckets: BucketChoice | None = None

    @property
    def shares(self) -> bool:
        """Whether data files go into the pool.  Not when encrypted (age encrypts every file
        with a new random key: equal files never look equal) nor locked (a shared file would
        need the longest lock of every snapshot using it)."""
        return self.dedup and not self.recipients and self.object_lock is None


def check_chunk_bytes(value: int) -> int:
    """``chunk_bytes``, checked: at least ``MIN_CHUNK_BYTES``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_CHUNK_BYTES:
        raise ConfigError(
            f"`chunk_bytes` {value!r} is too small: use at least {MIN_CHUNK_BYTES} bytes",
            hint="the default suits most databases; smaller chunks mean more COPY statements run in parallel",
        )
    return value


def bucket_choice(
    names: Sequence[str], every: bool, endpoint: Endpoint | None, recipients: Sequence[str] | None
) -> BucketChoice | None:
    """The Storage buckets to back up, checked; None when none were asked for."""
    if not names and not every:
        return None
    from ..buckets.capture import BucketChoice, check_choice
    from ..buckets.endpoint import Endpoint

    chosen = check_choice(names, every)
    if not chosen and not every:
        return None
    if recipients:
        raise ConfigError(
            "Storage buckets cannot be backed up into an encrypted snapshot yet",
            hint="back the buckets up in a separate, unencrypted run, or leave out `recipients`",
        )
    return BucketChoice(endpoint or Endpoint.from_env(), chosen, every)


def selection(schemas: Sequence[str] | None, tables: Sequence[str], exclude: Sequence[str]) -> Selection:
    """What to back up, checked: every table named with its schema, whose schema is then included."""
    chosen = list(schemas or ["public"])
    for t in [*tables, *exclude]:
        if "." not in t:
            raise ConfigError(f"table {t!r} needs a schema: write it as schema.table")
    for t in tables:  # naming a table includes its schema; excluding one never adds it
        if t.split(".", 1)[0] not in chosen:
            chosen.append(t.split(".", 1)[0])
    return Selection(chosen, list(tables), list(exclude))


def object_lock(days: float | None, mode: str | None) -> tuple[str, float] | None:
    """``object_lock_days`` and ``object_lock_mode``, checked: (MODE, days), or None for no lock."""
    if days is None:
        if mode is not None:
            raise ConfigError("object_lock_mode needs `object_lock_days`", hint="give the days the lock lasts too")
        return None
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not math.isfinite(days):
        raise ConfigError(f"object_lock_days must be a number of days, not {days!r}")
    if not 0 < days <= MAX_LOCK_DAYS:
        raise ConfigError(f"object_lock_days must be above 0 and at most {MAX_LOCK_DAYS}, not {days:g}")
    name = LOCK_MODES[0] if mode is None else str(mode).upper()
    if name not in LOCK_MODES:
        raise ConfigError(f"object_lock_mode must be {' or '.join(LOCK_MODES)}, not {mode!r}")
    return name, float(days)


def check_object_lock(storage: Storage) -> None:
    """``ConfigError`` unless ``storage`` is an S3 repository whose bucket has Object Lock enabled."""
    from ..storage.s3 import S3Storage  # only when a lock is asked for: boto3 is imported by S3 users

    if not isinstance(storage, S3Storage):
        raise ConfigError(
            f"object_lock_days needs an S3 repository (s3://bucket/prefix), and {storage.location} is a local folder",
            hint="Object Lock is a feature of S3 buckets: back up to a bucket created with Object Lock enabled",
        )
    try:
        enabled = storage.object_lock_enabled()
    except OSError as exc:
        raise storage_error(exc, storage.where()) from None
    if enabled is None:
        log.warning("cannot ask whether bucket %s has Object Lock (access denied): publishing tells", storage.bucket)
    elif not enabled:
        raise ConfigError(
            f"object_lock_days needs a bucket with Object Lock, and bucket {storage.bucket} has none: "
            "create the bucket with Object Lock enabled",
            hint=f"e.g. `aws s3api create-bucket --bucket {storage.bucket}-locked --object-lock-enabled-for-bucket` "
            "(AWS can also enable it on a versioned bucket: `aws s3api put-object-lock-configuration`)",
        )


def lock_entry(taken_at: datetime, mode: str, days: float) -> dict[str, str]:
    """The manifest's ``object_lock``: ``taken_at`` plus ``days``, rounded up to a whole second."""
    until = taken_at.astimezone(UTC) + timedelta(days=days)
    if until.microsecond:
        until = until.replace(microsecond=0) + timedelta(seconds=1)
    return {"mode": mode, "retain_until": until.isoformat()}


def open_repository(to: str | os.PathLike[str] | Storage) -> tuple[Storage, LocalStorage | None]:
    """The repository's storage, made if it is a missing local folder; that folder is returned
    too, so that a backup that fails before writing anything can remove it again."""
    storage = open_storage(to)
    if isinstance(storage, LocalStorage) and not storage.root.exists():
        return open_storage(to, create=True), storage
    return storage, None


def storage_error(exc: OSError, where: str) -> StorageError:
    """The ``StorageError`` for ``exc`` met writing under ``where``, with what to do next."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = (
        "free some space or back up to another `to` folder"
        if exc.errno == errno.ENOSPC
        else "check the folder's permissions and that it is writable"
    )
    return StorageError(f"cannot write the snapshot under {where}: {reason}", hint=hint)
