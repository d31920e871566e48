"""Reading a snapshot's data files (zstd-compressed COPY output) without a database.

Kept free of psycopg so that ``backupkit verify`` starts fast.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zstandard

from ..errors import SnapshotDamaged
from . import manifest as mf

BLOCK = 1 << 20


def iter_file_blocks(path: Path, expected_sha256: str | None = None, size: int = BLOCK):
    """Yield the decompressed content of a data file in blocks.

    With ``expected_sha256`` the compressed bytes are hashed as they are read and
    a mismatch raises SnapshotDamaged after the last block, so a caller inside
    a transaction can roll back what it loaded.
    """
    sha = hashlib.sha256()
    with open(path, "rb") as raw:

        class _Hashing:
            def read(self, n: int = -1) -> bytes:
                data = raw.read(n)
                sha.update(data)
                return data

        reader = zstandard.ZstdDecompressor().stream_reader(_Hashing(), read_across_frames=True)
        while True:
            block = reader.read(size)
            if not block:
                break
            yield block
        # Hash any tail the decompressor did not need to read.
        while raw_tail := raw.read(size):
            sha.update(raw_tail)
    if expected_sha256 is not None and sha.hexdigest() != expected_sha256:
        raise SnapshotDamaged(f"{path.name} changed while it was being read (checksum mismatch)",
                              [f"{path.name}: checksum mismatch"])


def count_rows(path: Path, data_format: str = mf.CSV) -> int:
    """Rows in a data file, counted by decompressing it.

    COPY's text format escapes a newline inside a value, so every newline ends a
    row; in CSV only those outside quotes do.
    """
    if data_format == mf.TEXT:
        return sum(block.count(b"\n") for block in iter_file_blocks(path))
    rows = 0
    in_quotes = False
    for block in iter_file_blocks(path):
        # A newline ends a row only outside quotes; "" inside quotes toggles twice, harmlessly.
        if b'"' not in block and not in_quotes:
            rows += block.count(b"\n")
            continue
        for part_no, part in enumerate(block.split(b'"')):
            if part_no:
                in_quotes = not in_quotes
            if not in_quotes:
                rows += part.count(b"\n")
    return rows


# -- checking the files a reader is about to read ------------------------------------------

#: Threads hashing files at once (hashlib releases the GIL, so they run in parallel).
HASH_THREADS = 4

#: Files found intact in this process: (real path, size, mtime_ns, inode, expected sha256).
#: A file rewritten since (new size, mtime or inode) is hashed again.
_intact: set[tuple] = set()
_intact_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def data_path(folder: Path, entry: dict) -> Path:
    """The file a manifest entry names, as a resolved path inside ``folder``.

    Raises SnapshotDamaged when the entry's path is not a relative path to a regular
    file inside the snapshot (absolute, ``..``, a symlink, not a string), so that no
    reader follows a manifest out of its snapshot.
    """
    rel = entry.get("path") if isinstance(entry, dict) else None
    root = Path(folder).resolve()
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel \
            or any(part in ("", ".", "..") for part in rel.split("/")):
        raise _damaged(folder, f"{rel!r} is not a plain relative path inside the snapshot")
    path = root / rel
    # No component may be a symlink: resolve() must not move the path.
    if path.resolve() != path:
        raise _damaged(folder, f"{rel} is a symlink or leaves the snapshot")
    return path


def _damaged(folder: Path, problem: str, problems: list[str] | None = None) -> SnapshotDamaged:
    return SnapshotDamaged(f"snapshot {Path(folder).name} is damaged: {problem}", problems or [problem],
                           hint=f"run `backupkit verify {folder}` for the full list")


def _check_one(folder: Path, entry: dict) -> str | None:
    """What is wrong with one data file (None when it matches its manifest entry)."""
    try:
        path = data_path(folder, entry)
    except SnapshotDamaged as exc:
        return exc.problems[0]
    rel = entry["path"]
    expected, size = entry.get("sha256"), entry.get("bytes")
    if not isinstance(expected, str) or not isinstance(size, int) or isinstance(size, bool):
        return f"{rel}: manifest entry has no sha256/bytes"
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return f"missing file {rel}"
    except OSError as exc:
        return f"{rel}: cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return f"{rel}: not a regular file"
    if st.st_size != size:
        return f"{rel}: {st.st_size} bytes, manifest says {size} (truncated or grown)"
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, expected)
    with _intact_lock:
        if key in _intact:
            return None
    try:
        digest = file_sha256(path)
    except OSError as exc:
        return f"{rel}: cannot be read ({exc.strerror or exc})"
    if digest != expected:
        return f"{rel}: checksum mismatch (the file's content changed)"
    with _intact_lock:
        _intact.add(key)
    return None


def check_files(folder: Path | str, entries: list[dict], *, threads: int = HASH_THREADS) -> None:
    """Raise SnapshotDamaged naming every data file of ``entries`` that does not match the manifest.

    Each file must be a regular file inside ``folder`` (no symlink, no ``..``), of the
    manifest's size and SHA-256: a flipped byte, a file truncated (even at a zstd frame
    boundary, which DuckDB and zstd read as a shorter file without an error) and a
    missing file are all caught.  Sizes are checked before anything is hashed; files
    are hashed ``threads`` at a time.  A file found intact is remembered for the rest
    of the process by path, size, mtime and inode, so opening the same snapshot again
    hashes nothing; a file changed afterwards (new mtime or size) is hashed again.
    What is read after the check is trusted: a file changed in place between the
    check and a query is not caught (``verify`` before and after, if that can happen).
    """
    folder = Path(folder)
    entries = list(entries)
    if len(entries) <= 1 or threads <= 1:
        found = [_check_one(folder, e) for e in entries]
    else:
        with ThreadPoolExecutor(min(threads, len(entries)), thread_name_prefix="backupkit-sha") as pool:
            found = list(pool.map(lambda e: _check_one(folder, e), entries))
    problems = [p for p in found if p]
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise _damaged(folder, shown, problems)


def forget_checked() -> None:
    """Forget which files were found intact (the next check hashes them again)."""
    with _intact_lock:
        _intact.clear()
