"""Moving table data in blocks: COPY out to a zstd file, and zstd file back into COPY.

Data never sits whole in memory: rows are gathered into blocks of about
``BLOCK`` bytes, compressed and hashed as they go.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import psycopg
import psycopg.errors
import zstandard
from psycopg import pq, sql

from . import manifest as mf
from .datafile import BLOCK, iter_file_blocks

ZSTD_LEVEL = 1
#: What a backup writes (see manifest.TEXT).
DATA_FORMAT = mf.TEXT


def copy_options(data_format: str, *, freeze: bool = False) -> sql.Composable:
    """``(FORMAT ...)`` of a COPY in ``data_format``; ``freeze`` adds FREEZE (COPY FROM only)."""
    if data_format not in (mf.TEXT, mf.CSV):
        raise ValueError(f"unknown data format {data_format!r}")
    return sql.SQL("(FORMAT {}{})").format(sql.SQL(data_format), sql.SQL(", FREEZE" if freeze else ""))


@dataclass
class FileResult:
    """What was written: relative path, compressed bytes, SHA-256 of those bytes, rows,
    and the bytes of COPY text they hold (what a restore has to load)."""

    path: str
    bytes: int
    sha256: str
    rows: int
    text_bytes: int

    def to_dict(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256, "rows": self.rows,
                "text_bytes": self.text_bytes}


class _HashingFile:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def copy_source(table: dict, pages: tuple[int, int | None] | None = None) -> sql.Composed:
    """The COPY TO statement for a manifest table entry (generated columns left out), in DATA_FORMAT.

    ``pages`` = (lo, hi) limits it to a ctid range (hi None: to the end).
    """
    options = copy_options(DATA_FORMAT)
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


class _BlockWriter:
    """Compresses, hashes and writes blocks in its own thread.

    zstd and hashlib release the GIL, so compression overlaps with receiving
    the next rows; the bounded queue keeps memory at a few blocks per worker.
    """

    def __init__(self, dest: Path):
        self.dest = dest
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.size = 0
        self.text_bytes = 0
        self.sha256 = ""
        self.thread = threading.Thread(target=self._run, name=f"backupkit-zstd-{dest.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ended = False
        try:
            fd = os.open(self.dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as raw:
                hashed = _HashingFile(raw)
                zw = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(hashed, closefd=False)
                while (block := self.queue.get()) is not None:
                    zw.write(block)
                    self.text_bytes += len(block)
                ended = True
                zw.flush(zstandard.FLUSH_FRAME)
                zw.close()
                raw.flush()
                os.fsync(raw.fileno())
            self.size, self.sha256 = hashed.size, hashed.sha.hexdigest()
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self.error = exc
            # Drain so a blocked put() in the reader wakes up and sees the error; once
            # the end marker was taken there is nothing more to wait for.
            while not ended and self.queue.get() is not None:
                pass

    def put(self, block) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(block)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _receive(conn: psycopg.Connection, statement: sql.Composable, row_count: list[int]):
    """Yield blocks of a COPY TO STDOUT, about BLOCK bytes each; then append the row count to ``row_count``.

    Reads libpq's CopyData messages (one per row) directly: psycopg's row
    iterator costs about twice as much per row, and per-row cost is what
    bounds backup speed. Rows are appended to a bytearray rather than
    collected and joined, which halves what the loop costs per row; the row
    count comes from the server's command tag, not from counting in the loop.
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
    while True:
        nbytes, data = get(0)
        if nbytes <= 0:
            break
        buf += data
        if len(buf) >= BLOCK:
            yield buf
            buf = bytearray()  # the writer thread owns the yielded one now
    if nbytes == -2:
        raise psycopg.OperationalError(pg.error_message.decode(errors="replace"))
    res = pg.get_result()
    _drain(pg)
    if res is None or res.status != pq.ExecStatus.COMMAND_OK:
        raise _error(res, conn)
    yield buf
    row_count.append(res.command_tuples)


def _drain(pg) -> None:
    while pg.get_result() is not None:
        pass


def _error(res, conn: psycopg.Connection) -> psycopg.Error:
    if res is None:
        return psycopg.OperationalError(conn.pgconn.error_message.decode(errors="replace"))
    return psycopg.errors.error_from_result(res, encoding=conn.info.encoding)


def copy_out(conn: psycopg.Connection, statement: sql.Composable, dest: Path, folder: Path) -> FileResult:
    """Run a ``COPY ... TO STDOUT`` and stream it, zstd-compressed and hashed, into ``dest``."""
    rows: list[int] = []
    writer = _BlockWriter(dest)
    try:
        for block in _receive(conn, statement, rows):
            writer.put(block)
    finally:
        writer.close()
    return FileResult(str(dest.relative_to(folder)), writer.size, writer.sha256, rows[0], writer.text_bytes)


def copy_in(conn: psycopg.Connection, table: dict, folder: Path, files: list[dict] | None = None,
            *, freeze: bool = False) -> int:
    """Load a manifest table entry's data files (or just ``files``) with ``COPY ... FROM STDIN``.

    ``freeze`` loads the rows already frozen (``COPY FREEZE``), which PostgreSQL
    allows only into a table created or truncated in the same transaction.
    Returns the rows PostgreSQL reports loaded.
    """
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in table["copy_columns"])
    rel = sql.Identifier(table["schema"], table["name"])
    options = copy_options(mf.data_format(table), freeze=freeze)
    stmt = (sql.SQL("COPY {} ({}) FROM STDIN {}").format(rel, cols, options) if table["copy_columns"]
            else sql.SQL("COPY {} FROM STDIN {}").format(rel, options))
    with conn.cursor() as cur:
        with cur.copy(stmt) as copy:
            for f in table["files"] if files is None else files:
                for block in iter_file_blocks(folder / f["path"], f["sha256"]):
                    copy.write(block)
        return cur.rowcount
