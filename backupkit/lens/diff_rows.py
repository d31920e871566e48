"""One table's rows compared between two snapshots, with DuckDB.

Rows are compared on PostgreSQL's exact text (``duck.files_sql``, every column
VARCHAR), so "changed" means "PostgreSQL would print it differently": NULL and
the empty string differ, 1.50 and 1.5 in an unconstrained numeric differ.

* A table with the same primary key in both snapshots is joined on that key,
  chunk file against same-numbered chunk file, then what did not match there in
  one last join; a row counts as updated when any of its other columns (those
  present in both snapshots) differs.  Values are compared themselves, not hashed.
  When both snapshots store the same columns in the same data format, rows are
  first matched by their whole line (``diff_lines``), and only the lines left over
  are parsed and joined on the key: unchanged rows are never split into columns.
* A table without a primary key, or whose key changed, is compared as a
  multiset: rows added and removed, duplicates counted; ``updated`` is None.

Every side is read once, on every CPU, under a memory limit: a join larger
than ``DIFF_WORK_MEMORY`` spills to a private scratch folder (``storage.scratch``,
removed at the end, which also holds the line pass's leftovers) instead of growing the
process, and joining chunk by chunk keeps joins the size of a chunk, not of
the table.  The rows DuckDB read are checked against the manifests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace

import duckdb

from ..errors import SnapshotDamaged
from ..snapshot import formats
from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation
from .diff_lines import run_pairs
from .duck import MAX_LINE_SIZE, columns_sql, duck_connection, files_sql, literal, one_row, read_buffer

#: Longest row a diff first reads a table with.  DuckDB reserves a read buffer a
#: little larger than this for every file being read and counts it against the
#: memory limit, so the usual rows are read with small buffers; a table with a
#: longer row fails that attempt and is read again with ``duck.MAX_LINE_SIZE``.
DIFF_LINE_SIZE = 8 << 20
#: DuckDB memory for a diff's joins and aggregates, beyond its read buffers: two
#: chunk joins of 64 MB chunks at once fit; more spills to a temporary folder.
DIFF_WORK_MEMORY = 384 << 20


@dataclass(frozen=True)
class Side:
    """One snapshot's half of a table comparison: where, what to read, how many rows."""

    #: The snapshot, or the diff's scratch space for the line pass's leftovers.
    folder: mf.SnapshotArg
    #: The manifest's table entry, with only the files to read.
    table: dict
    #: The rows those files hold, by the manifests.
    rows: int

    @property
    def files(self) -> list[dict]:
        """The files to read, in chunk order."""
        return self.table["files"]

    def rows_in(self, i: int) -> int:
        """Rows of the i-th file to read: 0 past the end, or when the manifest lacks them."""
        return self.files[i].get("rows", 0) if i < len(self.files) else 0


#: The line pass of a keyed table (``diff_lines.match_lines``): the two sides' leftover
#: lines, or None when lines cannot stand for rows here.
LinePass = Callable[["TableComparison"], tuple[Side, Side] | None]


def _threads() -> int:
    """CPUs this process may run on (DuckDB's default counts the machine's, ignoring affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def connect(spill: str) -> duckdb.DuckDBPyConnection:
    """A connection for diffs: every CPU, bounded memory, spilling to ``spill``."""
    con = duck_connection()
    con.execute(f"SET threads = {_threads()}")
    # Nothing a diff returns depends on row order; keeping it costs memory in scans.
    con.execute("SET preserve_insertion_order = false")
    # A hash join builds on its right side, as written: TableComparison puts the side with
    # fewer rows (it knows them from the manifests) there, whatever DuckDB estimates.
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    # The bar goes to stdout, which holds the report with --json.
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET temp_directory = {literal(spill)}")
    _limit_memory(con, DIFF_LINE_SIZE, DIFF_WORK_MEMORY)
    return con


def _limit_memory(con: duckdb.DuckDBPyConnection, line_size: int, work: int | None) -> None:
    """``work`` bytes plus four read buffers of ``line_size`` per thread; ``work=None``: DuckDB's default."""
    if work is None:
        con.execute("RESET memory_limit")
        return
    limit = work + 4 * _threads() * read_buffer(line_size)
    con.execute(f"SET memory_limit = '{limit >> 20}MiB'")


def _row_hash(refs: list[str]) -> str:
    """MD5 (128 bits) of text columns, each length-prefixed so (NULL, '', 'a,b') never collide.

    ``concat`` skips NULLs, so a value encodes as ``<bytes>:<text>`` and NULL as a bare
    ``:`` (no digits): reading the encoding left to right gives the columns back, so
    different rows give different MD5 input.  One ``concat`` call builds it in one go.
    """
    if not refs:
        return "md5_number('')"
    return "md5_number(concat(" + ", ".join(f"strlen({r}), ':', {r}" for r in refs) + "))"


def _wait(checks: list[Future]) -> None:
    for c in checks:
        c.result()  # raises SnapshotDamaged


@dataclass(frozen=True)
class TableComparison:
    """The row-level comparison of one table present in both snapshots."""

    con: duckdb.DuckDBPyConnection
    old: Side
    new: Side
    #: The stored columns both snapshots have, in the old order.
    common: list[str]
    #: The primary key, when the table is compared by it; empty: compared as a multiset.
    pk: list[str]
    #: How many updates to show (``diff_snapshots(sample=)``).
    sample: int
    #: A place in the diff's scratch storage, with no file yet, for the line pass's leftovers.
    spill: SnapshotLocation
    #: Leftover rows held in memory before chunk pairing gives up (``diff.MAX_LEFTOVER_ROWS``).
    max_leftover: int
    #: ``diff_lines.match_lines``, handed in by ``diff`` as it names it (so it can be swapped there).
    line_pass: LinePass
    #: The longest row the files are read with (the size of DuckDB's read buffers).
    line_size: int = DIFF_LINE_SIZE

    @property
    def rest(self) -> list[str]:
        """The compared columns outside the key."""
        return [c for c in self.common if c not in self.pk]

    @property
    def columns(self) -> list[str]:
        """The columns a keyed table is compared on, key first: x0.. in its SQL."""
        return self.pk + self.rest

    @property
    def picks(self) -> int:
        """How many changed keys to show: with only key columns a row cannot be updated."""
        return max(int(self.sample), 0) if self.rest else 0

    def _match_sql(self) -> tuple[str, str, str]:
        """SQL over ``o`` and ``n`` (the columns as x0.., key first, file number f): the join
        condition, "matched and some other column differs", and the changed row's key with
        its old and new file numbers."""
        n, width = len(self.pk), len(self.columns)
        on = " AND ".join(f"o.x{j} = n.x{j}" for j in range(n))
        differ = " OR ".join(f"o.x{j} IS DISTINCT FROM n.x{j}" for j in range(n, width)) or "false"
        both = f"o.x0 IS NOT NULL AND n.x0 IS NOT NULL AND ({differ})"  # key columns are NOT NULL
        keys = ", ".join(f"x{j} := o.x{j}" for j in range(n))
        return on, both, f"struct_pack({keys}, fo := o.f, fn := n.f)"

    def run(self, checks: list[Future]) -> dict:
        """The row-level part of one table's diff, by the cheapest exact method.

        First read with small buffers under the memory limit.  A row longer than
        ``DIFF_LINE_SIZE`` fails that read, which is done again with buffers for
        ``duck.MAX_LINE_SIZE``.  Should DuckDB run out of memory inside the limit (it
        spills joins and aggregates, but not everything, and not always in time), the
        table is read again with twice the work memory, then four times, then without a
        limit: the limit can make a diff slower, never make it fail.  ``checks`` are the
        files' checksums, being computed: a damaged file is reported before anything else.
        """
        pk_old, pk_new = self.old.table.get("primary_key"), self.new.table.get("primary_key")
        if self.pk:
            method, note = "primary_key", None
        else:
            method, note = "multiset", None
            if pk_old != pk_new:
                note = "primary key changed; compared as a multiset of rows"
            elif pk_old:
                note = "primary key columns not stored in both snapshots; compared as a multiset"
        attempt = self
        work: int | None = DIFF_WORK_MEMORY
        while True:
            _limit_memory(self.con, attempt.line_size, work)
            try:
                result = attempt.by_key() if self.pk else attempt.multiset()
                break
            except (duckdb.Error, SnapshotDamaged) as exc:
                # A damaged file explains any failure best: report it rather than its symptom.
                _wait(checks)
                if work is not None and isinstance(exc, duckdb.OutOfMemoryException):
                    work = 2 * work if work < 4 * DIFF_WORK_MEMORY else None
                elif attempt.line_size < MAX_LINE_SIZE and isinstance(
                    exc, (duckdb.InvalidInputException, duckdb.NotImplementedException)
                ):
                    attempt = replace(attempt, line_size=MAX_LINE_SIZE)
                else:
                    raise
        _wait(checks)
        return {"method": method, "note": note, **result}

    def by_key(self) -> dict:
        """Inserted/deleted/updated counts of a table matched on its primary key, and a few updates.

        When both sides store the same columns in the same order and data format, rows
        are first matched by their whole line (``diff_lines.match_lines``) and only the lines
        left without a twin are parsed and joined here, as one small table.  Otherwise,
        or when lines are not rows (a CSV value holds a newline), files are joined column
        by column in pairs, the i-th file to read of each side: a row that was not
        moved stays in the same ctid range, so in the same-numbered chunk (see
        ``capture.chunks.page_ranges``), and each join holds one chunk, not the table.  A pair keeps
        only what did not match: the keys of rows that differ, and the whole rows whose key
        is not in the partner file.  Those leftovers meet in one last join; a key being
        unique on each side, every row finds its partner there if it has one, so the result
        is exact however rows moved.  Rows are compared column by column on PostgreSQL's
        text: nothing is hashed.  The ``sample`` smallest changed keys (by key text) are
        then read again, from just their files, for their values.
        """
        sample, con = self.picks, self.con
        old, new = self.old.table, self.new.table
        if old["copy_columns"] == new["copy_columns"] == self.common and formats.of(old) is formats.of(new):
            left = self.line_pass(self)
            if left is not None:
                return replace(self, old=left[0], new=left[1]).whole()
        n = len(self.pk)
        on, both, changed = self._match_sql()
        pairs = max(len(self.old.files), len(self.new.files))
        # Pair "past both ends" reads no file: one row of zero counts and NULL lists, which
        # sets the table's column types and adds nothing to any total.
        con.execute(f"CREATE OR REPLACE TABLE bk_pairs AS {self._pair_sql(pairs)}")
        if not run_pairs(con, pairs, self._run_pair, self.max_leftover):
            # Rows moved wholesale (VACUUM FULL, CLUSTER, a reload, other chunk boundaries):
            # leftovers are held in memory, so join the whole table at once instead, which spills.
            con.execute("DROP TABLE bk_pairs")
            return self.whole()
        picks = f", min({changed}, {sample}) FILTER (WHERE {both})" if sample else ""
        inserted, deleted, updated, *found = one_row(
            con.execute(
                f"SELECT count(*) FILTER (WHERE o.x0 IS NULL), count(*) FILTER (WHERE n.x0 IS NULL), "
                f"count(*) FILTER (WHERE {both}){picks} "
                f"FROM (SELECT unnest(only_o, recursive := true) FROM bk_pairs) o "
                f"FULL JOIN (SELECT unnest(only_n, recursive := true) FROM bk_pairs) n ON {on}"
            )
        )
        in_pairs, *found_in_pairs = one_row(
            con.execute(
                "SELECT count(*)"
                + (f", min(u, {sample})" if sample else "")
                + " FROM (SELECT unnest(upd) AS u FROM bk_pairs)"
            )
        )
        rows_old, rows_new = one_row(con.execute("SELECT sum(rows_o)::BIGINT, sum(rows_n)::BIGINT FROM bk_pairs"))
        con.execute("DROP TABLE bk_pairs")
        self.check_rows(rows_old or 0, rows_new or 0)
        updated += in_pairs
        picked = sorted(
            (found[0] or []) + (found_in_pairs[0] or []) if sample else [],
            key=lambda r: tuple(r[f"x{j}"] for j in range(n)),
        )[:sample]
        return {"inserted": inserted, "deleted": deleted, "updated": updated, "sample_updates": self.samples(picked)}

    def _pair_sql(self, i: int) -> str:
        """The join of the i-th files to read of each side, keeping only what did not match."""
        row = ", ".join(f"x{j} := {{a}}.x{j}" for j in range(len(self.columns))) + ", f := {a}.f"
        on, both, changed = self._match_sql()
        o, n_ = self._file_sql(self.old, i, "o"), self._file_sql(self.new, i, "n")
        # The right side of a join is its build side (see connect): the one with fewer rows.
        probe, build = (n_, o) if self.old.rows_in(i) <= self.new.rows_in(i) else (o, n_)
        return (
            f"SELECT count(o.x0) AS rows_o, count(n.x0) AS rows_n, "
            f"list(struct_pack({row.format(a='o')})) FILTER (WHERE n.x0 IS NULL) AS only_o, "
            f"list(struct_pack({row.format(a='n')})) FILTER (WHERE o.x0 IS NULL) AS only_n, "
            f"list({changed}) FILTER (WHERE {both}) AS upd "
            f"FROM {probe} FULL JOIN {build} ON {on}"
        )

    def _file_sql(self, side: Side, i: int, alias: str) -> str:
        """The i-th file to read of ``side``, its compared columns as x0.. and its number as f."""
        one = {**side.table, "files": side.files[i : i + 1]}  # past the end: no rows
        extra = f"{i}::UINTEGER AS f"
        source = columns_sql(side.folder, one, self.columns, "x", max_line_size=self.line_size, extra=extra)
        return f"{source} AS {alias}"

    def _run_pair(self, i: int) -> int:
        """Join pair ``i`` into bk_pairs; returns how many leftover rows it kept."""
        with self.con.cursor() as cur:
            return one_row(
                cur.execute(
                    f"INSERT INTO bk_pairs {self._pair_sql(i)} "
                    "RETURNING coalesce(len(only_o), 0) + coalesce(len(only_n), 0)"
                )
            )[0]

    def whole(self) -> dict:
        """``by_key`` as one join of every file of each side (no leftovers kept)."""
        sample = self.picks
        on, both, changed = self._match_sql()
        picks = f", min({changed}, {sample}) FILTER (WHERE {both})" if sample else ""
        o, n = self._relation_sql(self.old, "o"), self._relation_sql(self.new, "n")
        probe, build = (n, o) if self.old.rows <= self.new.rows else (o, n)
        inserted, deleted, updated, rows_old, rows_new, *found = one_row(
            self.con.execute(
                f"SELECT count(*) FILTER (WHERE o.x0 IS NULL), count(*) FILTER (WHERE n.x0 IS NULL), "
                f"count(*) FILTER (WHERE {both}), count(o.x0), count(n.x0){picks} "
                f"FROM {probe} FULL JOIN {build} ON {on}"
            )
        )
        self.check_rows(rows_old, rows_new)
        return {
            "inserted": inserted,
            "deleted": deleted,
            "updated": updated,
            "sample_updates": self.samples((found[0] or []) if sample else []),
        }

    def _relation_sql(self, side: Side, alias: str) -> str:
        """Every file to read of ``side``, its compared columns as x0.. and the file's number as f."""
        extra = "file_index::UINTEGER AS f" if side.files else "NULL::UINTEGER AS f"
        source = columns_sql(side.folder, side.table, self.columns, "x", max_line_size=self.line_size, extra=extra)
        return f"{source} AS {alias}"

    def samples(self, picked: list[dict]) -> list[dict]:
        """The changed columns of the picked keys (``x0``.. with old and new file numbers ``fo``/``fn``)."""
        if not picked:
            return []
        keys = [tuple(r[f"x{j}"] for j in range(len(self.pk))) for r in picked]
        old_rows, new_rows = self._fetch(keys, [{r["fo"] for r in picked}, {r["fn"] for r in picked}])
        table, samples = mf.table_key(self.old.table), []
        for k in keys:
            if k not in old_rows or k not in new_rows:  # only if a file changed since the first pass
                raise SnapshotDamaged(
                    f"{table}: a row read once was not found again", [f"{table}: data changed while being read"]
                )
            changes = {c: [a, b] for c, a, b in zip(self.rest, old_rows[k], new_rows[k], strict=True) if a != b}
            samples.append({"key": dict(zip(self.pk, k, strict=True)), "changes": changes})
        return samples

    def _fetch(self, keys: list[tuple], wanted: list[set[int]]) -> tuple[dict, dict]:
        """{key: values of ``rest``} of each side for the given keys, reading only the files numbered ``wanted``."""
        n = len(self.pk)
        match = " OR ".join("(" + " AND ".join(f"k{i} = {literal(v)}" for i, v in enumerate(k)) + ")" for k in keys)
        parts = []
        for s, (side, files) in enumerate(zip((self.old, self.new), wanted, strict=True)):
            subset = {**side.table, "files": [f for i, f in enumerate(side.files) if i in files]}
            parts.append(
                f"SELECT {s} AS s, * FROM "
                f"{columns_sql(side.folder, subset, self.columns, 'k', max_line_size=self.line_size)} "
                f"WHERE {match}"
            )
        out: tuple[dict, dict] = ({}, {})
        for row in self.con.execute(" UNION ALL ".join(parts)).fetchall():
            out[row[0]][tuple(row[1 : n + 1])] = tuple(row[n + 1 :])
        return out

    def multiset(self) -> dict:
        """Rows added and removed between two bags of rows, duplicates counted."""
        if not self.common:
            # No stored columns: every row is the same empty tuple, only the counts can differ.
            return {
                "inserted": max(self.new.rows - self.old.rows, 0),
                "deleted": max(self.old.rows - self.new.rows, 0),
                "updated": None,
                "sample_updates": [],
            }
        # One aggregate over both sides: per distinct row, how often each side has it.
        counted = (
            f"SELECT count(*) FILTER (WHERE s = 0) AS o, count(*) FILTER (WHERE s = 1) AS n "
            f"FROM (SELECT * FROM {self._bag_sql(0, self.old)} UNION ALL SELECT * FROM {self._bag_sql(1, self.new)}) "
            f"GROUP BY h"
        )
        inserted, deleted, rows_old, rows_new = one_row(
            self.con.execute(
                f"SELECT coalesce(sum(greatest(n - o, 0)), 0)::BIGINT, coalesce(sum(greatest(o - n, 0)), 0)::BIGINT, "
                f"coalesce(sum(o), 0)::BIGINT, coalesce(sum(n), 0)::BIGINT FROM ({counted})"
            )
        )
        self.check_rows(rows_old, rows_new)
        return {"inserted": inserted, "deleted": deleted, "updated": None, "sample_updates": []}

    def _bag_sql(self, s: int, side: Side) -> str:
        """Side number ``s`` as ``s`` and one hash ``h`` of the compared columns per row."""
        pos = {c: i for i, c in enumerate(side.table["copy_columns"])}
        if not side.files:
            return f"(SELECT {s} AS s, NULL::UHUGEINT AS h WHERE false)"
        hashed = _row_hash([f"c{pos[c]}" for c in self.common])
        source = files_sql(side.folder, side.table, max_line_size=self.line_size)
        return f"(SELECT {s} AS s, {hashed} AS h FROM {source})"

    def check_rows(self, rows_old: int, rows_new: int) -> None:
        """Raise SnapshotDamaged when DuckDB did not read the rows the manifests promise."""
        for side, got in ((self.old, rows_old), (self.new, rows_new)):
            if got != side.rows:
                raise SnapshotDamaged(
                    f"read {got} rows of {mf.table_key(side.table)}, the manifest says {side.rows}",
                    [f"{mf.table_key(side.table)}: row count mismatch"],
                )
