"""A diff's first pass over a keyed table: rows matched by the bytes of their line.

COPY writes a row as one line whose text is a function of the row's values (in
CSV a value is quoted only when it has to be; the text format escapes the same
characters every time), so a line found byte for byte on both sides is a row
that did not change.  Matching whole lines is about half the work of splitting
every row into columns and joining on the key, because no column is parsed.
Only the lines without a twin, the few rows inserted, deleted or updated, are
then parsed and joined on the primary key (``diff_rows.TableComparison.whole``
over the leftover lines), which decides on the values themselves; that second step is
what makes the result exact, and the same as parsing everything.

A line is a row only when no value holds a newline: always so in a format
whose values escape theirs (``DataFormat.line_is_row``), not necessarily
otherwise (a CSV snapshot, written before 2026-12).  A file has exactly as many
lines as the manifest has rows exactly when that is so, since every newline
inside a value adds one.  Each pair checks this whatever the format (it also
catches a damaged file), and so does every other assumption (one column per
line, no line longer than the read buffer, no empty line, no file starting with
a byte order mark, which DuckDB would drop from its first line): when one fails,
``match_lines`` returns None and the caller parses columns.

The lines left over are written to the diff's scratch space (``storage.scratch``)
through the storage interface, in the table's own data format and suffix, and
read back by DuckDB like a snapshot's files (``datafile.data_path``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import TYPE_CHECKING

import duckdb
import zstandard

from ..snapshot import formats
from ..snapshot import manifest as mf
from ..snapshot.datafile import data_path
from ..storage.base import Storage
from .duck import literal, one_row, path_sql, reader_options, starts_with_bom

if TYPE_CHECKING:  # diff_rows imports this module
    from .diff_rows import Side, TableComparison

#: Chunk pairs a diff joins at once (diff_rows.DIFF_WORK_MEMORY is sized for two).
PAIRS_AT_ONCE = 2
#: Not a byte PostgreSQL writes inside a value often, and never as a delimiter: a line
#: holding it reads as two columns, which fails the read (strict mode) and the pass.
_DELIM = "\x01"
#: Leftover lines fetched from DuckDB at a time while writing them out.
_BATCH = 10_000


def run_pairs(con: duckdb.DuckDBPyConnection, pairs: int, run_pair: Callable[[int], int], limit: int) -> bool:
    """Run ``run_pair(0..pairs-1)``, PAIRS_AT_ONCE at a time; each returns the leftover rows it kept.

    Returns False, leaving pairs unrun, as soon as more than ``limit`` rows are left
    over.  One file is read by one DuckDB thread and a join reads its build side
    first, so two pairs run side by side on their own cursors to keep two CPUs busy.
    Meanwhile DuckDB's threads are shared out between the pairs: each query also runs
    on the thread that issued it, and more threads than CPUs made a diff 5% slower.
    """
    pending, leftovers = list(range(pairs)), 0
    running: set[Future[int]] = set()
    threads = one_row(con.execute("SELECT current_setting('threads')"))[0]
    con.execute(f"SET threads = {max(1, int(threads) // PAIRS_AT_ONCE)}")
    try:
        with ThreadPoolExecutor(PAIRS_AT_ONCE, thread_name_prefix="backupkit-diff") as pool:
            try:
                while pending or running:
                    while pending and len(running) < PAIRS_AT_ONCE and leftovers <= limit:
                        running.add(pool.submit(run_pair, pending.pop(0)))
                    if not running:
                        break
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    leftovers += sum(f.result() for f in done)
            except BaseException:
                for f in running:
                    f.cancel()
                raise
    finally:  # once no pair query runs any more
        con.execute(f"SET threads = {int(threads)}")
    return not pending


def _lines_sql(folder: mf.SnapshotArg, files: list[dict], i: int, line_size: int) -> str:
    """The i-th file's lines as one VARCHAR column ``l``, byte for byte (no rows past the end)."""
    if i >= len(files):
        return "(SELECT NULL::VARCHAR AS l, NULL::UBIGINT AS h WHERE false)"
    path = path_sql(data_path(folder, files[i]))  # exactly this file, never a pattern
    # No quote and no escape character: every byte of the line but its newline is kept.
    return (
        f"(SELECT l, hash(l) AS h FROM read_csv({path}, columns = {{'l': 'VARCHAR'}}, "
        f"delim = {literal(_DELIM)}, quote = '', escape = '', {reader_options(line_size)}))"
    )


def match_lines(table: TableComparison) -> tuple[Side, Side] | None:
    """Match a table's two sides' rows by line, file pair by file pair; write what found no twin
    to ``table.spill``.

    Every file of ``table.old`` and ``table.new`` has its ``rows``.  ``table.spill`` is a
    place in a scratch storage, where no file exists yet.  Returns the two sides of the
    leftover lines (one file per side in ``spill``, named with the table's format suffix
    and holding those lines exactly as the snapshot did), or None when lines are not rows
    here, a read failed, or more than ``table.max_leftover`` lines were left over (rows
    moved wholesale: the caller's own pairing copes better).
    """
    con, sides, spill = table.con, (table.old, table.new), table.spill
    if any("rows" not in f for f in table.old.files + table.new.files):
        return None  # an old manifest: lines cannot be checked against rows file by file
    if any(starts_with_bom(data_path(s.folder, f)) for s in sides for f in s.files):
        return None  # DuckDB drops a byte order mark that starts a file: its first line would lose it
    pairs = max(len(s.files) for s in sides)
    counts: dict[int, tuple[int, int]] = {}

    def run_pair(i: int) -> int:
        o, n = (_lines_sql(s.folder, s.files, i, table.line_size) for s in sides)
        # The right side of a join is its build side (see diff_rows.connect): the one with fewer rows.
        probe, build = (
            (f"{n} AS n", f"{o} AS o") if table.old.rows_in(i) <= table.new.rows_in(i) else (f"{o} AS o", f"{n} AS n")
        )
        with con.cursor() as cur:
            got = one_row(
                cur.execute(
                    "INSERT INTO bk_lines SELECT count(o.l), count(n.l), "
                    "list(o.l) FILTER (WHERE n.l IS NULL), list(n.l) FILTER (WHERE o.l IS NULL) "
                    f"FROM {probe} FULL JOIN {build} ON o.h = n.h AND o.l = n.l "
                    "RETURNING rows_o, rows_n, coalesce(len(only_o), 0) + coalesce(len(only_n), 0)"
                )
            )
        counts[i] = (got[0], got[1])
        return got[2]

    con.execute("CREATE OR REPLACE TABLE bk_lines (rows_o BIGINT, rows_n BIGINT, only_o VARCHAR[], only_n VARCHAR[])")
    try:
        try:
            if not run_pairs(con, pairs, run_pair, table.max_leftover):
                return None
        except duckdb.Error:
            return None  # a line of two columns, or too long: parse the columns instead
        expected = {i: (table.old.rows_in(i), table.new.rows_in(i)) for i in range(pairs)}
        if counts != expected:
            return None  # a value holds a newline (or a file is damaged: the checksums will say)
        left = []
        for s, (side, column) in enumerate(zip(sides, ("only_o", "only_n"), strict=True)):
            name = f"left-{s}{formats.of(side.table).suffix}"
            n = _write_lines(con, f"SELECT unnest({column}) FROM bk_lines", spill.storage, spill.key(name))
            files = [{"path": name, "rows": n}] if n else []
            left.append(replace(side, folder=spill, table={**side.table, "files": files}, rows=n))
        return left[0], left[1]
    finally:
        con.execute("DROP TABLE bk_lines")


def _write_lines(con: duckdb.DuckDBPyConnection, query: str, storage: Storage, name: str) -> int:
    """Write the strings ``query`` returns to new file ``name`` of ``storage`` as newline-ended
    lines, zstd-compressed; return how many.

    A first line that begins with U+FEFF is kept as it is: the readers (``duck.files_sql``)
    give a byte order mark at the start of a file back to the first row.
    """
    n = 0
    cur = con.execute(query)
    with storage.create(name) as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False) as out:
        while batch := cur.fetchmany(_BATCH):
            out.write(("\n".join(r[0] for r in batch) + "\n").encode())
            n += len(batch)
    return n
