"""Comparing two snapshots with DuckDB.

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
* A table whose chunk files are byte-identical (the same SHA-256s) is not read.
  Of a table that changed, a file with a byte-identical partner on the other
  side is not read either: the two hold the same rows, which cancel out.

Every side is read once, on every CPU, under a memory limit: a join larger
than ``DIFF_WORK_MEMORY`` spills to a private scratch folder (``storage.scratch``,
removed at the end, which also holds the line pass's leftovers) instead of growing the
process, and joining chunk by chunk keeps joins the size of a chunk, not of
the table.  The files read are checked against the
manifests (sizes, SHA-256 in a background thread while DuckDB reads them, and
the rows DuckDB read), so a damaged file is reported, not diffed.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import duckdb

from ..errors import SnapshotDamaged
from ..runtime.progress import byte_bar, wanted
from ..snapshot import encryption, formats
from ..snapshot import manifest as mf
from ..snapshot.datafile import check_files
from ..storage.local import LocalStorage
from ..storage.location import SnapshotLocation, locate
from ..storage.scratch import scratch
from .bucket_files import files_diff
from .diff_lines import match_lines, run_pairs
from .duck import MAX_LINE_SIZE, columns_sql, duck_connection, files_sql, literal, read_buffer
from .schema_diff import read_schema_sql, schema_objects
from .source import readable

#: Lines of unified diff of the schema SQL kept in a diff report.
SQL_DIFF_LINES = 200
#: Longest row a diff first reads a table with.  DuckDB reserves a read buffer a
#: little larger than this for every file being read and counts it against the
#: memory limit, so the usual rows are read with small buffers; a table with a
#: longer row fails that attempt and is read again with ``duck.MAX_LINE_SIZE``.
DIFF_LINE_SIZE = 8 << 20
#: DuckDB memory for a diff's joins and aggregates, beyond its read buffers: two
#: chunk joins of 64 MB chunks at once fit; more spills to a temporary folder.
DIFF_WORK_MEMORY = 384 << 20
#: Rows left unmatched by chunk pairs that a diff keeps in memory before it gives up
#: pairing (rows moved wholesale) and joins the whole table at once, spilling.
MAX_LEFTOVER_ROWS = 1_000_000


def _threads() -> int:
    """CPUs this process may run on (DuckDB's default counts the machine's, ignoring affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _diff_connect(spill: str) -> duckdb.DuckDBPyConnection:
    """A connection for diffs: every CPU, bounded memory, spilling to ``spill``."""
    con = duck_connection()
    con.execute(f"SET threads = {_threads()}")
    # Nothing a diff returns depends on row order; keeping it costs memory in scans.
    con.execute("SET preserve_insertion_order = false")
    # A hash join builds on its right side, as written: _compare_by_key puts the side with
    # fewer rows (it knows them from the manifests) there, whatever DuckDB estimates.
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    # The bar goes to stdout, which holds the report with --json.
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET temp_directory = {literal(spill)}")
    _limit_memory(con, DIFF_LINE_SIZE, DIFF_WORK_MEMORY)
    return con


def _limit_memory(con, line_size: int, work: int | None) -> None:
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


def _names(columns: list[dict]) -> dict[str, str]:
    return {c["name"]: c["type"] for c in columns}


def schema_changes(old: dict, new: dict) -> dict:
    """What the manifests say changed in one table's definition."""
    oc, nc = _names(old["columns"]), _names(new["columns"])
    old_fk = {_fk_key(f): f for f in old.get("foreign_keys") or []}
    new_fk = {_fk_key(f): f for f in new.get("foreign_keys") or []}
    old_ix, new_ix = set(old.get("indexes") or []), set(new.get("indexes") or [])
    pk_old, pk_new = old.get("primary_key"), new.get("primary_key")
    changes = {
        "columns_added": [c for c in nc if c not in oc],
        "columns_dropped": [c for c in oc if c not in nc],
        "columns_retyped": [{"column": c, "old": oc[c], "new": nc[c]} for c in oc if c in nc and oc[c] != nc[c]],
        "primary_key": None if pk_old == pk_new else {"old": pk_old, "new": pk_new},
        "foreign_keys_added": [new_fk[k] for k in new_fk if k not in old_fk],
        "foreign_keys_removed": [old_fk[k] for k in old_fk if k not in new_fk],
        "indexes_added": sorted(new_ix - old_ix),
        "indexes_removed": sorted(old_ix - new_ix),
    }
    changes["changed"] = any(v for v in changes.values())
    return changes


def _fk_key(fk: dict) -> tuple:
    return (fk["name"], fk["ref_schema"], fk["ref_table"], tuple(fk["columns"]), tuple(fk["ref_columns"]))


def _read_files(old: dict, new: dict) -> tuple[list[dict], list[dict]] | None:
    """The files of each side that must be read: those without a byte-identical partner.

    Byte-identical files (same SHA-256 in both manifests) hold the same rows, so they
    contribute the same bag of rows to both sides and cancel out of a multiset
    comparison.  They also cancel out of a comparison by primary key: a key in such a
    file has that very row in both snapshots, and (the key being unique in each
    snapshot) no other row, so it is unchanged and no other key's outcome depends on
    it.  None when a file lacks its row count (then every file is read and checked
    against the table's count).
    """
    if any("rows" not in f for f in old["files"] + new["files"]):
        return None
    shared = Counter(f["sha256"] for f in old["files"]) & Counter(f["sha256"] for f in new["files"])

    def unpaired(files):
        left, out = Counter(shared), []
        for f in files:
            if left[f["sha256"]]:
                left[f["sha256"]] -= 1
            else:
                out.append(f)
        return out

    return unpaired(old["files"]), unpaired(new["files"])


def _compare_by_key(con, sides, pk, common, sample, line_size, spill: SnapshotLocation) -> dict:
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
    rest = [c for c in common if c not in pk]
    sample = max(int(sample), 0) if rest else 0  # with only key columns a row cannot be updated
    (_, old, _), (_, new, _) = sides
    if old["copy_columns"] == new["copy_columns"] == common and formats.of(old) is formats.of(new):
        left = match_lines(con, sides, spill, line_size, MAX_LEFTOVER_ROWS)
        if left is not None:
            return _compare_whole(con, left, pk, rest, sample, line_size)
    n, width = len(pk), len(pk) + len(rest)
    row = ", ".join(f"x{j} := {{a}}.x{j}" for j in range(width)) + ", f := {a}.f"
    on, both, changed = _match_sql(n, width)

    def file(side: int, i: int, alias: str) -> str:
        folder, table, _ = sides[side]
        one = {**table, "files": table["files"][i : i + 1]}  # past the end: no rows
        source = columns_sql(folder, one, pk + rest, "x", max_line_size=line_size, extra=f"{i}::UINTEGER AS f")
        return f"{source} AS {alias}"

    def rows_of(side: int, i: int) -> int:
        files = sides[side][1]["files"]
        return files[i].get("rows", 0) if i < len(files) else 0

    def pair(i: int) -> str:
        # The right side of a join is its build side (see _diff_connect): the one with fewer rows.
        o, n_ = file(0, i, "o"), file(1, i, "n")
        probe, build = (n_, o) if rows_of(0, i) <= rows_of(1, i) else (o, n_)
        return (
            f"SELECT count(o.x0) AS rows_o, count(n.x0) AS rows_n, "
            f"list(struct_pack({row.format(a='o')})) FILTER (WHERE n.x0 IS NULL) AS only_o, "
            f"list(struct_pack({row.format(a='n')})) FILTER (WHERE o.x0 IS NULL) AS only_n, "
            f"list({changed}) FILTER (WHERE {both}) AS upd "
            f"FROM {probe} FULL JOIN {build} ON {on}"
        )

    def run_pair(i: int) -> int:
        """Join pair ``i`` into bk_pairs; returns how many leftover rows it kept."""
        with con.cursor() as cur:
            return cur.execute(
                f"INSERT INTO bk_pairs {pair(i)} RETURNING coalesce(len(only_o), 0) + coalesce(len(only_n), 0)"
            ).fetchone()[0]

    pairs = max(len(sides[0][1]["files"]), len(sides[1][1]["files"]))
    # Pair "past both ends" reads no file: one row of zero counts and NULL lists, which
    # sets the table's column types and adds nothing to any total.
    con.execute(f"CREATE OR REPLACE TABLE bk_pairs AS {pair(pairs)}")
    if not run_pairs(con, pairs, run_pair, MAX_LEFTOVER_ROWS):
        # Rows moved wholesale (VACUUM FULL, CLUSTER, a reload, other chunk boundaries):
        # leftovers are held in memory, so join the whole table at once instead, which spills.
        con.execute("DROP TABLE bk_pairs")
        return _compare_whole(con, sides, pk, rest, sample, line_size)
    picks = f", min({changed}, {sample}) FILTER (WHERE {both})" if sample else ""
    inserted, deleted, updated, *found = con.execute(
        f"SELECT count(*) FILTER (WHERE o.x0 IS NULL), count(*) FILTER (WHERE n.x0 IS NULL), "
        f"count(*) FILTER (WHERE {both}){picks} "
        f"FROM (SELECT unnest(only_o, recursive := true) FROM bk_pairs) o "
        f"FULL JOIN (SELECT unnest(only_n, recursive := true) FROM bk_pairs) n ON {on}"
    ).fetchone()
    in_pairs, *found_in_pairs = con.execute(
        "SELECT count(*)" + (f", min(u, {sample})" if sample else "") + " FROM (SELECT unnest(upd) AS u FROM bk_pairs)"
    ).fetchone()
    rows_old, rows_new = con.execute("SELECT sum(rows_o)::BIGINT, sum(rows_n)::BIGINT FROM bk_pairs").fetchone()
    con.execute("DROP TABLE bk_pairs")
    _check_rows(sides, rows_old or 0, rows_new or 0)
    updated += in_pairs
    picked = sorted(
        (found[0] or []) + (found_in_pairs[0] or []) if sample else [],
        key=lambda r: tuple(r[f"x{j}"] for j in range(n)),
    )[:sample]
    return {
        "inserted": inserted,
        "deleted": deleted,
        "updated": updated,
        "sample_updates": _samples(con, sides, pk, rest, picked, line_size),
    }


def _match_sql(n: int, width: int) -> tuple[str, str, str]:
    """SQL over ``o`` and ``n`` (columns x0.. with the n key columns first, file number f):
    the join condition, "matched and some other column differs", and the changed row's
    key with its old and new file numbers."""
    on = " AND ".join(f"o.x{j} = n.x{j}" for j in range(n))
    differ = " OR ".join(f"o.x{j} IS DISTINCT FROM n.x{j}" for j in range(n, width)) or "false"
    both = f"o.x0 IS NOT NULL AND n.x0 IS NOT NULL AND ({differ})"  # key columns are NOT NULL
    keys = ", ".join(f"x{j} := o.x{j}" for j in range(n))
    return on, both, f"struct_pack({keys}, fo := o.f, fn := n.f)"


def _compare_whole(con, sides, pk, rest, sample, line_size) -> dict:
    """``_compare_by_key`` as one join of every file of each side (no leftovers kept)."""
    on, both, changed = _match_sql(len(pk), len(pk) + len(rest))

    def relation(side: int, alias: str) -> str:
        folder, table, _ = sides[side]
        extra = "file_index::UINTEGER AS f" if table["files"] else "NULL::UINTEGER AS f"
        return f"{columns_sql(folder, table, pk + rest, 'x', max_line_size=line_size, extra=extra)} AS {alias}"

    picks = f", min({changed}, {sample}) FILTER (WHERE {both})" if sample else ""
    probe, build = (
        (relation(1, "n"), relation(0, "o")) if sides[0][2] <= sides[1][2] else (relation(0, "o"), relation(1, "n"))
    )
    inserted, deleted, updated, rows_old, rows_new, *found = con.execute(
        f"SELECT count(*) FILTER (WHERE o.x0 IS NULL), count(*) FILTER (WHERE n.x0 IS NULL), "
        f"count(*) FILTER (WHERE {both}), count(o.x0), count(n.x0){picks} "
        f"FROM {probe} FULL JOIN {build} ON {on}"
    ).fetchone()
    _check_rows(sides, rows_old, rows_new)
    return {
        "inserted": inserted,
        "deleted": deleted,
        "updated": updated,
        "sample_updates": _samples(con, sides, pk, rest, (found[0] or []) if sample else [], line_size),
    }


def _samples(con, sides, pk, rest, picked: list[dict], line_size) -> list[dict]:
    """The changed columns of the picked keys (``x0``.. with old and new file numbers ``fo``/``fn``)."""
    n = len(pk)
    samples = []
    if picked:
        keys = [tuple(r[f"x{j}"] for j in range(n)) for r in picked]
        old_rows, new_rows = _fetch(
            con, sides, pk, rest, keys, [{r["fo"] for r in picked}, {r["fn"] for r in picked}], line_size
        )
        for k in keys:
            if k not in old_rows or k not in new_rows:  # only if a file changed since the first pass
                raise SnapshotDamaged(
                    f"{mf.table_key(sides[0][1])}: a row read once was not found again",
                    [f"{mf.table_key(sides[0][1])}: data changed while being read"],
                )
            samples.append(
                {
                    "key": dict(zip(pk, k, strict=True)),
                    "changes": {c: [a, b] for c, a, b in zip(rest, old_rows[k], new_rows[k], strict=True) if a != b},
                }
            )
    return samples


def _fetch(con, sides, pk, rest, keys, wanted, line_size) -> tuple[dict, dict]:
    """{key: values of ``rest``} of each side for the given keys, reading only the files numbered ``wanted``."""
    n = len(pk)
    match = " OR ".join("(" + " AND ".join(f"k{i} = {literal(v)}" for i, v in enumerate(k)) + ")" for k in keys)
    parts = []
    for s, ((folder, table, _), files) in enumerate(zip(sides, wanted, strict=True)):
        subset = {**table, "files": [f for i, f in enumerate(table["files"]) if i in files]}
        parts.append(
            f"SELECT {s} AS s, * FROM {columns_sql(folder, subset, pk + rest, 'k', max_line_size=line_size)} "
            f"WHERE {match}"
        )
    out: tuple[dict, dict] = ({}, {})
    for row in con.execute(" UNION ALL ".join(parts)).fetchall():
        out[row[0]][tuple(row[1 : n + 1])] = tuple(row[n + 1 :])
    return out


def _compare_multiset(con, sides, common, line_size) -> dict:
    """Rows added and removed between two bags of rows, duplicates counted."""
    (old_dir, old, expect_old), (new_dir, new, expect_new) = sides
    if not common:
        # No stored columns: every row is the same empty tuple, only the counts can differ.
        return {
            "inserted": max(expect_new - expect_old, 0),
            "deleted": max(expect_old - expect_new, 0),
            "updated": None,
            "sample_updates": [],
        }

    def bag(s, folder, table):
        pos = {c: i for i, c in enumerate(table["copy_columns"])}
        if not table["files"]:
            return f"(SELECT {s} AS s, NULL::UHUGEINT AS h WHERE false)"
        hashed = _row_hash([f"c{pos[c]}" for c in common])
        return f"(SELECT {s} AS s, {hashed} AS h FROM {files_sql(folder, table, max_line_size=line_size)})"

    # One aggregate over both sides: per distinct row, how often each side has it.
    counted = (
        f"SELECT count(*) FILTER (WHERE s = 0) AS o, count(*) FILTER (WHERE s = 1) AS n "
        f"FROM (SELECT * FROM {bag(0, old_dir, old)} UNION ALL SELECT * FROM {bag(1, new_dir, new)}) "
        f"GROUP BY h"
    )
    inserted, deleted, rows_old, rows_new = con.execute(
        f"SELECT coalesce(sum(greatest(n - o, 0)), 0)::BIGINT, coalesce(sum(greatest(o - n, 0)), 0)::BIGINT, "
        f"coalesce(sum(o), 0)::BIGINT, coalesce(sum(n), 0)::BIGINT FROM ({counted})"
    ).fetchone()
    _check_rows(sides, rows_old, rows_new)
    return {"inserted": inserted, "deleted": deleted, "updated": None, "sample_updates": []}


def _check_files(folder: mf.SnapshotArg, table: dict) -> None:
    """Raise SnapshotDamaged unless every data file of ``table`` matches its manifest entry.

    DuckDB reads a truncated zstd file as if it simply ended, without an error, so
    files are hashed before their rows are trusted (``datafile.check_files``: inside
    the snapshot, sizes first, so a missing or truncated file fails at once, then
    SHA-256, each file once per process).  ``diff_snapshots`` runs this in a
    background thread while DuckDB reads the same files, so the hash costs no second
    wait, and waits for it before it reports the table.
    """
    location = locate(folder)
    try:
        check_files(location, table["files"], threads=1)  # one thread: DuckDB has the other CPUs
    except SnapshotDamaged as exc:
        raise SnapshotDamaged(
            f"{location.name}: a data file is missing or does not match its checksum: " + "; ".join(exc.problems[:3]),
            exc.problems,
            hint=f"run `backupkit verify {location}`",
        ) from None


def _check_schema_files(folder: mf.SnapshotArg, m: dict) -> None:
    """Raise SnapshotDamaged unless the schema SQL files a diff reads match the manifest."""
    entries = [
        f for f in m.get("schema_files") or [] if isinstance(f, dict) and f.get("path") in (mf.PRE_DATA, mf.POST_DATA)
    ]
    check_files(folder, entries)


def _check_rows(sides, rows_old: int, rows_new: int) -> None:
    """Raise SnapshotDamaged when DuckDB did not read the rows the manifests promise."""
    for (_, t, expected), got in zip(sides, (rows_old, rows_new), strict=True):
        if got != expected:
            raise SnapshotDamaged(
                f"read {got} rows of {mf.table_key(t)}, the manifest says {expected}",
                [f"{mf.table_key(t)}: row count mismatch"],
            )


def _plan(old_dir: mf.SnapshotArg, new_dir: mf.SnapshotArg, old: dict, new: dict):
    """``((folder, table with only the files to read, rows expected), same for new)``, or None
    when both sides hold byte-identical files and nothing needs reading."""
    if Counter(f["sha256"] for f in old["files"]) == Counter(f["sha256"] for f in new["files"]):
        return None
    read = _read_files(old, new)
    if read is None:
        return (old_dir, old, old["rows"]), (new_dir, new, new["rows"])
    return tuple(
        (folder, {**t, "files": files}, sum(f["rows"] for f in files))
        for folder, t, files in ((old_dir, old, read[0]), (new_dir, new, read[1]))
    )


def _compare(con, sides, checks: list[Future], common, keyed, sample, spill: SnapshotLocation) -> dict:
    """The row-level part of one table's diff, by the cheapest exact method.

    First read with small buffers under the memory limit.  A row longer than
    ``DIFF_LINE_SIZE`` fails that read, which is done again with buffers for
    ``duck.MAX_LINE_SIZE``.  Should DuckDB run out of memory inside the limit (it
    spills joins and aggregates, but not everything, and not always in time), the
    table is read again with twice the work memory, then four times, then without a
    limit: the limit can make a diff slower, never make it fail.
    """
    (_, old, _), (_, new, _) = sides
    pk_old, pk_new = old.get("primary_key"), new.get("primary_key")
    if keyed:
        method, note = "primary_key", None
    else:
        method, note = "multiset", None
        if pk_old != pk_new:
            note = "primary key changed; compared as a multiset of rows"
        elif pk_old:
            note = "primary key columns not stored in both snapshots; compared as a multiset"
    line_size = DIFF_LINE_SIZE
    work: int | None = DIFF_WORK_MEMORY
    while True:
        _limit_memory(con, line_size, work)
        try:
            if keyed:
                result = _compare_by_key(con, sides, pk_old, common, sample, line_size, spill)
            else:
                result = _compare_multiset(con, sides, common, line_size)
            break
        except (duckdb.Error, SnapshotDamaged) as exc:
            # A damaged file explains any failure best: report it rather than its symptom.
            _wait(checks)
            if work is not None and isinstance(exc, duckdb.OutOfMemoryException):
                work = 2 * work if work < 4 * DIFF_WORK_MEMORY else None
            elif line_size < MAX_LINE_SIZE and isinstance(
                exc, (duckdb.InvalidInputException, duckdb.NotImplementedException)
            ):
                line_size = MAX_LINE_SIZE
            else:
                raise
    _wait(checks)
    return {"method": method, "note": note, **result}


def _wait(checks: list[Future]) -> None:
    for c in checks:
        c.result()  # raises SnapshotDamaged


def _schema_sql(old_dir: mf.SnapshotArg, new_dir: mf.SnapshotArg, old_m: dict, new_m: dict) -> tuple[dict, str, bool]:
    """Which schema SQL files differ (by manifest SHA-256), and a capped unified diff of them."""
    sha_old = {f["path"]: f["sha256"] for f in old_m.get("schema_files", [])}
    sha_new = {f["path"]: f["sha256"] for f in new_m.get("schema_files", [])}
    changed = {p: sha_old.get(p) != sha_new.get(p) for p in (mf.PRE_DATA, mf.POST_DATA)}
    lines: list[str] = []
    for p, differs in changed.items():
        if not differs:
            continue
        a = read_schema_sql(old_dir, p).splitlines(keepends=True)  # "" when absent
        b = read_schema_sql(new_dir, p).splitlines(keepends=True)
        lines += difflib.unified_diff(a, b, f"old/{p}", f"new/{p}")
    truncated = len(lines) > SQL_DIFF_LINES
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines[:SQL_DIFF_LINES])
    return changed, text, truncated


def _side(folder: SnapshotLocation, m: dict) -> dict:
    """One snapshot of a diff: where, which, when, and the rows and Storage files that did not
    match when it was taken (``model.Mismatch``)."""
    return {
        "path": str(folder),
        "id": m.get("id"),
        "created_at": m.get("created_at"),
        "storage_mismatches": list((m.get("storage") or {}).get("mismatches", [])),
    }


def _common(old: dict, new: dict) -> list[str]:
    """The stored columns both snapshots have, in the old order."""
    return [c for c in old["copy_columns"] if c in set(new["copy_columns"])]


def _keyed(old: dict, new: dict) -> bool:
    """Whether the table can be compared by primary key: the same key, stored on both sides."""
    pk_old, pk_new = old.get("primary_key") or [], new.get("primary_key") or []
    return bool(pk_old) and pk_old == pk_new and all(c in _common(old, new) for c in pk_old)


def _run_tables(con, work, checks, sample, spill: LocalStorage, bar: Any) -> dict[str, dict]:
    """Compare every table that needs reading, one at a time; {table key: row-level result}.

    Each table's leftover lines (see ``diff_lines.match_lines``) go under a prefix of
    its own in the ``spill`` storage, removed once the table is compared.  ``bar``
    moves by the stored bytes of each table's two sides.
    """
    results = {}
    for n, (key, old, new, sides) in enumerate(work):
        bar.update(_stored_bytes(old, new) if sides is None else 0)
        if sides is None:
            continue
        folder = SnapshotLocation(spill, f"table-{n}")
        try:
            results[key] = _compare(con, sides, checks[key], _common(old, new), _keyed(old, new), sample, folder)
        except (duckdb.IOException, duckdb.InvalidInputException) as exc:
            raise SnapshotDamaged(
                f"cannot read the data of {key}: {exc}",
                [f"{key}: {exc}"],
                hint="run `backupkit verify` on both snapshots",
            ) from None
        finally:
            spill.remove(folder.key())
        bar.update(_stored_bytes(old, new))
    return results


def _stored_bytes(old: dict, new: dict) -> int:
    return sum(f["bytes"] for t in (old, new) for f in t["files"])


def diff_snapshots(
    old_path: mf.SnapshotArg,
    new_path: mf.SnapshotArg,
    *,
    sample: int = 5,
    progress: bool | None = None,
    identity: encryption.IdentityArg | None = None,
) -> dict:
    """Compare two snapshots: tables added/removed, per-table row changes, schema changes.

    Returns ``old``/``new`` (path, id, created_at), ``tables_added``/``tables_removed``
    (schema, name, rows), ``tables`` (one entry per table in both: rows_old, rows_new,
    inserted, deleted, updated, method, note, sample_updates [{key, changes: {column:
    [old, new]}}] ordered by key text, compared_columns, schema_changes),
    ``schema_sql_changed``, ``schema_sql_files``, ``schema_sql_diff`` (at most
    SQL_DIFF_LINES lines), ``schema_sql_diff_truncated``, ``schema_objects`` (each
    object added, removed or changed: type, schema, name, change, detail; see
    ``schema_diff``), ``storage_files`` (Storage bucket files added, removed or changed,
    per bucket: ``bucket_files.files_diff``), ``totals`` and ``same`` (see ``same``).  Values are
    PostgreSQL's text.  Raises SnapshotDamaged when a data file read does not match
    its manifest.  ``progress`` shows a bar by bytes compared (default: on a terminal
    or in a notebook).  ``identity`` (an age identity file) lets it read encrypted snapshots,
    through decrypted copies in scratch space removed at the end (``lens.source``).
    """
    with contextlib.ExitStack() as stack:
        old_dir, new_dir = readable(old_path, identity, stack), readable(new_path, identity, stack)
        return _diff(old_dir, new_dir, sample, progress)


def _diff(old_dir: SnapshotLocation, new_dir: SnapshotLocation, sample: int, progress: bool | None) -> dict:
    """``diff_snapshots`` of two snapshots the lens can read."""
    old_m, new_m = mf.read(old_dir), mf.read(new_dir)
    old_t = {mf.table_key(t): t for t in old_m["tables"]}
    new_t = {mf.table_key(t): t for t in new_m["tables"]}

    def brief(t):
        return {"schema": t["schema"], "name": t["name"], "rows": t["rows"]}

    # What each table needs: its files to read (none when byte-identical), planned from
    # the manifests alone so the files can be hashed ahead of DuckDB reading them.
    work = []
    for key, new in new_t.items():
        old = old_t.get(key)
        if old is not None:
            work.append((key, old, new, _plan(old_dir, new_dir, old, new)))

    # SHA-256 of the files read runs in a background thread, overlapping DuckDB's reading;
    # a table is reported only once its files' hashes matched (see _check_files).  Files of
    # a table skipped as byte-identical are not hashed: the result for them (no change)
    # comes from the two manifests alone, and the manifests are what the diff compares; a
    # damaged copy on disk is verify's to find, and nothing read from it reaches the report.
    hasher = ThreadPoolExecutor(1, thread_name_prefix="backupkit-diff-sha")
    con = None
    results: dict[str, dict] = {}
    with scratch("backupkit-diff-") as spill:  # removed with everything in it at the end
        try:
            checks = {
                key: [hasher.submit(_check_files, folder, t) for folder, t, _ in sides]
                for key, _, _, sides in work
                if sides is not None
            }
            con = _diff_connect(str(spill.path()))
            with byte_bar(sum(_stored_bytes(old, new) for _, old, new, _ in work), "diff", wanted(progress)) as bar:
                results = _run_tables(con, work, checks, sample, spill, bar)
        finally:
            hasher.shutdown(wait=True, cancel_futures=True)
            if con is not None:
                con.close()
    tables = []
    for key, old, new, sides in work:
        entry = {
            "schema": new["schema"],
            "name": new["name"],
            "rows_old": old["rows"],
            "rows_new": new["rows"],
            "primary_key": new.get("primary_key"),
        }
        if sides is None:
            # Byte-identical files hold identical rows: nothing to read.
            entry.update(
                {
                    "method": "identical",
                    "note": None,
                    "inserted": 0,
                    "deleted": 0,
                    "updated": 0 if _keyed(old, new) else None,
                    "sample_updates": [],
                }
            )
        else:
            entry.update(results[key])
        entry["compared_columns"] = _common(old, new)
        entry["schema_changes"] = schema_changes(old, new)
        tables.append(entry)
    # The schema SQL is read as well (its diff, its objects): checked like the data.
    _check_schema_files(old_dir, old_m)
    _check_schema_files(new_dir, new_m)
    changed, sql_diff, truncated = _schema_sql(old_dir, new_dir, old_m, new_m)
    result = {
        "old": _side(old_dir, old_m),
        "new": _side(new_dir, new_m),
        "tables_added": [brief(t) for k, t in new_t.items() if k not in old_t],
        "tables_removed": [brief(t) for k, t in old_t.items() if k not in new_t],
        "tables": tables,
        "schema_sql_changed": any(changed.values()),
        "schema_sql_files": changed,
        "schema_sql_diff": sql_diff,
        "schema_sql_diff_truncated": truncated,
        "schema_objects": schema_objects(old_dir, new_dir, old_m, new_m),
        "storage_files": files_diff(old_m, new_m),
        "totals": {k: sum(t[k] or 0 for t in tables) for k in ("inserted", "deleted", "updated")},
    }
    result["same"] = same(result)
    return result


def same(diff: dict) -> bool:
    """Whether a diff found nothing: no table added or removed, no row, table definition or bucket file
    changed, no schema object added, removed or changed.

    Schema SQL that differs outside every object (pg_dump's version comment, its
    session settings) is not a difference: it says nothing about the database.
    """
    return not (
        diff["tables_added"]
        or diff["tables_removed"]
        or diff["schema_objects"]
        or diff.get("storage_files")
        or any(t["inserted"] or t["deleted"] or t["updated"] or t["schema_changes"]["changed"] for t in diff["tables"])
    )
