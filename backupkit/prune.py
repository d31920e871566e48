"""``backupkit prune``: apply a retention policy to a backup directory, safely.

The decision is ``retention.apply_policy`` (pure); this module does the I/O
around it: the directory lock, which snapshots are intact, and deletion that
an interruption cannot turn into a half-deleted snapshot that looks complete
(a snapshot is renamed to ``.trash-*`` first, then removed).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import RetentionError
from .lock import DirLock
from .retention import Policy, SnapshotInfo, apply_policy
from .store import TRASH_PREFIX, list_snapshots
from .verify import verify

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

    def to_dict(self) -> dict:
        return {"dry_run": self.dry_run, "decisions": self.decisions, "kept": self.kept,
                "removed": self.removed, "stale_removed": self.stale, "warnings": self.warnings}


def _intact_flags(snaps, now: datetime) -> dict[str, bool]:
    """Verify from the newest down until one dated up to ``now`` is intact: only the newest
    intact one matters to the policy (snapshots dated after ``now`` take no part in its floors,
    so one of them being intact proves nothing), and hashing every old snapshot on each prune
    would be wasteful."""
    flags = {}
    for s in snaps:
        flags[s.id] = verify(s.path).ok
        # (a created_at without zone is refused by SnapshotInfo right after)
        if flags[s.id] and (s.created_at.utcoffset() is None or s.created_at <= now):
            break
    return flags


def prune(directory: Path | str, policy: Policy, *, now: datetime, dry_run: bool = False,
          stale_after_hours: float = 24, _after_rename=None) -> PruneResult:
    """Remove the snapshots ``policy`` does not keep (none with ``dry_run``); report why for each."""
    directory = Path(directory)
    list_snapshots(directory)  # a missing directory is "not found", not "locked"
    if now.utcoffset() is None:
        raise RetentionError(f"now ({now}) has no time zone")
    result = PruneResult(dry_run=dry_run)
    with DirLock(directory, "prune") as lock:
        if lock.took_over:
            result.warnings.append(lock.took_over)
            log.warning(lock.took_over)
        snaps, unfinished = list_snapshots(directory)
        unreadable = [s for s in snaps if s.error or s.created_at is None]
        for s in unreadable:
            msg = f"{s.id} has no readable manifest ({s.error}); kept — inspect it and delete it by hand"
            result.warnings.append(msg)
            log.warning(msg)
        readable = [s for s in snaps if s not in unreadable]
        flags = _intact_flags(readable, now)
        infos = [SnapshotInfo(s.id, s.created_at, pinned=s.pinned, intact=flags.get(s.id, True))
                 for s in readable]
        keep, remove, reasons = apply_policy(infos, policy, now)
        by_id = {s.id: s for s in readable}
        for info in sorted(keep + remove, key=lambda i: i.created_at, reverse=True):
            action = "keep" if info in keep else "remove"
            result.decisions.append({"id": info.id, "action": action, "created_at": info.created_at.isoformat(),
                                     "reasons": reasons.get(info.id, []), "intact": flags.get(info.id)})
        result.kept = [i.id for i in keep] + [s.id for s in unreadable]
        result.removed = [i.id for i in remove]
        for u in unfinished:
            if u.kind == "trash" or u.age_seconds > stale_after_hours * 3600:
                result.stale.append(u.path.name)
        if dry_run:
            return result
        for info in remove:
            _delete(by_id[info.id].path, _after_rename)
        for name in result.stale:
            shutil.rmtree(directory / name, ignore_errors=True)
    return result


def _delete(path: Path, after_rename=None) -> None:
    trash = path.parent / f"{TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}"
    # The rename is atomic: from here on the folder is no longer listed as a snapshot.
    os.rename(path, trash)
    if after_rename:
        after_rename(trash)
    shutil.rmtree(trash)
    (path.parent / ".pins" / path.name).unlink(missing_ok=True)
