"""``backupkit copy``: replicate snapshots from one repository to another (the 3-2-1 rule).

Each snapshot is copied with ``repository.copy_snapshot``: streamed file by file,
verified in the target before it is listed there, under the target's lock.  A
snapshot the target already has (same id, same manifest) is skipped, never overwritten:
snapshots are write-once.  One of that id whose manifest differs, or cannot be read, is
another snapshot (or a damaged one): it is left as it is and named in ``unreadable``, never
counted as copied.  Copying every snapshot, one whose manifest cannot be read, or whose
files do not verify, is reported (``unreadable``) and the others still go: a damaged old
snapshot must not stop the new ones from leaving the machine.

On a storage without atomic rename (S3), a copy interrupted while it published leaves the
snapshot's prefix without a manifest (listed as ``incomplete``): that debris is removed,
under the target's lock, before the snapshot is copied again, so a re-run finishes the job.

A copy that does not verify in the target may be the target's fault: a file of its pool
(``storage.pool``) that no longer hashes to its name (bit rot, an overwrite) is reused, not
copied again, and the copied manifest still calls it shared.  Such a file, when the source's
is intact, is removed (under the target's lock) and the snapshot copied once more: the good
bytes go back into the pool, which heals the target's other snapshots that use them.  Only
when the copy still does not verify is the source's snapshot called damaged.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import SnapshotDamaged, StorageError
from .base import BLOCK, Storage
from .location import SnapshotLocation, open_storage
from .lock import DirLock
from .repository import Snapshot, copy_snapshot, list_snapshots, resolve, summary

log = logging.getLogger("backupkit")


@dataclass
class CopyResult:
    """What ``copy_snapshots`` did: ids copied, ids the target already had, and the source's
    snapshots that could not be read, were damaged, or whose id the target holds with other
    contents, and were not copied ({id: why})."""

    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"copied": self.copied, "present": self.present, "unreadable": self.unreadable}


def copy_snapshots(
    source: str | os.PathLike[str] | Storage,
    target: str | os.PathLike[str] | Storage,
    refs: Sequence[str] = (),
) -> CopyResult:
    """Copy the snapshots ``refs`` (ids, ``latest``, ``latest~N``; default: every complete one)
    of repository ``source`` into repository ``target``, oldest first; those already there
    are left as they are.  By default a snapshot whose manifest cannot be read, or whose
    copy does not verify (``SnapshotDamaged``: damaged in the source), is left out and named
    in ``unreadable``; one named in ``refs`` raises.  An id the target holds with another
    manifest is named in ``unreadable`` too, and left as it is."""
    src = open_storage(source)
    dst = open_storage(target, create=True)
    result = CopyResult()
    if refs:
        wanted = [resolve(src, ref) for ref in refs]
        mine = {loc.id: summary(loc) for loc in wanted}
    else:
        listed = list_snapshots(src)[0]
        wanted = [s.location for s in listed if s.error is None]
        mine = {s.id: s for s in listed}
        result.unreadable = {s.id: s.error for s in listed if s.error is not None}
    snaps, unfinished = list_snapshots(dst)
    there = {s.id: s for s in snaps}
    debris = {u.name for u in unfinished if u.kind == "incomplete"}
    for location in sorted(wanted, key=lambda loc: loc.id):
        if location.id in there:
            clash = _other_snapshot(mine[location.id], there[location.id])
            if clash is None:
                result.present.append(location.id)
            else:
                result.unreadable[location.id] = clash
            continue
        if location.id in debris:
            _remove_interrupted(dst, location.id)
        try:
            try:
                copy_snapshot(location, dst)
            except SnapshotDamaged:
                if not _remove_rotten(location, mine[location.id].shared, dst):
                    raise
                copy_snapshot(location, dst)  # the pool's bad files replaced by the source's
        except SnapshotDamaged as exc:
            if refs:
                raise
            result.unreadable[location.id] = f"damaged: {str(exc).splitlines()[0]}"
            continue
        result.copied.append(location.id)
    return result


def _other_snapshot(mine: Snapshot, present: Snapshot) -> str | None:
    """Why the target's snapshot ``present`` is not the source's ``mine`` (of the same id), or
    None when it is: the same id is the same snapshot only when the manifests' checksums are."""
    if present.error is not None:
        return (
            f"the target's snapshot of this id cannot be read ({present.error}); it was left as it is:"
            f" inspect {present.location.where()}"
        )
    if mine.error is not None:  # the caller copies nothing of it either way
        return f"cannot be read: {mine.error.splitlines()[0]}"
    if mine.digest is not None and mine.digest == present.digest:
        return None
    return (
        f"the target already holds a different snapshot of this id ({present.location.where()});"
        " it was not overwritten: compare the two, or copy into another repository"
    )


def _remove_interrupted(storage: Storage, snapshot_id: str) -> None:
    """Remove the manifest-less prefix ``snapshot_id`` an interrupted copy (or delete) left, under
    the target's lock, so the snapshot can be published there again."""
    with DirLock(storage, "copy") as lock:
        if lock.took_over:
            log.warning(lock.took_over)
        # Under the lock: still debris, not a snapshot published meanwhile.
        if any(u.name == snapshot_id and u.kind == "incomplete" for u in list_snapshots(storage)[1]):
            where = storage.where(snapshot_id)
            log.warning("removing %s: an interrupted copy or delete left it without a manifest", where)
            try:
                storage.remove(snapshot_id)
            except OSError as exc:
                raise StorageError(
                    f"cannot remove {where}, left by an interrupted copy: {exc.strerror or exc}",
                    hint="check that these credentials may delete in the target; then run the copy again",
                ) from None


def _remove_rotten(location: SnapshotLocation, wanted: Mapping[str, int], storage: Storage) -> list[str]:
    """Remove, under the lock of ``storage``, the files of its pool that ``location``'s snapshot
    refers to (``wanted``), that do not hash to their names there but do in the source; the
    names removed."""
    removed = []
    with DirLock(storage, "copy") as lock:
        if lock.took_over:
            log.warning(lock.took_over)
        for name in sorted(wanted):
            # Only where the source holds the good bytes: a file damaged in the source, copied
            # into the target's pool by the failed attempt, is the source's damage to report.
            if _hashes_to_name(storage, name) is False and _hashes_to_name(location.storage, name):
                log.warning("%s does not hash to its name: replaced by the source's copy", storage.where(name))
                try:
                    storage.remove(name)
                except OSError as exc:
                    raise StorageError(
                        f"cannot remove the damaged shared file {storage.where(name)}: {exc.strerror or exc}",
                        hint="check that this user may delete in the target; then run the copy again",
                    ) from None
                removed.append(name)
    return removed


def _hashes_to_name(storage: Storage, name: str) -> bool | None:
    """Whether pool file ``name`` holds the bytes its name promises; None when it is not there
    or cannot be read (nothing to replace: the copy adds it, or fails saying why)."""
    h = hashlib.sha256()
    try:
        with storage.open(name) as f:
            while block := f.read(BLOCK):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest() == name.rsplit("/", 1)[-1]
