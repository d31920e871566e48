"""Which storage a repository or snapshot argument names, and a snapshot's place in one.

Commands take a folder path (``backups``), a ``file://`` URL, an
``s3://bucket/prefix`` URL, or a ``Storage`` object; a snapshot is a folder path
(``backups/20261204T…Z``), a URL ending in its id (``s3://bucket/prefix/<id>``) or a
``SnapshotLocation`` (a storage and an id).  Other URL schemes are refused with one
clear line rather than taken for a local folder named ``gs:``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError, StorageError
from .base import Storage, check_name
from .local import LocalStorage

if TYPE_CHECKING:
    from .s3 import S3Storage

#: URL schemes a repository may be given as.
SCHEMES = ("file", "s3")


def scheme_of(text: str) -> str | None:
    """The URL scheme of a repository or snapshot argument (lower case), or None for a plain path."""
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isidentifier() else None


def _s3(text: str, prefix_required: bool = False) -> tuple[str, str]:
    """Bucket and prefix of an ``s3://bucket/prefix`` URL; ``ConfigError`` when it is not one."""
    parts = urlsplit(text)
    bucket, prefix = parts.netloc, unquote(parts.path).strip("/")
    if not bucket or parts.query or parts.fragment or "@" in bucket or (prefix and check_name(prefix)):
        # Credentials in the URL (s3://key:secret@bucket) are refused and never echoed.
        shown = f"s3://{bucket.rpartition('@')[2]}{parts.path}"
        raise ConfigError(
            f"{shown!r} is not an S3 location",
            hint="write it as s3://bucket/prefix; credentials come from AWS_* variables or a profile",
        )
    if prefix_required and not prefix:
        raise ConfigError(f"{text} names a bucket, not a snapshot", hint="write it as s3://bucket/prefix/<snapshot id>")
    return bucket, prefix


def _s3_storage(bucket: str, prefix: str) -> S3Storage:
    try:
        from .s3 import S3Storage  # boto3 is imported only by those who use S3
    except ImportError:
        raise ConfigError("s3:// repositories need boto3", hint="pip install boto3") from None
    return S3Storage(bucket, prefix)


def open_storage(where: str | os.PathLike[str] | Storage, *, create: bool = False) -> Storage:
    """The storage a repository argument names; ``create`` makes a missing local folder (``0700``)."""
    if isinstance(where, Storage):
        return where
    text = os.fspath(where)
    scheme = scheme_of(text)
    if scheme is None:
        path = Path(text)
    elif scheme == "file":
        path = Path(unquote(urlsplit(text).path))
    elif scheme == "s3":
        return _s3_storage(*_s3(text))
    else:
        raise ConfigError(
            f"{scheme}:// repositories are not supported by this version of backupkit",
            hint="give a local folder, a file:// URL or s3://bucket/prefix",
        )
    try:
        return LocalStorage(path, create=create)
    except OSError as exc:
        raise StorageError(
            f"cannot create the backup folder {path}: {exc.strerror or exc}",
            hint="check the folder's permissions and that its disk is writable",
        ) from None


@dataclass(frozen=True)
class SnapshotLocation:
    """Snapshot ``id`` in ``storage``: its files are named ``<id>/<path in the manifest>``."""

    storage: Storage
    id: str

    def key(self, rel: str = "") -> str:
        """The storage name of file ``rel`` of this snapshot (the snapshot's own prefix for "")."""
        return f"{self.id}/{rel}" if rel else self.id

    def where(self, rel: str = "") -> str:
        """File ``rel`` of this snapshot as people should see it in a message: where its bytes
        are (for a shared file, the pool file, followed by the file's name in the snapshot)."""
        stored = self.stored(rel) if rel else self.key()
        if stored != self.key(rel):
            return f"{self.storage.where(stored)} ({rel} of {self.id})"
        return self.storage.where(stored)

    def stored(self, rel: str) -> str:
        """The storage name holding the bytes of file ``rel``: ``key(rel)``, or the repository's
        pool file (``storage.pool``) when the manifest says that data or bucket file is shared.

        The manifest is read on the first call that asks for a data file and remembered
        for this location (a snapshot never changes once written); without a readable
        manifest nothing is remembered, and ``key(rel)`` is the answer.
        """
        from ..snapshot import manifest as mf

        if not rel.startswith((mf.DATA_DIR + "/", mf.FILES_DIR + "/")):
            return self.key(rel)
        shared: dict[str, str] | None = self.__dict__.get("_shared")
        if shared is None:
            shared = _shared_files(self)
            if shared is None:
                return self.key(rel)
            object.__setattr__(self, "_shared", shared)  # frozen: remembered, not a field
        return shared.get(rel) or self.key(rel)

    @property
    def name(self) -> str:
        """The snapshot's id (as ``Path.name`` is a snapshot folder's)."""
        return self.id

    def __str__(self) -> str:
        return self.storage.where(self.id)

    def __fspath__(self) -> str:
        """The snapshot's folder, so a local snapshot can be passed where a path is taken."""
        return str(self.path)

    @property
    def path(self) -> Path:
        """The snapshot's folder, for a snapshot on this machine; ``StorageError`` for one elsewhere."""
        if isinstance(self.storage, LocalStorage):
            return self.storage.root / self.id
        raise StorageError(
            f"snapshot {self} is not in a folder on this machine",
            hint="use its SnapshotLocation, or copy it to a local folder first",
        )


def _shared_files(location: SnapshotLocation) -> dict[str, str] | None:
    """The data files ``location``'s manifest keeps in the pool (path → pool name); None when
    the manifest cannot be read (its readers report why).  Entries with a malformed hash
    are left out: ``manifest.validate`` names them, and no name is made of them."""
    import json

    from ..snapshot import manifest as mf
    from .pool import blob_name

    try:
        m = json.loads(location.storage.read(location.key(mf.MANIFEST), mf.MAX_MANIFEST_BYTES))
        files = [f for t in m["tables"] for f in t["files"]] + mf.bucket_files(m)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return {
        f["path"]: blob_name(f["sha256"])
        for f in files
        if isinstance(f, dict)
        and f.get("shared") is True
        and isinstance(f.get("path"), str)
        and isinstance(f.get("sha256"), str)
        and re.fullmatch(r"[0-9a-f]{64}", f["sha256"])
    }


def locate(snapshot: str | os.PathLike[str] | SnapshotLocation) -> SnapshotLocation:
    """A snapshot argument (a folder path, an ``s3://`` URL, or a location already) as a ``SnapshotLocation``."""
    if isinstance(snapshot, SnapshotLocation):
        return snapshot
    text = os.fspath(snapshot)
    if scheme_of(text) == "s3":
        bucket, prefix = _s3(text, prefix_required=True)
        parent, _, sid = prefix.rpartition("/")
        return SnapshotLocation(_s3_storage(bucket, parent), sid)
    if scheme_of(text) not in (None, "file"):
        open_storage(text)  # raises the one-line "not supported" error
    path = Path(unquote(urlsplit(text).path)) if scheme_of(text) == "file" else Path(text)
    if path.name in ("", "..") or text.endswith(("/.", "/..")) or path == Path("."):
        path = Path(os.path.abspath(path))
    return SnapshotLocation(LocalStorage(path.parent), path.name)
