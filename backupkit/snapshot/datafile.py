"""Reading a snapshot's data files (zstd-compressed COPY output) without a database.

Kept free of psycopg so that ``backupkit verify`` starts fast.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from ..errors import SnapshotDamaged, SnapshotError
from ..storage.base import NotAPlainFile
from ..storage.local import LocalStorage
from ..storage.location import SnapshotLocation, locate
from . import encryption, formats
from . import manifest as mf
from .formats import DataFormat

BLOCK = 1 << 20


def iter_blocks(
    snapshot: mf.SnapshotArg, rel: str, expected_sha256: str | None = None, size: int = BLOCK
) -> Iterator[bytes]:
    """Yield the decompressed content of data file ``rel`` of a snapshot in blocks.

    With ``expected_sha256`` the stored bytes are hashed as they are read and
    a mismatch raises SnapshotDamaged after the last block, so a caller inside
    a transaction can roll back what it loaded.

    A snapshot ``encryption.unlock`` gave (one that carries identities) is
    decrypted after the stored bytes are hashed, then decompressed; an
    encrypted file read through any other location raises the ConfigError
    that says to pass ``identity`` (``encryption.locked``).
    """
    location = locate(snapshot)
    with mf.open_file(location, rel) as raw:
        yield from _decompressed(raw, rel, expected_sha256, size, location)


def iter_file_blocks(path: Path, expected_sha256: str | None = None, size: int = BLOCK) -> Iterator[bytes]:
    """``iter_blocks`` for a data file given by its path on this machine (never encrypted)."""
    path = Path(path)
    with LocalStorage(path.parent).open(path.name) as raw:
        yield from _decompressed(raw, path.name, expected_sha256, size)


class _Stored:
    """The stored bytes of a file as they are read, hashed; ``peek`` reads its start ahead."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.sha = hashlib.sha256()
        self._ahead = b""

    def _read(self, n: int) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data

    def peek(self, n: int) -> bytes:
        self._ahead += self._read(n - len(self._ahead))
        return self._ahead

    def read(self, n: int = -1) -> bytes:
        if not self._ahead:
            return self._read(n)
        if n is None or n < 0:
            data, self._ahead = self._ahead + self._read(-1), b""
        else:
            data, self._ahead = self._ahead[:n], self._ahead[n:]
        return data


def _decompressed(
    raw: BinaryIO, rel: str, expected_sha256: str | None, size: int, location: SnapshotLocation | None = None
) -> Iterator[bytes]:
    stored = _Stored(raw)
    identities = encryption.identities_of(location) if location is not None else None
    if identities is None and encryption.is_sealed(stored.peek(len(encryption.MAGIC))):
        raise encryption.locked(location)
    plain = encryption.open_plain(stored, identities, rel) if identities is not None else None
    try:
        source = cast(BinaryIO, plain if plain is not None else stored)
        reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
        while True:
            block = reader.read(size)
            if not block:
                break
            yield block
    except SnapshotDamaged:  # bytes that do not decrypt: changed since the manifest, or not ours
        if plain is not None:
            plain.close()  # the decrypting thread has ended: the rest of the stored bytes are ours to hash
        if expected_sha256 is not None and _rest_sha256(stored, size) != expected_sha256:
            raise _changed(rel) from None
        raise
    finally:
        if plain is not None:
            plain.close()
    if expected_sha256 is not None and _rest_sha256(stored, size) != expected_sha256:
        raise _changed(rel)


def _rest_sha256(stored: _Stored, size: int) -> str:
    """The SHA-256 of all the stored bytes: those not read yet are read now (any tail the
    decompressor did not need, or what a failed decryption left)."""
    while stored.read(size):
        pass
    return stored.sha.hexdigest()


def _changed(rel: str) -> SnapshotDamaged:
    name = rel.rsplit("/", 1)[-1]
    return SnapshotDamaged(
        f"{name} changed while it was being read (checksum mismatch)", [f"{name}: checksum mismatch"]
    )


def count_rows_in(snapshot: mf.SnapshotArg, rel: str, data_format: DataFormat = formats.DEFAULT) -> int:
    """Rows in data file ``rel`` of a snapshot, counted by decompressing it."""
    return data_format.count_rows(iter_blocks(snapshot, rel))


def count_rows(path: Path, data_format: DataFormat = formats.DEFAULT) -> int:
    """Rows in a data file on this machine, counted by decompressing it."""
    return data_format.count_rows(iter_file_blocks(path))


# -- checking the files a reader is about to read ------------------------------------------

#: Threads hashing files at once (hashlib releases the GIL, so they run in parallel).
HASH_THREADS = 4

#: Files found intact in this process: (storage, name, version, expected sha256).  A file
#: rewritten since (a new size, mtime or inode: a new ``Entry.version``) is hashed again.
_intact: set[tuple] = set()
_intact_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file on this machine, read in 1 MiB blocks."""
    path = Path(path)
    with LocalStorage(path.parent).open(path.name) as f:
        return stream_sha256(f)


def stream_sha256(f: BinaryIO) -> str:
    """Hex SHA-256 of what ``f`` reads, in 1 MiB blocks."""
    h = hashlib.sha256()
    while block := f.read(BLOCK):
        h.update(block)
    return h.hexdigest()


def data_path(folder: mf.SnapshotArg, entry: dict) -> Path:
    """The file a manifest entry names, as a path on this machine (in the snapshot's folder, or
    in its repository's pool when the file is shared: ``storage.pool``).

    Raises SnapshotDamaged when the entry's path is not a relative path to a regular
    file inside the snapshot (absolute, ``..``, a symlink, not a string), so that no
    reader follows a manifest out of its snapshot.  For tools that read files by
    path (DuckDB); the snapshot must be in a local folder.  An encrypted file (an age
    file: DuckDB cannot read it) raises the SnapshotError ``encryption.not_for_lens``.
    """
    location = locate(folder)
    rel = entry.get("path") if isinstance(entry, dict) else None
    why = mf.check_path(rel)
    if why or not isinstance(rel, str):
        raise _damaged(location, f"{rel!r} is not a plain relative path inside the snapshot")
    try:
        with mf.open_file(location, rel) as f:
            head = f.read(len(encryption.MAGIC))
    except SnapshotDamaged as exc:
        if exc.problems and exc.problems[0].startswith("missing file"):
            return _local(location, rel)  # reported by whoever opens it
        raise _damaged(location, f"{rel} is a symlink or leaves the snapshot") from None
    except OSError as exc:
        raise mf.unreadable(location.where(rel), exc) from None
    if encryption.is_sealed(head):  # DuckDB would read age bytes as a broken zstd file
        raise encryption.not_for_lens(location)
    return _local(location, rel)


def _local(location: SnapshotLocation, rel: str) -> Path:
    """Where file ``rel`` of a snapshot in a local folder is (in the repository's pool, when shared)."""
    root = location.path.parent  # StorageError unless the snapshot is in a folder on this machine
    return root.resolve() / location.stored(rel)


def _damaged(folder: mf.SnapshotArg, problem: str, problems: list[str] | None = None) -> SnapshotDamaged:
    location = locate(folder)
    return SnapshotDamaged(
        f"snapshot {location.name} is damaged: {problem}",
        problems or [problem],
        hint=f"run `backupkit verify {location}` for the full list",
    )


def _check_one(location: SnapshotLocation, entry: dict) -> str | None:
    """What is wrong with one data file (None when it matches its manifest entry)."""
    rel = entry.get("path") if isinstance(entry, dict) else None
    why = mf.check_path(rel)
    if why or not isinstance(rel, str):
        return f"{rel!r} is not a plain relative path inside the snapshot"
    expected, size = entry.get("sha256"), entry.get("bytes")
    if not isinstance(expected, str) or not isinstance(size, int) or isinstance(size, bool):
        return f"{rel}: manifest entry has no sha256/bytes"
    storage = location.storage
    try:
        found = storage.stat(location.stored(rel))
    except FileNotFoundError:
        return f"missing file {rel}"
    except NotAPlainFile:
        return f"{rel} is a symlink or leaves the snapshot"
    except OSError as exc:
        return f"{rel}: cannot be read ({exc.strerror or exc})"
    if found.kind == "link":
        return f"{rel} is a symlink or leaves the snapshot"
    if found.kind != "file":
        return f"{rel}: not a regular file"
    if found.size != size:
        return f"{rel}: {found.size} bytes, manifest says {size} (truncated or grown)"
    key = (storage, found.name, found.version, expected)
    with _intact_lock:
        if key in _intact:
            return None
    try:
        with mf.open_file(location, rel) as f:
            digest = stream_sha256(f)
    except SnapshotDamaged as exc:
        return exc.problems[0] if exc.problems else str(exc)
    except (OSError, SnapshotError) as exc:
        return f"{rel}: cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if digest != expected:
        return f"{rel}: checksum mismatch (the file's content changed)"
    with _intact_lock:
        _intact.add(key)
    return None


def check_files(folder: mf.SnapshotArg, entries: list[dict], *, threads: int = HASH_THREADS) -> None:
    """Raise SnapshotDamaged naming every data file of ``entries`` that does not match the manifest.

    Each file must be a regular file inside the snapshot (no symlink, no ``..``), of the
    manifest's size and SHA-256: a flipped byte, a file truncated (even at a zstd frame
    boundary, which DuckDB and zstd read as a shorter file without an error) and a
    missing file are all caught.  Sizes are checked before anything is hashed; files
    are hashed ``threads`` at a time.  A file found intact is remembered for the rest
    of the process by its storage, name and version (size, mtime, inode), so opening
    the same snapshot again hashes nothing; a file changed afterwards is hashed again.
    What is read after the check is trusted: a file changed in place between the
    check and a query is not caught (``verify`` before and after, if that can happen).
    """
    location = locate(folder)
    entries = list(entries)
    if len(entries) <= 1 or threads <= 1:
        found = [_check_one(location, e) for e in entries]
    else:
        with ThreadPoolExecutor(min(threads, len(entries)), thread_name_prefix="backupkit-sha") as pool:
            found = list(pool.map(lambda e: _check_one(location, e), entries))
    problems = [p for p in found if p]
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise _damaged(location, shown, problems)


def forget_checked() -> None:
    """Forget which files were found intact (the next check hashes them again)."""
    with _intact_lock:
        _intact.clear()
