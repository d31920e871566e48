"""Comparing two snapshots with DuckDB.

Every table in both snapshots is compared row by row (``diff_rows``: by primary key,
or as a multiset of rows) on PostgreSQL's exact text; the schema SQL, its objects
(``schema_diff``) and the Storage bucket files (``bucket_files``) are compared too.

* A table whose chunk files are byte-identical (the same SHA-256s) is not read.
  Of a table that changed, a file with a byte-identical partner on the other
  side is not read either: the two hold the same rows, which cancel out.  Both
  hold only when the two tables store the same columns in the same order and data
  format (``_same_layout``); otherwise every file is read.

The tables are compared one at a time on one DuckDB connection, spilling to a
private scratch folder (``storage.scratch``, removed at the end, which also holds
the line pass's leftovers).  The files read are checked against the
manifests (sizes, SHA-256 in a background thread while DuckDB reads them, and
the rows DuckDB read), so a damaged file is reported, not diffed.
"""

from __future__ import annotations

import contextlib
import difflib
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
from .diff_lines import match_lines
from .diff_rows import Side, TableComparison, connect
from .schema_diff import read_schema_sql, schema_objects
from .source import readable

#: Lines of unified diff of the schema SQL kept in a diff report.
SQL_DIFF_LINES = 200
#: Rows left unmatched by chunk pairs that a diff keeps in memory before it gives up
#: pairing (rows moved wholesale) and joins the whole table at once, spilling.
MAX_LEFTOVER_ROWS = 1_000_000


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


def _same_layout(old: dict, new: dict) -> bool:
    """Whether equal bytes mean equal rows in both tables: the same stored columns, in the same
    order, in the same data format.

    A file's bytes say which values it holds only given its columns and format: after two
    columns swapped names, or between a CSV and a text-format snapshot (an empty line is NULL
    in one and '' in the other), byte-identical files hold different rows.
    """
    return old["copy_columns"] == new["copy_columns"] and formats.of(old) is formats.of(new)


def _plan(old_dir: mf.SnapshotArg, new_dir: mf.SnapshotArg, old: dict, new: dict) -> tuple[Side, Side] | None:
    """The old and new sides to compare, each table with only the files to read, or None
    when both sides hold byte-identical files and nothing needs reading."""
    if not _same_layout(old, new):
        return Side(old_dir, old, old["rows"]), Side(new_dir, new, new["rows"])
    if Counter(f["sha256"] for f in old["files"]) == Counter(f["sha256"] for f in new["files"]):
        return None
    read = _read_files(old, new)
    if read is None:
        return Side(old_dir, old, old["rows"]), Side(new_dir, new, new["rows"])
    old_side, new_side = (
        Side(folder, {**t, "files": files}, sum(f["rows"] for f in files))
        for folder, t, files in ((old_dir, old, read[0]), (new_dir, new, read[1]))
    )
    return old_side, new_side


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


def _run_tables(
    con: duckdb.DuckDBPyConnection,
    work: list[tuple[str, dict, dict, tuple[Side, Side] | None]],
    checks: dict[str, list[Future]],
    sample: int,
    spill: LocalStorage,
    bar: Any,
) -> dict[str, dict]:
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
            comparison = TableComparison(
                con,
                *sides,
                common=_common(old, new),
                pk=old["primary_key"] if _keyed(old, new) else [],
                sample=sample,
                spill=folder,
                # This module's names, looked up now: the line pass and its limit can be swapped here.
                max_leftover=MAX_LEFTOVER_ROWS,
                line_pass=match_lines,
            )
            results[key] = comparison.run(checks[key])
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
                key: [hasher.submit(_check_files, side.folder, side.table) for side in sides]
                for key, _, _, sides in work
                if sides is not None
            }
            con = connect(str(spill.path()))
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
