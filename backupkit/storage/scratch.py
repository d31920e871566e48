"""Scratch space: a private temporary folder, as a ``LocalStorage``, removed when done.

Intermediate files that are never a snapshot live here: the diff's leftover lines,
pg_dump's output before it is uploaded into the snapshot, a schema list for
pg_restore.  Going through ``Storage`` keeps the same guarantees as a repository
(``0700`` folder, ``0600`` files, no links followed); ``path(name)`` hands a file to
a tool that needs a path (DuckDB, pg_dump, pg_restore).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .local import LocalStorage


@contextlib.contextmanager
def scratch(prefix: str = "backupkit-", *, near: Path | None = None) -> Iterator[LocalStorage]:
    """A new private temporary folder, removed with everything in it when the block ends.

    ``near`` puts it inside that folder instead of the system's temporary directory (so a
    rename into a snapshot stays on one file system, or a big spill lands where there is room).
    """
    root = tempfile.mkdtemp(prefix=prefix, dir=near)  # mkdtemp makes it 0700
    try:
        yield LocalStorage(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def folder(storage: LocalStorage, name: str) -> Path:
    """Make the sub-folder ``name`` of a scratch space (``0700``) and return its path, for a tool
    that writes a folder of files itself (``pg_dump -Fd``)."""
    path = storage.path(name)
    path.mkdir(mode=0o700)
    return path
