"""Moving table data in blocks: COPY out to a zstd file, and zstd file back into COPY.

Data never sits whole in memory: rows are gathered into blocks of about
``BLOCK`` bytes, compressed and hashed as they go. Each block becomes one
zstd frame; a data file is the frames one after another, which ``zstd -d``,
DuckDB and python-zstandard (with ``read_across_frames=True``) read as one stream.
In an encrypted snapshot the frames are one age stream (``snapshot.encryption``),
decrypted by ``iter_blocks`` before they are decompressed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors
import xxhash
import zstandard
from psycopg import pq, sql

from ..snapshot import formats
from ..snapshot import manifest as mf
from ..snapshot.datafile import BLOCK, iter_blocks
from ..snapshot.encryption import encrypt_blocks
from ..snapshot.formats import DataFormat
from ..storage import pool
from ..storage.base import Storage

ZSTD_LEVEL = 1
#: Rows read between looks at the block's size, and the row size that ends a batch early.
_BATCH_ROWS = 64
_LARGE_ROW = 1 << 16
_COPY_IN_BLOCK = 128 << 10


#: How ``text_hash`` values begin: the hash function, then its hex digest.
TEXT_HASH = "xxh3-128:"


def text_hasher() -> Any:
    """A new hash of COPY text as ``text_hash`` records it (``TEXT_HASH`` + ``hexdigest()``)."""
    return xxhash.xxh3_128()


def copy_options(data_format: DataFormat, *, freeze: bool = False) -> sql.Composable:
    """``(FORMAT ...)`` of a COPY in ``data_format``; ``freeze`` adds FREEZE (COPY FROM only)."""
    return sql.SQL("(FORMAT {}{})").format(sql.SQL(data_format.name), sql.SQL(", FREEZE" if freeze else ""))


@dataclass
class FileResult:
    """What was written: relative path, stored bytes (compressed, and encrypted when the
    snapshot is), SHA-256 of those bytes, rows, and the bytes of COPY text they hold (what a
    restore has to load)."""

    path: str
    bytes: int
    sha256: str
    rows: int
    text_bytes: int
    #: ``xxh3-128:<hex>`` of the COPY text (``content_hash``): what a drill's restored rows must hash to.
    text_hash: str = ""
    #: Stored once in the repository's pool (``storage.pool``), not in the snapshot's folder.
    shared: bool = False
    #: Put into the pool by its writer already (``storage.pool.place``): ``added`` or ``present``.
    placed: str = ""

    def to_dict(self) -> dict:
        entry = {
            "path": self.path,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "rows": self.rows,
            "text_bytes": self.text_bytes,
        }
        if self.text_hash:
            entry["text_hash"] = self.text_hash
        if self.shared:
            entry["shared"] = True
        return entry


def copy_source(table: dict, pages: tuple[int, int | None] | None = None) -> sql.Composed:
    """The COPY TO statement for a manifest table entry (generated columns left out), in the format backups write.

    ``pages`` = (lo, hi) limits it to a ctid range (hi None: to the end).
    """
    options = copy_options(formats.WRITTEN)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in table["copy_columns"])
    rel = sql.Identifier(table["schema"], table["name"])
    if pages is None:
        if not table["copy_columns"]:  # a table of no (stored) columns: "()" is a syntax error
            return sql.SQL("COPY {} TO STDOUT {}").format(rel, options)
        return sql.SQL("COPY {} ({}) TO STDOUT {}").format(rel, cols, options)
    lo, hi = pages
    where = sql.SQL("ctid >= {}").format(sql.Literal(f"({lo},0)"))
    if hi is not None:
        where = sql.SQL("{} AND ctid < {}").format(where, sql.Literal(f"({hi},0)"))
    # ONLY: an inheritance parent's chunks must not pick up its children's rows.
    return sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT {}").format(cols, rel, where, options)


def _receive(conn: psycopg.Connection, statement: sql.Composable, row_count: list[int]):
    """Yield blocks of a COPY TO STDOUT, about BLOCK bytes each; then append the row count to ``row_count``.

    Reads libpq's CopyData messages (one per row) directly: psycopg's row
    iterator costs about twice as much per row, and per-row cost is what
    bounds backup speed. Rows are appended to a bytearray rather than
    collected and joined, and the block's size is looked at once per batch
    of rows, not per row; the row count comes from the server's command tag.
    """
    pg = conn.pgconn
    pg.send_query(statement.as_bytes(conn))  # raises OperationalError itself on failure
    while pg.flush():  # psycopg may leave the connection non-blocking
        pass
    res = pg.get_result()
    if res is None or res.status != pq.ExecStatus.COPY_OUT:
        _drain(pg)
        raise _error(res, conn)
    get = pg.get_copy_data
    buf = bytearray()
    batch, large = range(_BATCH_ROWS), _LARGE_ROW  # locals: this loop runs once per row
    while True:
        for _ in batch:
            nbytes, data = get(0)
            # A large row ends the batch too, so a block overshoots BLOCK by less
            # than _BATCH_ROWS small rows plus one row, whatever the rows' sizes.
            if not 0 < nbytes < large:
                break
            buf += data
        if nbytes <= 0:
            break
        if nbytes >= large:
            buf += data
        if len(buf) >= BLOCK:
            yield buf
            buf = bytearray()  # the caller may still hold the yielded one
    # get_copy_data raised on a broken stream (-2) itself; -1 is the normal end.
    res = pg.get_result()
    _drain(pg)
    if res is None or res.status != pq.ExecStatus.COMMAND_OK:
        raise _error(res, conn)
    if res.command_tuples is None:  # COPY's command tag always carries its row count
        raise psycopg.OperationalError("COPY ended without reporting how many rows it sent")
    yield buf
    row_count.append(res.command_tuples)


def _drain(pg) -> None:
    while pg.get_result() is not None:
        pass


def _error(res, conn: psycopg.Connection) -> psycopg.Error:
    if res is None:
        return psycopg.OperationalError(conn.pgconn.error_message.decode(errors="replace"))
    return psycopg.errors.error_from_result(res, encoding=conn.info.encoding)


def copy_out(
    conn: psycopg.Connection,
    statement: sql.Composable,
    storage: Storage,
    name: str,
    rel: str,
    recipients: Sequence[str] = (),
    *,
    pooled: bool = False,
) -> FileResult:
    """Run a ``COPY ... TO STDOUT`` and stream it, zstd-compressed and hashed, into the new file
    ``name`` of ``storage`` (durable when this returns); ``rel`` is its path inside the snapshot.

    With ``recipients`` (age public keys) the frames are encrypted to them on the way, as one
    age stream (``snapshot.encryption.encrypt_blocks``), and the size and SHA-256 are those
    of the encrypted bytes, the bytes stored.

    ``pooled``: the file is going into the repository's pool; where its writer can store it
    under its pool name directly (``storage.pool.place``), it does, and ``placed`` says so.

    Compression runs in this thread, between reads: a separate compressing
    thread costs more in hand-overs (GIL, queue) than it wins by overlapping,
    measured on two cores with one and with two jobs (benchmarks/RESULTS.md).
    Encryption too: pyrage pulls each frame as it needs it.
    The connection's lock is held throughout, as psycopg's own calls hold it, so
    no other thread (the backup's keep-alive) sends a query into the COPY.
    """
    rows: list[int] = []
    compress = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress
    text_bytes = 0
    text_hash = text_hasher()  # ~10 GB/s: the rows' own fingerprint at no noticeable cost

    def frames() -> Iterator[bytes]:
        nonlocal text_bytes
        for block in _receive(conn, statement, rows):
            # One frame per block: one-shot compression reads the block in place,
            # where a streaming compressor first copies it into its window.
            text_bytes += len(block)
            text_hash.update(block)
            yield compress(block)

    with storage.create(name) as out, conn.lock:
        if recipients:
            size, digest = encrypt_blocks(frames(), out, recipients)
        else:
            sha = hashlib.sha256()
            size = 0
            for frame in frames():
                sha.update(frame)
                size += len(frame)
                out.write(frame)
            digest = sha.hexdigest()
        if pooled:
            pool.place(out, digest)
    return FileResult(
        rel,
        size,
        digest,
        rows[0],
        text_bytes,
        TEXT_HASH + text_hash.hexdigest(),
        placed=pool.placed(out),
    )


def copy_in(
    conn: psycopg.Connection,
    table: dict,
    snapshot: mf.SnapshotArg,
    files: list[dict] | None = None,
    *,
    freeze: bool = False,
) -> int:
    """Load a manifest table entry's data files (or just ``files``) with ``COPY ... FROM STDIN``.

    ``freeze`` loads the rows already frozen (``COPY FREEZE``), which PostgreSQL
    allows only into a table created or truncated in the same transaction.
    Returns the rows PostgreSQL reports loaded.
    """
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in table["copy_columns"])
    rel = sql.Identifier(table["schema"], table["name"])
    options = copy_options(formats.of(table), freeze=freeze)
    stmt = (
        sql.SQL("COPY {} ({}) FROM STDIN {}").format(rel, cols, options)
        if table["copy_columns"]
        else sql.SQL("COPY {} FROM STDIN {}").format(rel, options)
    )
    with conn.cursor() as cur:
        with cur.copy(stmt) as copy:
            for f in table["files"] if files is None else files:
                # Blocks of psycopg's largest single write: a larger one it would copy into slices.
                for block in iter_blocks(snapshot, f["path"], f["sha256"], _COPY_IN_BLOCK):
                    copy.write(block)
        return cur.rowcount
