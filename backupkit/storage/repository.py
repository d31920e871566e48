"""A repository's layout: which names are snapshots, which are unfinished, which are pinned.

Layout of a repository (a folder, or a prefix in another storage)::

    <id>/                complete snapshots (renamed into place when verified)
    .tmp-<id>-<r>/       a backup being written, or left by a crash
    .trash-<id>-<r>/     a snapshot being deleted by prune
    .pins/<id>           pin markers (outside the snapshot, which never changes)
    .lock                held by a running backup or prune

Where a rename is no atomic step (object stores: ``Storage.atomic_rename``), the
manifest is copied last and deleted first, so an ``<id>/`` without ``manifest.json``
is an interrupted publish or delete: it is listed as unfinished ("incomplete"),
never as a snapshot, and prune removes it once it is stale.

Every name is spelled here; the bytes go through a ``Storage`` (``storage.base``).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..errors import ConfigError, SnapshotError, SnapshotNotFound, StorageError
from ..snapshot import manifest as mf
from . import pool
from .base import Entry, Storage, check_name
from .location import SnapshotLocation, locate, open_storage, scheme_of

log = logging.getLogger("backupkit")

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
PINS = ".pins"
LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class Snapshot:
    """A complete snapshot and the summary its manifest gives."""

    id: str
    location: SnapshotLocation
    created_at: datetime | None
    label: str | None = None
    tables: int = 0
    rows: int = 0
    bytes: int = 0
    pinned: bool = False
    partial: bool = False
    error: str | None = None  # set when the manifest cannot be read
    #: Bytes of the files in the snapshot's own folder (manifest and signature aside).
    own_bytes: int = 0
    #: The repository's pool files it refers to (``storage.pool``), with their sizes.
    shared: dict[str, int] = field(default_factory=dict)
    #: What removing it alone would free: its own files and the shared ones no other snapshot
    #: refers to (set by ``list_snapshots``).
    unique_bytes: int = 0
    #: The manifest's recorded checksum (``manifest_sha256``): two snapshots of one id are the
    #: same snapshot only when these are equal.
    digest: str | None = None

    @property
    def path(self) -> Path:
        """The snapshot's folder (a snapshot on this machine; see ``SnapshotLocation.path``)."""
        return self.location.path

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "path": str(self.location),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "label": self.label,
            "tables": self.tables,
            "rows": self.rows,
            "bytes": self.bytes,
            "pinned": self.pinned,
            "partial": self.partial,
            "error": self.error,
            "unique_bytes": self.unique_bytes,
        }


@dataclass
class Unfinished:
    """A temporary folder: a backup in progress or one that crashed, or an interrupted delete."""

    name: str
    kind: str  # "tmp", "trash", or "incomplete" (a prefix without manifest: an interrupted rename)
    age_seconds: float = field(default=0.0)
    where: str = ""

    @property
    def path(self) -> Path:
        return Path(self.where or self.name)

    def to_dict(self) -> dict:
        return {"path": self.where or self.name, "kind": self.kind, "age_seconds": round(self.age_seconds)}


def check_label(label: str | None) -> str | None:
    """Validate a snapshot label (it becomes part of a folder name)."""
    if label is None or LABEL_RE.match(label):
        return label
    raise ConfigError(f"invalid label {label!r}", hint="use letters, digits, '.', '_' and '-' only (at most 64)")


def new_id(now: datetime, label: str | None) -> str:
    """Snapshot id from the UTC start time (milliseconds) and optional label."""
    stamp = now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"
    return f"{stamp}-{label}" if label else stamp


def staging_name(snapshot_id: str) -> str:
    """A fresh temporary name for a snapshot being written (never listed as a snapshot)."""
    return f"{TMP_PREFIX}{snapshot_id}-{secrets.token_hex(4)}"


def publish(storage: Storage, staging: str, snapshot_id: str) -> SnapshotLocation:
    """Make the finished, verified snapshot under ``staging`` visible as ``snapshot_id`` (one rename)."""
    storage.rename(staging, snapshot_id)
    return SnapshotLocation(storage, snapshot_id)


def trash(location: SnapshotLocation) -> str:
    """Take a snapshot out of the listing (renamed to ``.trash-*``) before its files are removed.

    An interruption after this leaves a ``.trash-*`` folder that the next prune
    removes, never a half-deleted snapshot that looks complete.
    """
    name = f"{TRASH_PREFIX}{location.id}-{secrets.token_hex(4)}"
    location.storage.rename(location.id, name)
    return name


def _summary(location: SnapshotLocation, pinned: set[str], entry: Entry) -> Snapshot:
    try:
        if entry.kind == "link":
            # Never followed: prune would otherwise verify, and delete, someone else's folder.
            raise SnapshotError(
                f"{entry.name} is a symbolic link, not a snapshot folder of this directory;"
                " backupkit neither reads nor removes it"
            )
        m = mf.read(location)  # validated: the sums below cannot fail on a wrong type
        shared = pool.referenced(m)
        return Snapshot(
            id=location.id,
            location=location,
            created_at=datetime.fromisoformat(m["created_at"]),
            label=m.get("label") if isinstance(m.get("label"), str) else None,
            tables=len(m["tables"]),
            rows=sum(t["rows"] for t in m["tables"]),
            bytes=sum(f["bytes"] for f in mf.all_files(m)),
            pinned=location.id in pinned,
            partial=bool(m.get("partial")),
            own_bytes=sum(f["bytes"] for f in mf.all_files(m) if f.get("shared") is not True),
            shared=shared,
            digest=m["manifest_sha256"] if isinstance(m.get("manifest_sha256"), str) else None,
        )
    except (SnapshotError, KeyError, TypeError, ValueError, OSError) as exc:
        # One folder that cannot be read never hides the others: it is listed as unreadable.
        return Snapshot(
            id=location.id, location=location, created_at=None, pinned=location.id in pinned, error=str(exc)
        )


def summary(location: SnapshotLocation) -> Snapshot:
    """One snapshot as ``list_snapshots`` describes it (``error`` set when it cannot be read;
    ``pinned`` and ``unique_bytes`` are the listing's and stay unset)."""
    try:
        entry = location.storage.stat(location.id)
    except OSError as exc:
        error = str(mf.unreadable(location.where(), exc))
        return Snapshot(id=location.id, location=location, created_at=None, error=error)
    return _summary(location, set(), entry)


def pins(repository: Path | str | Storage) -> set[str]:
    """Ids pinned in the repository; SnapshotError when the pins cannot be read (prune must not guess)."""
    storage = open_storage(repository)
    try:
        return {e.basename for e in storage.list(PINS)}
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise mf.unreadable(storage.where(PINS), exc) from None


def list_snapshots(repository: Path | str | Storage) -> tuple[list[Snapshot], list[Unfinished]]:
    """Complete snapshots newest first, and unfinished temporary folders.

    A snapshot that cannot be read (permissions, a malformed manifest, a symbolic
    link) is listed with ``error`` set and sorted last; only an unreadable
    repository itself raises (``SnapshotError``, exit 7).
    """
    storage = open_storage(repository)
    try:
        entries = storage.list()
    except (FileNotFoundError, NotADirectoryError):
        raise SnapshotNotFound(
            f"{storage.location} is not a directory", hint="pass the folder given to `backupkit backup --to`"
        ) from None
    except OSError as exc:
        raise mf.unreadable(storage.location, exc) from None
    pinned = pins(storage)
    snaps, unfinished = [], []
    now = time.time()
    for entry in entries:
        name = entry.name
        if entry.kind not in ("dir", "link"):
            continue
        if name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            kind = "tmp" if name.startswith(TMP_PREFIX) else "trash"
            unfinished.append(Unfinished(name, kind, now - entry.mtime, storage.where(name)))
        elif not name.startswith("."):
            if not storage.atomic_rename and entry.kind == "dir" and not _has_manifest(storage, name):
                if not holds_repository(storage, name):  # s3://bucket given for s3://bucket/prod
                    unfinished.append(Unfinished(name, "incomplete", now - entry.mtime, storage.where(name)))
            else:
                snaps.append(_summary(SnapshotLocation(storage, name), pinned, entry))
    snaps.sort(key=lambda s: (s.created_at is not None, s.created_at or datetime.min, s.id), reverse=True)
    for s, unique in zip(snaps, usage(snaps).unique, strict=True):
        s.unique_bytes = unique
    return snaps, unfinished


@dataclass(frozen=True)
class Usage:
    """How much a repository's snapshots hold (``logical``: the sum of their sizes) and store
    (``stored``: each shared file counted once), and what each alone would free (``unique``)."""

    logical: int
    stored: int
    unique: list[int]


def usage(snaps: list[Snapshot]) -> Usage:
    """The sizes of ``snaps`` (readable ones; see ``Usage``), from their manifests alone."""
    users: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for s in snaps:
        for name, size in s.shared.items():
            users[name] = users.get(name, 0) + 1
            sizes[name] = size
    unique = [s.own_bytes + sum(size for name, size in s.shared.items() if users[name] == 1) for s in snaps]
    return Usage(
        logical=sum(s.bytes for s in snaps),
        stored=sum(s.own_bytes for s in snaps) + sum(sizes.values()),
        unique=unique,
    )


def holds_repository(storage: Storage, name: str) -> bool:
    """Whether prefix ``name`` is a backup directory of its own (its pool, pins or lock, or a
    snapshot in it): never an interrupted upload to prune, whatever its age."""
    try:
        children = storage.list(name)
    except OSError:
        return True  # cannot be told: left alone
    if {c.basename for c in children} & {".shared", ".pins", ".lock"}:
        return True
    return any(c.kind == "dir" and _has_manifest(storage, c.name) for c in children)


def _has_manifest(storage: Storage, name: str) -> bool:
    """Whether prefix ``name`` holds a manifest; when that cannot be told, it is listed as a
    snapshot whose error says why (never pruned as debris)."""
    try:
        storage.stat(f"{name}/{mf.MANIFEST}")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    return True


def _when(s: Snapshot) -> tuple:
    if s.created_at is not None and s.created_at.utcoffset() is not None:
        return (s.created_at, s.id)
    m = re.match(r"(\d{8}T\d{6})\.(\d{3})Z", s.id)
    if m:
        stamp = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(microsecond=int(m.group(2)) * 1000, tzinfo=UTC)
        return (stamp, s.id)
    return (datetime.max.replace(tzinfo=UTC), s.id)


def _is_snapshot_folder(path: Path) -> bool:
    """A folder given where a snapshot or a repository may be: is it a snapshot (even a damaged one)?"""
    try:
        return not path.is_dir() or any((path / n).exists() for n in (mf.MANIFEST, "data", "schema"))
    except OSError as exc:
        raise mf.unreadable(path, exc) from None


def _is_snapshot(argument: str | os.PathLike[str]) -> bool:
    """A repository or snapshot argument: does it name a snapshot (even a damaged one)?"""
    text = os.fspath(argument)
    if scheme_of(text) != "s3":
        return _is_snapshot_folder(Path(text))
    try:
        location = locate(text)
    except ConfigError:
        return False  # s3://bucket: a repository at the top of the bucket
    try:
        names = {e.basename for e in location.storage.list(location.id)}
    except FileNotFoundError:
        return True  # nothing there: reported as "no snapshot at …"
    except OSError as exc:
        raise mf.unreadable(location.where(), exc) from None
    return bool(names & {mf.MANIFEST, "data", "schema"})


def resolve(
    repository_or_snapshot: Path | str | Storage | SnapshotLocation, ref: str | None = None
) -> SnapshotLocation:
    """A snapshot from its folder, or from a repository plus an id / ``latest`` / ``latest~1``."""
    if isinstance(repository_or_snapshot, SnapshotLocation):
        return repository_or_snapshot
    if ref is None:
        if not isinstance(repository_or_snapshot, Storage) and _is_snapshot(repository_or_snapshot):
            # A snapshot folder, even one whose manifest is gone, is verified as such.
            return locate(repository_or_snapshot)
        ref = "latest"
    storage = open_storage(repository_or_snapshot)
    m = re.fullmatch(r"latest(?:~(\d+))?", ref)
    if m:
        # Unreadable ones count too, placed by the time in their id (or newest, when it has
        # none): "latest" must never silently mean an older snapshot.  The command then
        # fails on the unreadable one with its own error.
        snaps = sorted(list_snapshots(storage)[0], key=_when, reverse=True)
        n = int(m.group(1) or 0)
        if n >= len(snaps):
            raise SnapshotNotFound(
                f"{storage.location} has only {len(snaps)} complete snapshot(s); no {ref}",
                hint=f"run `backupkit list {storage.location}` to see what is there"
                + ("; check the path (the folder given to `backupkit backup --to`)" if not snaps else ""),
            )
        return snaps[n].location
    if check_name(ref) or "/" in ref:
        raise SnapshotNotFound(
            f"{ref!r} is not a snapshot id", hint="run `backupkit list DIR` to see the snapshots there"
        )
    return SnapshotLocation(storage, ref)


def set_pin(snapshot: Path | str | SnapshotLocation, pinned: bool = True) -> bool:
    """Pin (or unpin) a snapshot so prune never removes it; returns the new state.

    Under the repository's lock: a prune reads the pins once, then takes a while to
    decide, so a pin set in between would be ignored and then deleted with its snapshot.
    ``LockError`` (exit 10) while a backup or prune runs, ``SnapshotError`` (exit 7)
    when the snapshot cannot be read, ``StorageError`` (exit 8) when the pin marker
    cannot be written or removed.
    """
    from .lock import DirLock

    location = locate(snapshot)
    mf.read(location)  # a snapshot that cannot be read fails before the lock is taken
    with DirLock(location.storage, "pin") as lock:
        if lock.took_over:
            log.warning(lock.took_over)
        return _write_pin(location, pinned)


def _write_pin(location: SnapshotLocation, pinned: bool) -> bool:
    mf.read(location)  # still there: a prune may have removed it before the lock came
    storage, marker = location.storage, f"{PINS}/{location.id}"
    try:
        if pinned:
            try:
                storage.write(marker, (datetime.now(UTC).isoformat() + "\n").encode())
            except FileExistsError:
                pass  # pinned already
        else:
            storage.remove(marker)
    except OSError as exc:
        raise StorageError(
            f"cannot {'pin' if pinned else 'unpin'} {location.id}: {storage.where(marker)}: {exc.strerror or exc}",
            hint="run backupkit as a user that may write the backup directory",
        ) from None
    return pinned


def copy_snapshot(source: Path | str | SnapshotLocation, target: Path | str | Storage) -> SnapshotLocation:
    """Copy one snapshot into another repository, streamed file by file, verified before it is listed.

    The copy is written under a temporary name and published (one rename) only when
    ``verify`` finds every file as its manifest says; on any failure nothing is left
    that looks like a snapshot.  Shared data files (``storage.pool``) go into the
    target's pool, and those it has already are not copied again.  The target's lock is
    held meanwhile, so a prune there cannot remove the copy being written.
    ``FileExistsError`` when the target already has a snapshot of that id.
    """
    from ..errors import SnapshotDamaged
    from ..snapshot.verify import verify
    from .lock import DirLock

    src = locate(source)
    dst = open_storage(target, create=True)
    staging = staging_name(src.id)
    manifest = mf.read(src)
    with DirLock(dst, "copy") as lock:
        try:
            for entry in src.storage.walk(src.id):
                if entry.kind == "dir":
                    continue
                if entry.kind != "file":
                    raise SnapshotDamaged(
                        f"{entry.name} is not a plain file",
                        [f"{entry.name} is not a plain file"],
                        hint=f"run `backupkit verify {src}`",
                    )
                rel = entry.name[len(src.id) + 1 :]
                with src.storage.open(entry.name) as stored:
                    _copy_into(stored, dst, f"{staging}/{rel}")
            for file in mf.all_files(manifest):
                if file.get("shared") is not True or pool.has(dst, file["sha256"], file["bytes"]):
                    continue
                with mf.open_file(src, file["path"]) as stored:
                    _copy_into(stored, dst, f"{staging}/{file['path']}")
                pool.share(dst, f"{staging}/{file['path']}", file["sha256"], file["bytes"])
            report = verify(SnapshotLocation(dst, staging))
            if not report.ok:
                raise SnapshotDamaged(
                    f"the copy of {src.id} does not verify: " + "; ".join(report.problems[:3]),
                    report.problems,
                    hint=f"run `backupkit verify {src}`",
                )
            lock.check_held()  # a prune that took the lock over may have removed shared files
            return publish(dst, staging, src.id)
        finally:
            if any(e.name == staging for e in dst.list()):
                dst.remove(staging)


def _copy_into(source: BinaryIO, storage: Storage, name: str) -> None:
    """Stream ``source`` into new file ``name`` of ``storage``."""
    import shutil

    from .base import BLOCK

    with storage.create(name) as out:
        shutil.copyfileobj(source, out, BLOCK)
