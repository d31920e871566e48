"""Comparing two snapshots, and checking one snapshot's data for integrity, with DuckDB.

Rows are compared on PostgreSQL's exact text (``duck.files_sql``, every column
VARCHAR), so "changed" means "PostgreSQL would print it differently": NULL and
the empty string differ, 1.50 and 1.5 in an unconstrained numeric differ.

* A table with the same primary key in both snapshots is joined on that key;
  a row counts as updated when an MD5 of its columns (those present in both
  snapshots, length-prefixed so NULL, '' and separators cannot be confused)
  differs.
* A table without a primary key, or whose key changed, is compared as a
  multiset: rows added and removed, duplicates counted; ``updated`` is None.
* A table whose chunk files are byte-identical (same SHA-256 list) is not read.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import duckdb

from . import manifest as mf
from .duck import files_sql
from .errors import SnapshotDamaged, SnapshotError
from .schema import POST_DATA, PRE_DATA
from .verify import sha256_file, verify

#: Lines of unified diff of the schema SQL kept in a diff report.
SQL_DIFF_LINES = 200
#: Orphan / duplicate rows quoted per integrity check.
SAMPLES = 5


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    return con


def _source(folder: Path, table: dict, columns: list[str], alias: str = "k") -> str:
    """``(SELECT c_i AS k0, ... FROM read_csv(...))`` with the given columns, by name, in order."""
    pos = {c: i for i, c in enumerate(table["copy_columns"])}
    cols = ", ".join(f"c{pos[c]} AS {alias}{n}" for n, c in enumerate(columns))
    return f"(SELECT {cols} FROM {files_sql(folder, table)})"


def _row_hash(n: int, alias: str = "v") -> str:
    """MD5 of ``n`` text columns, each length-prefixed so (NULL, '', 'a,b') never collide."""
    parts = [f"coalesce(length({alias}{i})::VARCHAR || ':' || {alias}{i}, '-')" for i in range(n)]
    return f"md5_number(concat({', '.join(parts)}))" if parts else "md5_number('')"


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


def _compare_by_key(con, old_dir, new_dir, old, new, pk, common, sample) -> dict:
    """Inserted/deleted/updated counts of a table joined on its primary key, and a few updates."""
    rest = [c for c in common if c not in pk]
    n = len(pk)
    on = " AND ".join(f"o.k{i} = n.k{i}" for i in range(n))

    def keyed(folder, table):
        src = _source(folder, table, pk + rest, "v")
        keys = ", ".join(f"v{i} AS k{i}" for i in range(n))
        return f"(SELECT {keys}, {_row_hash(len(pk + rest))} AS h FROM {src})"

    o, nw = keyed(old_dir, old), keyed(new_dir, new)
    inserted, deleted, updated, rows_old, rows_new = con.execute(
        f"SELECT count(*) FILTER (WHERE o.h IS NULL), count(*) FILTER (WHERE n.h IS NULL), "
        f"count(*) FILTER (WHERE o.h <> n.h), count(o.h), count(n.h) "
        f"FROM {o} AS o FULL JOIN {nw} AS n ON {on}").fetchone()
    _check_rows(old, rows_old, new, rows_new)
    samples = []
    if updated and sample > 0:
        order = ", ".join(f"o.k{i}" for i in range(n))
        keys = (f"(SELECT {', '.join(f'o.k{i} AS k{i}' for i in range(n))} FROM {o} AS o JOIN {nw} AS n "
                f"ON {on} WHERE o.h <> n.h ORDER BY {order} LIMIT {int(sample)})")
        width = len(pk + rest)
        a, b = _source(old_dir, old, pk + rest, "v"), _source(new_dir, new, pk + rest, "v")
        cols = ", ".join([f"a.v{i}" for i in range(width)] + [f"b.v{i}" for i in range(n, width)])
        join_a = " AND ".join(f"a.v{i} = s.k{i}" for i in range(n))
        join_b = " AND ".join(f"b.v{i} = s.k{i}" for i in range(n))
        rows = con.execute(
            f"SELECT {cols} FROM {keys} AS s JOIN {a} AS a ON {join_a} JOIN {b} AS b ON {join_b} "
            f"ORDER BY {', '.join(f's.k{i}' for i in range(n))}").fetchall()
        for row in rows:  # at most `sample` rows
            old_vals, new_vals = row[n:width], row[width:]
            samples.append({
                "key": dict(zip(pk, row[:n])),
                "changes": {c: [ov, nv] for c, ov, nv in zip(rest, old_vals, new_vals) if ov != nv},
            })
    return {"inserted": inserted, "deleted": deleted, "updated": updated, "sample_updates": samples}


def _compare_multiset(con, old_dir, new_dir, old, new, common) -> dict:
    """Rows added and removed between two bags of rows, duplicates counted."""
    if not common:
        # No stored columns: every row is the same empty tuple, only the counts can differ.
        return {"inserted": max(new["rows"] - old["rows"], 0), "deleted": max(old["rows"] - new["rows"], 0),
                "updated": None, "sample_updates": []}

    def bag(folder, table):
        src = _source(folder, table, common, "v")
        return f"(SELECT {_row_hash(len(common))} AS h, count(*) AS c FROM {src} GROUP BY h)"

    inserted, deleted, rows_old, rows_new = con.execute(
        f"SELECT coalesce(sum(greatest(coalesce(n.c, 0) - coalesce(o.c, 0), 0)), 0)::BIGINT, "
        f"coalesce(sum(greatest(coalesce(o.c, 0) - coalesce(n.c, 0), 0)), 0)::BIGINT, "
        f"coalesce(sum(o.c), 0)::BIGINT, coalesce(sum(n.c), 0)::BIGINT "
        f"FROM {bag(old_dir, old)} AS o FULL JOIN {bag(new_dir, new)} AS n ON o.h = n.h").fetchone()
    _check_rows(old, rows_old, new, rows_new)
    return {"inserted": inserted, "deleted": deleted, "updated": None, "sample_updates": []}


def _check_files(folder: Path, table: dict) -> None:
    """Raise SnapshotDamaged unless every data file of ``table`` matches its manifest entry.

    DuckDB reads a truncated zstd file as if it simply ended, without an error,
    so files are hashed before they are trusted (hashing is cheap next to parsing).
    """
    for f in table["files"]:
        path = folder / f["path"]
        if not path.is_file() or path.stat().st_size != f["bytes"] or sha256_file(path) != f["sha256"]:
            raise SnapshotDamaged(f"{folder.name}: {f['path']} is missing or does not match its checksum",
                                  [f"{f['path']}: checksum mismatch"],
                                  hint=f"run `backupkit verify {folder}`")


def _check_rows(old: dict, rows_old: int, new: dict, rows_new: int) -> None:
    """Raise SnapshotDamaged when DuckDB did not read the rows the manifests promise."""
    for t, got in ((old, rows_old), (new, rows_new)):
        if got != t["rows"]:
            raise SnapshotDamaged(f"read {got} rows of {mf.table_key(t)}, the manifest says {t['rows']}",
                                  [f"{mf.table_key(t)}: row count mismatch"])


def _compare(con, old_dir, new_dir, old, new, common, keyed, sample) -> dict:
    """The row-level part of one table's diff, by the cheapest exact method."""
    pk_old, pk_new = old.get("primary_key"), new.get("primary_key")
    if [f["sha256"] for f in old["files"]] == [f["sha256"] for f in new["files"]]:
        # Byte-identical files hold identical rows: nothing to read.
        return {"method": "identical", "note": None, "inserted": 0, "deleted": 0,
                "updated": 0 if keyed else None, "sample_updates": []}
    _check_files(old_dir, old)
    _check_files(new_dir, new)
    if keyed:
        return {"method": "primary_key", "note": None,
                **_compare_by_key(con, old_dir, new_dir, old, new, pk_old, common, sample)}
    note = None
    if pk_old != pk_new:
        note = "primary key changed; compared as a multiset of rows"
    elif pk_old:
        note = "primary key columns not stored in both snapshots; compared as a multiset"
    return {"method": "multiset", "note": note, **_compare_multiset(con, old_dir, new_dir, old, new, common)}


def _schema_sql(old_dir: Path, new_dir: Path, old_m: dict, new_m: dict) -> tuple[dict, str, bool]:
    """Which schema SQL files differ (by manifest SHA-256), and a capped unified diff of them."""
    sha_old = {f["path"]: f["sha256"] for f in old_m.get("schema_files", [])}
    sha_new = {f["path"]: f["sha256"] for f in new_m.get("schema_files", [])}
    changed = {p: sha_old.get(p) != sha_new.get(p) for p in (PRE_DATA, POST_DATA)}
    lines: list[str] = []
    for p, differs in changed.items():
        if not differs:
            continue
        a = (old_dir / p).read_text().splitlines(keepends=True) if (old_dir / p).is_file() else []
        b = (new_dir / p).read_text().splitlines(keepends=True) if (new_dir / p).is_file() else []
        lines += difflib.unified_diff(a, b, f"old/{p}", f"new/{p}")
    truncated = len(lines) > SQL_DIFF_LINES
    text = "".join(l if l.endswith("\n") else l + "\n" for l in lines[:SQL_DIFF_LINES])
    return changed, text, truncated


def _side(folder: Path, m: dict) -> dict:
    return {"path": str(folder), "id": m.get("id"), "created_at": m.get("created_at")}


def diff_snapshots(old_path: Path | str, new_path: Path | str, *, sample: int = 5) -> dict:
    """Compare two snapshots: tables added/removed, per-table row changes, schema changes.

    Returns ``old``/``new`` (path, id, created_at), ``tables_added``/``tables_removed``
    (schema, name, rows), ``tables`` (one entry per table in both: rows_old, rows_new,
    inserted, deleted, updated, method, note, sample_updates [{key, changes: {column:
    [old, new]}}] ordered by key text, compared_columns, schema_changes),
    ``schema_sql_changed``, ``schema_sql_files``, ``schema_sql_diff`` (at most
    SQL_DIFF_LINES lines), ``schema_sql_diff_truncated`` and ``totals``.  Values are
    PostgreSQL's text.  Raises SnapshotDamaged when a data file read does not match
    its manifest.
    """
    old_dir, new_dir = Path(old_path), Path(new_path)
    old_m, new_m = mf.read(old_dir), mf.read(new_dir)
    old_t = {mf.table_key(t): t for t in old_m["tables"]}
    new_t = {mf.table_key(t): t for t in new_m["tables"]}

    def brief(t):
        return {"schema": t["schema"], "name": t["name"], "rows": t["rows"]}

    tables = []
    con = _connect()
    try:
        for key, new in new_t.items():
            old = old_t.get(key)
            if old is None:
                continue
            entry = {"schema": new["schema"], "name": new["name"],
                     "rows_old": old["rows"], "rows_new": new["rows"],
                     "primary_key": new.get("primary_key")}
            common = [c for c in old["copy_columns"] if c in set(new["copy_columns"])]
            pk_old, pk_new = old.get("primary_key"), new.get("primary_key")
            keyed = bool(pk_old) and pk_old == pk_new and all(c in common for c in pk_old)
            try:
                entry.update(_compare(con, old_dir, new_dir, old, new, common, keyed, sample))
            except (duckdb.IOException, duckdb.InvalidInputException) as exc:
                raise SnapshotDamaged(f"cannot read the data of {key}: {exc}", [f"{key}: {exc}"],
                                      hint="run `backupkit verify` on both snapshots") from None
            entry["compared_columns"] = common
            entry["schema_changes"] = schema_changes(old, new)
            tables.append(entry)
    finally:
        con.close()
    changed, sql_diff, truncated = _schema_sql(old_dir, new_dir, old_m, new_m)
    return {
        "old": _side(old_dir, old_m),
        "new": _side(new_dir, new_m),
        "tables_added": [brief(t) for k, t in new_t.items() if k not in old_t],
        "tables_removed": [brief(t) for k, t in old_t.items() if k not in new_t],
        "tables": tables,
        "schema_sql_changed": any(changed.values()),
        "schema_sql_files": changed,
        "schema_sql_diff": sql_diff,
        "schema_sql_diff_truncated": truncated,
        "totals": {k: sum(t[k] or 0 for t in tables) for k in ("inserted", "deleted", "updated")},
    }


# -- integrity -----------------------------------------------------------------------------

def _check(check: str, table: str, ok: bool, detail: str, **extra) -> dict:
    return {"check": check, "table": table, "ok": ok, "detail": detail, **extra}


def _pk_check(con, folder: Path, t: dict) -> dict:
    pk = t["primary_key"]
    n = len(pk)
    keys = ", ".join(f"k{i}" for i in range(n))
    src = _source(folder, t, pk)
    any_null = " OR ".join(f"k{i} IS NULL" for i in range(n))
    # Keys with a NULL are counted apart: they are a violation of their own, not duplicates.
    dups = f"SELECT {keys}, count(*) AS c FROM {src} WHERE NOT ({any_null}) GROUP BY {keys} HAVING count(*) > 1"
    nulls, dup_keys, dup_rows = con.execute(
        f"SELECT (SELECT count(*) FROM {src} WHERE {any_null}), count(*), coalesce(sum(c), 0)::BIGINT "
        f"FROM ({dups})").fetchone()
    samples = [dict(zip(pk, r)) for r in con.execute(
        f"SELECT {keys} FROM ({dups}) ORDER BY {keys} LIMIT {SAMPLES}").fetchall()] if dup_keys else []
    ok = not nulls and not dup_keys
    detail = f"primary key ({', '.join(pk)}) unique and not null" if ok else \
        f"{dup_keys} duplicated key values over {dup_rows} rows, {nulls} rows with a NULL key column"
    return _check("primary_key", mf.table_key(t), ok, detail, count=dup_rows + nulls, samples=samples)


def _fk_check(con, folder: Path, t: dict, fk: dict, ref: dict) -> dict:
    cols, ref_cols = fk["columns"], fk["ref_columns"]
    n = len(cols)
    child, parent = _source(folder, t, cols), _source(folder, ref, ref_cols, "r")
    # MATCH SIMPLE: a row with any NULL in the key references nothing.
    not_null = " AND ".join(f"c.k{i} IS NOT NULL" for i in range(n))
    on = " AND ".join(f"c.k{i} = p.r{i}" for i in range(n))
    orphans_sql = (f"SELECT {', '.join(f'c.k{i}' for i in range(n))} FROM {child} AS c "
                   f"WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {on})")
    count = con.execute(f"SELECT count(*) FROM ({orphans_sql})").fetchone()[0]
    samples = [dict(zip(cols, r)) for r in con.execute(
        f"SELECT DISTINCT * FROM ({orphans_sql}) ORDER BY ALL LIMIT {SAMPLES}").fetchall()] if count else []
    target = f"{fk['ref_schema']}.{fk['ref_table']}({', '.join(ref_cols)})"
    detail = (f"{fk['name']}: every ({', '.join(cols)}) found in {target}" if not count else
              f"{fk['name']}: {count} rows reference a missing row of {target}")
    return _check("foreign_key", mf.table_key(t), not count, detail, constraint=fk["name"],
                  count=count, samples=samples)


def _sequence_check(con, folder: Path, seq: dict, t: dict) -> dict:
    column = seq["owned_by"][2]
    name = f"{seq['schema']}.{seq['name']}"
    if column not in t["copy_columns"]:
        return _check("sequence", mf.table_key(t), True, f"{name}: column {column} not stored, not checked")
    top = con.execute(f"SELECT max(TRY_CAST(k0 AS HUGEINT)) FROM {_source(folder, t, [column])}").fetchone()[0]
    # nextval returns last_value + 1 once the sequence was called, else last_value itself.
    following = seq["last_value"] + 1 if seq["is_called"] else seq["last_value"]
    ok = top is None or following > top
    detail = (f"{name}: next value {following} > max({column}) = {top}" if ok else
              f"{name}: next value {following} but max({column}) is {top}; new rows would collide")
    return _check("sequence", mf.table_key(t), ok, detail, sequence=name, next_value=following,
                  max_value=None if top is None else int(top))


def integrity(path: Path | str) -> dict:
    """Checksums plus data checks in DuckDB: primary keys, foreign keys, sequences ahead of their columns.

    Returns ``{"ok", "checksums": VerifyReport.to_dict(), "checks": [{"check", "table",
    "ok", "detail", ...}]}``.  Foreign keys are checked only when both tables are in the
    snapshot, MATCH SIMPLE (a key with a NULL references nothing), comparing PostgreSQL's
    text of the key columns.
    """
    folder = Path(path)
    report = verify(folder)
    result = {"ok": report.ok, "checksums": report.to_dict(), "checks": []}
    try:
        m = mf.read(folder)
    except SnapshotError:  # verify already listed why the manifest is unusable
        result["ok"] = False
        return result
    tables = {(t["schema"], t["name"]): t for t in m["tables"]}
    jobs = []
    for t in m["tables"]:
        if t.get("primary_key") and all(c in t["copy_columns"] for c in t["primary_key"]):
            jobs.append(("primary_key", t, lambda con, t=t: _pk_check(con, folder, t)))
        for fk in t.get("foreign_keys") or []:
            ref = tables.get((fk["ref_schema"], fk["ref_table"]))
            if ref is not None and all(c in ref["copy_columns"] for c in fk["ref_columns"]) \
                    and all(c in t["copy_columns"] for c in fk["columns"]):
                jobs.append(("foreign_key", t, lambda con, t=t, fk=fk, ref=ref: _fk_check(con, folder, t, fk, ref)))
    for s in m.get("sequences") or []:
        owner = s.get("owned_by")
        t = tables.get((owner[0], owner[1])) if owner else None
        if t is not None:
            jobs.append(("sequence", t, lambda con, s=s, t=t: _sequence_check(con, folder, s, t)))
    con = _connect()
    try:
        for check, t, run in jobs:
            try:
                result["checks"].append(run(con))
            except duckdb.Error as exc:
                # A damaged or missing file fails its checks, not the whole report.
                result["checks"].append(_check(check, mf.table_key(t), False, f"could not read the data: {exc}"))
    finally:
        con.close()
    result["ok"] = report.ok and all(c["ok"] for c in result["checks"])
    return result

