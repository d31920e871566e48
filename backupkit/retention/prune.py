"""``backupkit prune``: apply a retention policy to a backup directory, safely.

The decision is ``retention.apply_policy`` (pure); this module does the I/O
around it: the directory lock, which snapshots are intact, and deletion that
an interruption cannot turn into a half-deleted snapshot that looks complete
(a snapshot is renamed to ``.trash-*`` first, then removed).  Last, the files of the
repository's pool that no listed snapshot refers to any more are removed
(``storage.pool``): an interruption anywhere leaves only files nobody needs.

A snapshot whose objects are locked (S3 Object Lock: the manifest's
``object_lock.retain_until`` lies after ``now``) is kept with the reason "object lock
until …", whatever the policy says, and no delete of it is tried; the policy decides
everything else as if the lock were not there.  A delete S3 refuses anyway (a lock or
legal hold the manifest does not record, a bucket policy) is reported for that snapshot,
which stays whole and listed (``S3Storage.rename`` undoes the copy when the manifest
cannot be deleted).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..errors import ConfigError, RetentionError, SnapshotError, StorageError
from ..snapshot import manifest as mf
from ..snapshot.verify import verify
from ..storage import pool
from ..storage.base import Storage
from ..storage.location import SnapshotLocation, open_storage
from ..storage.lock import DirLock
from ..storage.repository import PINS, Snapshot, list_snapshots, trash
from .policy import Policy, SnapshotInfo, apply_policy

log = logging.getLogger("backupkit")


@dataclass
class PruneResult:
    """Every decision with its reasons, what was removed, and stale folders cleaned."""

    decisions: list[dict] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    #: Files of the repository's pool (``storage.pool``) no kept snapshot refers to any more:
    #: removed (or, in a dry run, to be removed), and their bytes.
    shared_removed: list[str] = field(default_factory=list)
    shared_bytes: int = 0

    def to_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "decisions": self.decisions,
            "kept": self.kept,
            "removed": self.removed,
            "stale_removed": self.stale,
            "shared_removed": len(self.shared_removed),
            "shared_bytes_freed": self.shared_bytes,
            "warnings": self.warnings,
        }


def _intact_flags(snaps: list[Snapshot], now: datetime) -> dict[str, bool]:
    """Verify from the newest down until one dated up to ``now`` is intact: only the newest
    intact one matters to the policy (snapshots dated after ``now`` take no part in its floors,
    so one of them being intact proves nothing), and hashing every old snapshot on each prune
    would be wasteful."""
    flags = {}
    for s in snaps:
        try:
            flags[s.id] = verify(s.location).ok
        except SnapshotError:  # unreadable now (permissions): not known to be intact
            flags[s.id] = False
        # (a created_at without zone is refused by SnapshotInfo right after)
        if flags[s.id] and s.created_at is not None and (s.created_at.utcoffset() is None or s.created_at <= now):
            break
    return flags


def prune(
    repository: Path | str | Storage,
    policy: Policy,
    *,
    now: datetime,
    dry_run: bool = False,
    stale_after_hours: float = 24,
    _after_rename: Callable[[str], object] | None = None,
) -> PruneResult:
    """Remove the snapshots ``policy`` does not keep (none with ``dry_run``); report why for each."""
    storage = open_storage(repository)
    if (
        isinstance(stale_after_hours, bool)
        or not isinstance(stale_after_hours, (int, float))
        or not math.isfinite(stale_after_hours)
        or stale_after_hours < 0
    ):
        raise ConfigError(
            f"stale_after_hours must be a number of hours >= 0, not {stale_after_hours!r}",
            hint="e.g. `stale_after_hours` 24 (0 removes every unfinished folder not in use)",
        )
    list_snapshots(storage)  # a missing directory is "not found", not "locked"
    if now.utcoffset() is None:
        raise RetentionError(f"now ({now}) has no time zone")
    result = PruneResult(dry_run=dry_run)
    with DirLock(storage, "prune") as lock:
        if lock.took_over:
            result.warnings.append(lock.took_over)
            log.warning(lock.took_over)
        snaps, unfinished = list_snapshots(storage)
        unreadable = [s for s in snaps if s.error or s.created_at is None]
        for s in unreadable:
            msg = f"{s.id} cannot be read ({s.error}); kept — inspect it and delete it by hand"
            result.warnings.append(msg)
            log.warning(msg)
        readable = [s for s in snaps if s not in unreadable]
        flags = _intact_flags(readable, now)
        infos = [
            SnapshotInfo(s.id, s.created_at, pinned=s.pinned, intact=flags.get(s.id, True))
            for s in readable
            if s.created_at is not None
        ]
        keep, remove, reasons = apply_policy(infos, policy, now)
        by_id = {s.id: s for s in readable}
        held = _locked(remove, by_id, now, reasons, result)
        if held:
            keep = sorted(keep + held, key=lambda i: (i.created_at, i.id), reverse=True)
            remove = [i for i in remove if i not in held]
        log.info("%s: %d snapshots, policy keeps %d, removes %d", storage.where(), len(infos), len(keep), len(remove))
        for info in sorted(keep + remove, key=lambda i: i.created_at, reverse=True):
            action = "keep" if info in keep else "remove"
            result.decisions.append(
                {
                    "id": info.id,
                    "action": action,
                    "created_at": info.created_at.isoformat(),
                    "reasons": reasons.get(info.id, []),
                    "intact": flags.get(info.id),
                }
            )
        result.kept = [i.id for i in keep] + [s.id for s in unreadable]
        result.removed = [i.id for i in remove]
        grace = stale_after_hours * 3600  # for unfinished folders and orphaned shared files alike
        for u in unfinished:
            if u.kind == "trash" or u.age_seconds > grace:
                result.stale.append(u.name)
        known = {name for s in readable for name in s.shared}
        if dry_run:
            removed = set(result.removed)
            kept = [s for s in snaps if s.id not in removed]
            wanted = _wanted(kept, result)
            if wanted is not None:
                doomed = pool.unreferenced(pool.files(storage), wanted, time.time(), grace, known)
                result.shared_removed = [e.name for e in doomed]
                result.shared_bytes = sum(e.size for e in doomed)
            return result
        failed, not_removed = [], set()
        for info in remove:
            try:
                log.info("removing %s (%s)", info.id, "; ".join(reasons.get(info.id, [])))
                left = _delete(by_id[info.id].location, _after_rename)
                if left is not None:  # the snapshot is gone: reported as removed, its marker as a failure
                    failed.append(left)
            except OSError as exc:
                not_removed.add(info.id)
                failed.append(f"{info.id}: {exc.strerror or exc}")
        result.removed = [i for i in result.removed if i not in not_removed]
        result.kept += [i.id for i in remove if i.id in not_removed]
        removed_stale = []
        for name in result.stale:
            why = _remove(storage, name)
            if why is None:
                removed_stale.append(name)
            else:
                failed.append(f"stale folder {name}: {why}")
        result.stale = removed_stale  # only what is really gone is reported as removed
        # Last, when no snapshot is being removed any more: what is listed now is what stays.
        wanted = _wanted(list_snapshots(storage)[0], result)
        if wanted is not None:
            collected = pool.collect(storage, wanted, grace, known)
            result.shared_removed, result.shared_bytes = collected.removed, collected.bytes
            failed += [f"shared file {why}" for why in collected.failed]
    if failed:
        done = f"removed {len(result.removed)} snapshot(s) and {len(result.stale)} stale folder(s); "
        raise StorageError(
            done + "could not remove " + "; ".join(failed),
            hint="check the permissions of the backup directory; prune again to finish",
        )
    return result


def _wanted(kept: list[Snapshot], result: PruneResult) -> set[str] | None:
    """Every pool file the ``kept`` snapshots refer to; None (nothing may be collected) when
    one of them cannot be read, since it might refer to any."""
    unreadable = [s.id for s in kept if s.error or s.created_at is None]
    if unreadable:
        msg = f"shared files are not collected while {', '.join(unreadable)} cannot be read"
        result.warnings.append(msg)
        log.warning(msg)
        return None
    return {name for s in kept for name in s.shared}


def lock_end(location: SnapshotLocation) -> datetime | None:
    """When the S3 Object Lock retention of a snapshot's objects ends (its manifest's
    ``object_lock.retain_until``), or None when they are not locked; ``SnapshotError``,
    ``KeyError``, ``TypeError`` or ``ValueError`` when the manifest cannot tell."""
    lock = mf.read(location).get("object_lock")
    if lock is None:
        return None
    until = datetime.fromisoformat(lock["retain_until"])
    if until.utcoffset() is None:
        raise ValueError(f"retain_until {until} has no time zone")
    return until


def _locked(
    remove: list[SnapshotInfo],
    by_id: dict[str, Snapshot],
    now: datetime,
    reasons: dict[str, list[str]],
    result: PruneResult,
) -> list[SnapshotInfo]:
    """Those of ``remove`` whose objects are locked after ``now`` (or whose lock cannot be read),
    with their reason set: they are kept and never deleted."""
    held = []
    for info in remove:
        try:
            until = lock_end(by_id[info.id].location)
        except (SnapshotError, KeyError, TypeError, ValueError) as exc:
            msg = f"{info.id}: its object_lock cannot be read ({exc}); kept — inspect it and delete it by hand"
            result.warnings.append(msg)
            log.warning(msg)
            reasons[info.id] = ["object lock unreadable"]
            held.append(info)
            continue
        if until is not None and until > now:
            reasons[info.id] = [f"object lock until {until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"]
            held.append(info)
    return held


def _remove(storage: Storage, name: str) -> str | None:
    """Remove a folder, or just the link when ``name`` is a symbolic link; why not, or None."""
    try:
        storage.remove(name)
    except OSError as exc:
        return f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    try:
        storage.stat(name)
    except FileNotFoundError:
        return None
    except OSError:
        pass
    return "it is still there"


def _delete(location: SnapshotLocation, after_rename: Callable[[str], object] | None = None) -> str | None:
    """Remove a snapshot (``OSError`` when it could not be); then its pin marker, and say so
    when that could not be removed (the snapshot itself is gone by then)."""
    # The rename is atomic: from here on the snapshot is no longer listed.  A linked
    # snapshot folder is refused by the storage (list_snapshots never offers one).
    name = trash(location)
    if after_rename:
        after_rename(name)
    why = _remove(location.storage, name)
    if why is not None:
        # Renamed but not removed: a later prune removes the .trash-* folder (and says so).
        raise OSError(f"moved to {name} but not removed: {why}")
    try:
        location.storage.remove(f"{PINS}/{location.id}")
    except OSError as exc:
        return f"the pin marker {PINS}/{location.id} of the removed snapshot: {exc.strerror or exc}"
    return None
