"""A local copy of a snapshot kept elsewhere, for readers that need its files on this machine.

DuckDB reads files by path; a snapshot in an ``s3://`` repository is first copied,
verified, into a cache folder (``$BACKUPKIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/backupkit/snapshots``, else ``~/.cache/backupkit/snapshots``), one
folder per repository.  Only the snapshots asked for are fetched, never the whole
repository.  Snapshots are write-once, so a copy stays valid; delete the folder to free
the space.  A snapshot already on this machine is used where it is.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .local import LocalStorage
from .location import SnapshotLocation
from .repository import copy_snapshot


def cache_root() -> Path:
    """Where copies of remote snapshots are kept."""
    if os.environ.get("BACKUPKIT_CACHE_DIR"):
        return Path(os.environ["BACKUPKIT_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "backupkit" / "snapshots"


def _folder_of(where: str) -> str:
    """A folder name for a repository: readable, and unique by a hash of its URL."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", where.split("://", 1)[-1]).strip("-.")[:60]
    return f"{readable}-{hashlib.sha256(where.encode()).hexdigest()[:12]}"


def local_copy(location: SnapshotLocation) -> SnapshotLocation:
    """``location`` itself when it is on this machine; else its verified copy in the cache."""
    if isinstance(location.storage, LocalStorage):
        return location
    repository = LocalStorage(cache_root() / _folder_of(location.storage.where()), create=True)
    try:
        repository.stat(f"{location.id}/manifest.json")
        return SnapshotLocation(repository, location.id)
    except FileNotFoundError:
        return copy_snapshot(location, repository)
