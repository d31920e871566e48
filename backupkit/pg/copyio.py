"""Moving table data in blocks: COPY out to a zstd file, and zstd file back into COPY.

Data never sits whole in memory: rows are gathered into blocks of about
``BLOCK`` bytes, compressed and hashed as they go. Each block becomes one
zstd frame; a data file is the frames one after another, which ``zstd -d``,
DuckDB and python-zstandard (with ``read_across_frames=True``) read as one stream.
In an encrypted snapshot the frames are one age stream (``snapshot.encryption``),
decrypted by ``iter_blocks`` before they are decompressed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import select
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

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


@dataclass(frozen=True)
class FileCuts:
    """Where one COPY's stream is cut into data files: content-defined, at row ends.

    A file takes at least ``min_bytes`` of COPY text; after that, it ends after the first
    row whose hash falls under a threshold proportional to the row's length (on average
    one cut per ``mean_gap_bytes`` of text, whatever the rows' widths), or at ``max_bytes``.
    The cut depends on the rows themselves, not on where the stream began, so rows added,
    changed or removed early in a chunk move its later cuts only until the next
    qualifying row: the files after it are byte-identical to yesterday's and dedup
    stores them once (``storage.pool``).  Cutting inside one COPY costs a file, not a
    statement: a COPY per small file costs the server milliseconds each (benchmarks/RESULTS.md).
    """

    min_bytes: int = 4 << 20
    mean_gap_bytes: int = 2 << 20
    max_bytes: int = 32 << 20

    @property
    def per_byte(self) -> int:
        """A row of ``n`` bytes ends a file when its 64-bit hash is below ``n * per_byte``."""
        return (1 << 64) // self.mean_gap_bytes


#: How backups cut their COPY streams into data files.
FILE_CUTS = FileCuts()


#: How ``text_hash`` values begin: the hash function, then its hex digest.
TEXT_HASH = "xxh3-128:"


def text_hasher() -> Any:
    """A new hash of COPY text as ``text_hash`` records it (``TEXT_HASH`` + ``hexdigest()``)."""
    return xxhash.xxh3_128()


def copy_options(data_format: DataFormat, *, freeze: bool = False) -> sql.Composable:
    """``(FORMAT ..., ENCODING 'UTF8')`` of a COPY in ``data_format``; ``freeze`` adds FREEZE
    (COPY FROM only).

    Data files hold UTF-8, whatever the database's encoding.  Said in the COPY itself, not
    left to the session's ``client_encoding``: a schema script rendered by pg_restore sets
    that to the source's encoding (``SET client_encoding = 'LATIN1'``), and a COPY after it
    on the same connection would read UTF-8 bytes as LATIN1.
    """
    return sql.SQL("(FORMAT {}, ENCODING 'UTF8'{})").format(
        sql.SQL(data_format.name), sql.SQL(", FREEZE" if freeze else "")
    )


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


def _receive(conn: psycopg.Connection, statement: sql.Composable, row_count: list[int], cuts: FileCuts | None = None):
    """Yield ``(block, rows, ends_file)`` for a COPY TO STDOUT: blocks of about BLOCK bytes of
    whole rows, and how many; before the last block (``ends_file`` True), append the server's
    row count to ``row_count``.

    ``cuts``: also end a file at the rows ``FileCuts`` chooses; None: the stream is one file.

    Reads libpq's CopyData messages (one per row) directly: psycopg's row
    iterator costs about twice as much per row, and per-row cost is what
    bounds backup speed. Rows are appended to a bytearray rather than
    collected and joined, and the block's size is looked at once per batch
    of rows, not per row; the row count comes from the server's command tag.
    Rows are hashed only while a cut is being looked for (from ``min_bytes``
    of a file to its cut): with the default ``FileCuts`` about a third of the stream,
    which is where backup's 0.48x -> 0.50x of pg_dump -Fd -j2 went (benchmarks/RESULTS.md).
    """
    pg = conn.pgconn
    pg.send_query(statement.as_bytes(conn))  # raises OperationalError itself on failure
    while pg.flush():  # psycopg may leave the connection non-blocking
        pass
    server = _Server(pg)
    res = server.result()
    if res is None or res.status != pq.ExecStatus.COPY_OUT:
        server.drain()
        raise _error(res, conn)
    get, row_hash = pg.get_copy_data, xxhash.xxh3_64_intdigest
    low, high, per_byte = (cuts.min_bytes, cuts.max_bytes, cuts.per_byte) if cuts else (-1, -1, 0)
    buf = bytearray()
    before = 0  # text of the current file in blocks already yielded
    batch, large = range(_BATCH_ROWS), _LARGE_ROW  # locals: this loop runs once per row
    rows = 0  # in buf
    while True:
        cut = False
        if cuts is None or before + len(buf) < low:
            for i in batch:  # noqa: B007 (i: the rows this batch appended, read after the loop)
                nbytes, data = get(1)
                # A large row ends the batch too, so a block overshoots BLOCK by less
                # than _BATCH_ROWS small rows plus one row, whatever the rows' sizes.
                if not 0 < nbytes < large:
                    if nbytes == 0:  # none received yet: wait for it, in the same batch
                        # (batches, hence cuts, must not depend on when rows arrive)
                        nbytes, data = server.copy_data()
                        if 0 < nbytes < large:
                            buf += data
                            continue
                    break
                buf += data
            else:
                i = _BATCH_ROWS
            rows += i  # counted per batch, not per row: no cost in the loop
            if nbytes < 0:
                break
            if nbytes >= large:
                buf += data
                rows += 1
        else:  # looking for a cut: every row is weighed
            for _ in batch:
                nbytes, data = get(1)
                if nbytes <= 0:
                    if nbytes < 0:
                        break
                    nbytes, data = server.copy_data()
                    if nbytes < 0:
                        break
                buf += data
                rows += 1
                if row_hash(data) < nbytes * per_byte:
                    cut = True
                    break
            if nbytes < 0:
                break
            cut = cut or before + len(buf) >= high
        if cut:
            yield buf, rows, True
            buf, before, rows = bytearray(), 0, 0
        elif len(buf) >= BLOCK:
            before += len(buf)
            yield buf, rows, False
            buf, rows = bytearray(), 0  # the caller may still hold the yielded one
    # get_copy_data raised on a broken stream (-2) itself; -1 is the normal end.
    res = server.result()
    server.drain()
    if res is None or res.status != pq.ExecStatus.COMMAND_OK:
        raise _error(res, conn)
    if res.command_tuples is None:  # COPY's command tag always carries its row count
        raise psycopg.OperationalError("COPY ended without reporting how many rows it sent")
    row_count.append(res.command_tuples)
    yield buf, rows, True


class _Server:
    """Waits for what the server sends on ``pg``, with the GIL released.

    psycopg's ``get_result`` and blocking ``get_copy_data(0)`` wait inside libpq holding
    the GIL: while a COPY waited for the server (a lock, a slow network) no other thread
    of the process ran, not the watchdog, not the keep-alive, and no signal handler, so
    Ctrl-C and SIGTERM went unanswered.  Here libpq is only asked for what it has already
    received, and the waiting is a ``poll`` of its socket, as psycopg itself does.
    """

    def __init__(self, pg: Any):
        self.pg = pg
        self.poller = select.poll()
        self.poller.register(pg.socket, select.POLLIN)

    def _wait_readable(self) -> None:
        self.poller.poll()  # readable, or an error or hang-up that consume_input reports
        self.pg.consume_input()

    def copy_data(self) -> tuple[int, Any]:
        """``get_copy_data`` once there is a row, the end (-1) or an error (raised)."""
        pg = self.pg
        pg.consume_input()  # what the kernel has already: most often a row, without a poll
        while (got := pg.get_copy_data(1))[0] == 0:
            self._wait_readable()
        return got

    def result(self) -> Any:
        """``get_result`` once it would not wait.  ``is_busy`` first, as psycopg's own fetch:
        a result already received (the server's reason for ending the session) is returned
        before the closed socket is read."""
        pg = self.pg
        while pg.is_busy():
            self._wait_readable()
        return pg.get_result()

    def drain(self) -> None:
        """Read the results left until the connection is idle; one the server has closed
        (after the error being reported) has none left to read."""
        with contextlib.suppress(psycopg.OperationalError):
            while self.result() is not None:
                pass


def _error(res, conn: psycopg.Connection) -> psycopg.Error:
    if res is None:
        return psycopg.OperationalError(conn.pgconn.error_message.decode(errors="replace"))
    return psycopg.errors.error_from_result(res, encoding=conn.info.encoding)


def part_path(path: str, part: int) -> str:
    """The name of part ``part`` of the data file ``path`` cut from one COPY: part 0 keeps
    ``path``, the next ones put ``.001``, ``.002``... before the data format's suffix."""
    if part == 0:
        return path
    suffix = formats.WRITTEN.suffix
    if not path.endswith(suffix):
        raise ValueError(f"{path}: a data file's name ends in {suffix}")
    return f"{path[: -len(suffix)]}.{part:03d}{suffix}"


#: Files of one COPY being closed while the next is written, and the stored bytes they may
#: hold together: a writer keeps what it has not sent yet (on S3 up to a part, 8 MiB, plus
#: the parts still going up), so a file of more than the budget waits alone.  Enough for a
#: stream to keep going while the storage confirms the files before it, in bounded memory.
CLOSES_IN_FLIGHT = 4
CLOSING_BYTES = 8 << 20

#: What ``_receive`` yields: a block of whole rows, how many, and whether it ends a file.
_Block = tuple[bytearray, int, bool]


@dataclass
class _Part:
    """The file of a COPY being written now: its COPY text so far (size, rows, hash)."""

    text_bytes: int = 0
    rows: int = 0
    text_hash: Any = field(default_factory=text_hasher)


def copy_out(
    conn: psycopg.Connection,
    statement: sql.Composable,
    storage: Storage,
    name: str,
    rel: str,
    recipients: Sequence[str] = (),
    *,
    pooled: bool = False,
    cuts: FileCuts | None = None,
) -> list[FileResult]:
    """Run a ``COPY ... TO STDOUT`` and stream it, zstd-compressed and hashed, into the new file
    ``name`` of ``storage`` (durable when this returns); ``rel`` is its path inside the snapshot.
    With ``cuts`` the stream is cut into several files at the rows ``FileCuts`` chooses, named
    by ``part_path``; the files in order.

    With ``recipients`` (age public keys) the frames are encrypted to them on the way, as one
    age stream per file (``snapshot.encryption.encrypt_blocks``), and the size and SHA-256 are
    those of the encrypted bytes, the bytes stored.

    ``pooled``: the files are going into the repository's pool; where its writer can store one
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

    def frames(first: _Block, rest: Iterator[_Block], part: _Part) -> Iterator[bytes]:
        for block, block_rows, ends in itertools.chain([first], rest):
            # One frame per block: one-shot compression reads the block in place,
            # where a streaming compressor first copies it into its window.
            part.text_bytes += len(block)
            part.rows += block_rows
            part.text_hash.update(block)  # ~10 GB/s: the rows' own fingerprint at no noticeable cost
            yield compress(block)
            if ends:
                return

    # A close waits for the storage (an fsync; on S3 the upload's last request, a round
    # trip or more); the stream does not: files are closed by threads of their own while
    # the next ones are written, a few at a time (``CLOSES_IN_FLIGHT``, ``CLOSING_BYTES``).
    closing: list[tuple[Future[None], BinaryIO, FileResult]] = []
    confirmed = 0  # closing[:confirmed] are known to be kept
    with conn.lock, ThreadPoolExecutor(CLOSES_IN_FLIGHT, thread_name_prefix="backupkit-close") as closer:
        stream = _receive(conn, statement, rows, cuts)
        for n in itertools.count():
            first = next(stream)
            if n and rows and not first[0]:  # the stream ended right at a cut: no empty file
                break
            part = _Part()
            out = storage.create(part_path(name, n))
            try:
                size, digest = _write(frames(first, stream, part), out, recipients)
                if pooled:
                    pool.place(out, digest)
                # Raises when a file could not be kept; waits while too much is being closed.
                while confirmed < len(closing) and (
                    closing[confirmed][0].done()
                    or len(closing) - confirmed >= CLOSES_IN_FLIGHT
                    or size + sum(f.bytes for _, _, f in closing[confirmed:]) > CLOSING_BYTES
                ):
                    closing[confirmed][0].result()
                    confirmed += 1
                done = FileResult(
                    part_path(rel, n), size, digest, part.rows, part.text_bytes, TEXT_HASH + part.text_hash.hexdigest()
                )
                close = closer.submit(out.close)  # last: from here the closing thread owns the writer
            except BaseException:
                out.__exit__(*sys.exc_info())  # the writer's protocol: leaving by an error keeps nothing
                raise
            closing.append((close, out, done))
            if rows:
                break
        for close, _, _ in closing:
            close.result()
    results = [dataclasses.replace(done, placed=pool.placed(out)) for _, out, done in closing]
    if sum(r.rows for r in results) != rows[0]:
        raise psycopg.OperationalError(f"COPY reported {rows[0]} rows but sent {sum(r.rows for r in results)}")
    return results


def _write(frames: Iterator[bytes], out: BinaryIO, recipients: Sequence[str]) -> tuple[int, str]:
    """Write ``frames`` to ``out``, encrypted to ``recipients`` when there are any: stored size and SHA-256."""
    if recipients:
        return encrypt_blocks(frames, out, recipients)
    sha = hashlib.sha256()
    size = 0
    for frame in frames:
        sha.update(frame)
        size += len(frame)
        out.write(frame)
    return size, sha.hexdigest()


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
