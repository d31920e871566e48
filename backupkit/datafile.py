"""Reading a snapshot's data files (zstd-compressed COPY output) without a database.

Kept free of psycopg so that ``backupkit verify`` starts fast.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import zstandard

from . import manifest as mf
from .errors import SnapshotDamaged

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
