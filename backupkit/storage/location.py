"""Which storage a repository or snapshot argument names, and a snapshot's place in one.

Commands take a folder path (``backups``), a ``file://`` URL, or a ``Storage``
object; a snapshot is a folder path (``backups/20261204T…Z``) or a
``SnapshotLocation`` (a storage and an id).  Other URL schemes are refused with
one clear line rather than taken for a local folder named ``s3:``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError, StorageError
from .base import Storage
from .local import LocalStorage

#: URL schemes a repository may be given as.
SCHEMES = ("file",)


def _scheme(text: str) -> str | None:
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isidentifier() else None


def open_storage(where: str | os.PathLike[str] | Storage, *, create: bool = False) -> Storage:
    """The storage a repository argument names; ``create`` makes a missing local folder (``0700``)."""
    if isinstance(where, Storage):
        return where
    text = os.fspath(where)
    scheme = _scheme(text)
    if scheme is None:
        path = Path(text)
    elif scheme == "file":
        path = Path(unquote(urlsplit(text).path))
    else:
        raise ConfigError(
            f"{scheme}:// repositories are not supported by this version of backupkit",
            hint="give a local folder (or a file:// URL)",
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
        """File ``rel`` of this snapshot as people should see it in a message."""
        return self.storage.where(self.key(rel))

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


def locate(snapshot: str | os.PathLike[str] | SnapshotLocation) -> SnapshotLocation:
    """A snapshot argument (a folder path, or a location already) as a ``SnapshotLocation``."""
    if isinstance(snapshot, SnapshotLocation):
        return snapshot
    text = os.fspath(snapshot)
    if _scheme(text) not in (None, "file"):
        open_storage(text)  # raises the one-line "not supported" error
    path = Path(unquote(urlsplit(text).path)) if _scheme(text) == "file" else Path(text)
    if path.name in ("", "..") or text.endswith(("/.", "/..")) or path == Path("."):
        path = Path(os.path.abspath(path))
    return SnapshotLocation(LocalStorage(path.parent), path.name)
