"""``backupkit copy``: replicate snapshots from one repository to another (the 3-2-1 rule).

Each snapshot is copied with ``repository.copy_snapshot``: streamed file by file,
verified in the target before it is listed there, under the target's lock.  A
snapshot the target already has (same id) is skipped, never overwritten: snapshots
are write-once, so the same id is the same snapshot.  Copying every snapshot, one
whose manifest cannot be read, or whose files do not verify, is reported (``unreadable``)
and the others still go: a damaged old snapshot must not stop the new ones from leaving
the machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import SnapshotDamaged
from .base import Storage
from .location import open_storage
from .repository import copy_snapshot, list_snapshots, resolve


@dataclass
class CopyResult:
    """What ``copy_snapshots`` did: ids copied, ids the target already had, and the source's
    snapshots that could not be read, or were damaged, and were not copied ({id: why})."""

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
    in ``unreadable``; one named in ``refs`` raises."""
    src = open_storage(source)
    dst = open_storage(target, create=True)
    result = CopyResult()
    if refs:
        wanted = [resolve(src, ref) for ref in refs]
    else:
        listed = list_snapshots(src)[0]
        wanted = [s.location for s in listed if s.error is None]
        result.unreadable = {s.id: s.error for s in listed if s.error is not None}
    there = {s.id for s in list_snapshots(dst)[0]}
    for location in sorted(wanted, key=lambda loc: loc.id):
        if location.id in there:
            result.present.append(location.id)
            continue
        try:
            copy_snapshot(location, dst)
        except SnapshotDamaged as exc:
            if refs:
                raise
            result.unreadable[location.id] = f"damaged: {str(exc).splitlines()[0]}"
            continue
        result.copied.append(location.id)
    return result
