"""The backup directory: which folders are snapshots, which are unfinished, which are pinned.

Layout of ``DIR``::

    DIR/<id>/            complete snapshots (renamed into place when verified)
    DIR/.tmp-<id>-<r>/   a backup being written, or left by a crash
    DIR/.trash-<id>-<r>/ a snapshot being deleted by prune
    DIR/.pins/<id>       pin markers (outside the snapshot, which never changes)
    DIR/.lock            held by a running backup or prune
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..errors import ConfigError, SnapshotError, SnapshotNotFound, StorageError
from ..snapshot import manifest as mf

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
PINS = ".pins"
LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class Snapshot:
    """A complete snapshot folder and the summary its manifest gives."""

    id: str
    path: Path
    created_at: datetime | None
    label: str | None = None
    tables: int = 0
    rows: int = 0
    bytes: int = 0
    pinned: bool = False
    partial: bool = False
    error: str | None = None  # set when the manifest cannot be read

    def to_dict(self) -> dict:
        return {
            "id": self.id, "path": str(self.path),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "label": self.label, "tables": self.tables, "rows": self.rows, "bytes": self.bytes,
            "pinned": self.pinned, "partial": self.partial, "error": self.error,
        }


@dataclass
class Unfinished:
    """A temporary folder: a backup in progress or one that crashed, or an interrupted delete."""

    path: Path
    kind: str  # "tmp" or "trash"
    age_seconds: float = field(default=0.0)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "age_seconds": round(self.age_seconds)}


def check_label(label: str | None) -> str | None:
    """Validate a snapshot label (it becomes part of a folder name)."""
    if label is None or LABEL_RE.match(label):
        return label
    raise ConfigError(f"invalid label {label!r}",
                      hint="use letters, digits, '.', '_' and '-' only (at most 64)")


def new_id(now: datetime, label: str | None) -> str:
    """Snapshot id from the UTC start time (milliseconds) and optional label."""
    stamp = now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"
    return f"{stamp}-{label}" if label else stamp


def _summary(path: Path, pinned: set[str]) -> Snapshot:
    try:
        if path.is_symlink():
            # Never followed: prune would otherwise verify, and delete, someone else's folder.
            raise SnapshotError(f"{path.name} is a symbolic link, not a snapshot folder of this directory;"
                                " backupkit neither reads nor removes it")
        m = mf.read(path)  # validated: the sums below cannot fail on a wrong type
        return Snapshot(
            id=path.name, path=path, created_at=datetime.fromisoformat(m["created_at"]),
            label=m.get("label") if isinstance(m.get("label"), str) else None, tables=len(m["tables"]),
            rows=sum(t["rows"] for t in m["tables"]),
            bytes=sum(f["bytes"] for f in mf.all_files(m)),
            pinned=path.name in pinned, partial=bool(m.get("partial")),
        )
    except (SnapshotError, KeyError, TypeError, ValueError, OSError) as exc:
        # One folder that cannot be read never hides the others: it is listed as unreadable.
        return Snapshot(id=path.name, path=path, created_at=None, pinned=path.name in pinned,
                        error=str(exc))


def pins(directory: Path) -> set[str]:
    """Ids pinned in ``directory``; SnapshotError when the pins cannot be read (prune must not guess)."""
    d = Path(directory) / PINS
    try:
        return {p.name for p in d.iterdir()} if d.is_dir() else set()
    except OSError as exc:
        raise mf.unreadable(d, exc) from None


def list_snapshots(directory: Path | str) -> tuple[list[Snapshot], list[Unfinished]]:
    """Complete snapshots newest first, and unfinished temporary folders.

    A snapshot folder that cannot be read (permissions, a malformed manifest, a
    symbolic link) is listed with ``error`` set and sorted last; only an unreadable
    directory itself raises (``SnapshotError``, exit 7).
    """
    directory = Path(directory)
    try:
        if not directory.is_dir():
            raise SnapshotNotFound(f"{directory} is not a directory",
                                   hint="pass the folder given to `backupkit backup --to`")
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise mf.unreadable(directory, exc) from None
    pinned = pins(directory)
    snaps, unfinished = [], []
    now = time.time()
    for entry in entries:
        try:
            st = entry.lstat()
        except FileNotFoundError:
            continue  # removed while we looked
        except OSError as exc:
            snaps.append(Snapshot(id=entry.name, path=entry, created_at=None, error=str(mf.unreadable(entry, exc))))
            continue
        link = stat.S_ISLNK(st.st_mode)
        if not (stat.S_ISDIR(st.st_mode) or (link and entry.is_dir())):
            continue
        if entry.name.startswith(TMP_PREFIX) or entry.name.startswith(TRASH_PREFIX):
            kind = "tmp" if entry.name.startswith(TMP_PREFIX) else "trash"
            unfinished.append(Unfinished(entry, kind, now - st.st_mtime))
        elif not entry.name.startswith("."):
            snaps.append(_summary(entry, pinned))
    snaps.sort(key=lambda s: (s.created_at is not None, s.created_at or datetime.min, s.id), reverse=True)
    return snaps, unfinished


def _when(s: Snapshot) -> tuple:
    if s.created_at is not None and s.created_at.utcoffset() is not None:
        return (s.created_at, s.id)
    m = re.match(r"(\d{8}T\d{6})\.(\d{3})Z", s.id)
    if m:
        stamp = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(
            microsecond=int(m.group(2)) * 1000, tzinfo=UTC)
        return (stamp, s.id)
    return (datetime.max.replace(tzinfo=UTC), s.id)


def resolve(directory_or_snapshot: Path | str, ref: str | None = None) -> Path:
    """A snapshot folder from a path, or from ``DIR`` plus an id / ``latest`` / ``latest~1``."""
    base = Path(directory_or_snapshot)
    try:
        if ref is None:
            # A snapshot folder, even one whose manifest is gone, is verified as such.
            if not base.is_dir() or any((base / n).exists() for n in (mf.MANIFEST, "data", "schema")):
                return base
            ref = "latest"
    except OSError as exc:
        raise mf.unreadable(base, exc) from None
    m = re.fullmatch(r"latest(?:~(\d+))?", ref)
    if m:
        # Unreadable ones count too, placed by the time in their id (or newest, when it has
        # none): "latest" must never silently mean an older snapshot.  The command then
        # fails on the unreadable one with its own error.
        snaps = sorted(list_snapshots(base)[0], key=_when, reverse=True)
        n = int(m.group(1) or 0)
        if n >= len(snaps):
            raise SnapshotNotFound(f"{base} has only {len(snaps)} complete snapshot(s); no {ref}")
        return snaps[n].path
    return base / ref


def set_pin(snapshot: Path | str, pinned: bool = True) -> bool:
    """Pin (or unpin) a snapshot so prune never removes it; returns the new state.

    ``SnapshotError`` (exit 7) when the snapshot cannot be read, ``StorageError``
    (exit 8) when the pin marker cannot be written or removed.
    """
    snapshot = Path(snapshot)
    mf.read(snapshot)
    pin_dir = snapshot.parent / PINS
    marker = pin_dir / snapshot.name
    try:
        if pinned:
            pin_dir.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(datetime.now().astimezone().isoformat() + "\n")
            os.chmod(marker, 0o600)
        else:
            marker.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot {'pin' if pinned else 'unpin'} {snapshot.name}: {marker}: "
                           f"{exc.strerror or exc}",
                           hint="run backupkit as a user that may write the backup directory") from None
    return pinned
