"""``backupkit copy``: replicate snapshots from one repository to another (the 3-2-1 rule).

Each snapshot is copied with ``repository.copy_snapshot``: streamed file by file,
verified in the target before it is listed there, under the target's lock.  A
snapshot the target already has (same id) is skipped, never overwritten: snapshots
are write-once, so the same id is the same snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .base import Storage
from .location import open_storage
from .repository import copy_snapshot, list_snapshots, resolve


@dataclass
class CopyResult:
    """What ``copy_snapshots`` did: ids copied, ids the target already had."""

    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {"copied": self.copied, "present": self.present}


def copy_snapshots(
    source: str | os.PathLike[str] | Storage,
    target: str | os.PathLike[str] | Storage,
    refs: Sequence[str] = (),
) -> CopyResult:
    """Copy the snapshots ``refs`` (ids, ``latest``, ``latest~N``; default: every complete one)
    of repository ``source`` into repository ``target``, oldest first; those already there
    are left as they are."""
    src = open_storage(source)
    dst = open_storage(target, create=True)
    wanted = [resolve(src, ref) for ref in refs] if refs else [s.location for s in list_snapshots(src)[0]]
    there = {s.id for s in list_snapshots(dst)[0]}
    result = CopyResult()
    for location in sorted(wanted, key=lambda loc: loc.id):
        if location.id in there:
            result.present.append(location.id)
            continue
        copy_snapshot(location, dst)
        result.copied.append(location.id)
    return result
