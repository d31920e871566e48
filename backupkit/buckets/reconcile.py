"""Do the ``storage.objects`` rows and the bucket files describe the same files?

A restored database whose rows point at files that are gone is a broken app, so the
backup compares the two in its consistent moment's rows and the files it read, and
records every difference in the manifest (``storage.mismatches``).  Pure: rows and
files in, differences out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import psycopg

#: The kinds of difference, in the order they are reported.
KINDS = ("row_without_file", "file_without_row", "size", "content_type")


@dataclass(frozen=True)
class Row:
    """What one ``storage.objects`` row says of its file."""

    bucket: str
    key: str
    size: int | None
    mimetype: str | None


def reconcile(rows: Iterable[Row], files: Mapping[str, Iterable[Mapping]], buckets: Collection[str]) -> list[dict]:
    """Every difference between ``rows`` and ``files`` (bucket -> its file entries) within
    ``buckets``, ordered by bucket, key and kind (``model.Mismatch`` dicts).

    A row without a size or type says nothing to compare (Storage writes both; a row
    inserted by hand may lack them), so only present values are compared.
    """
    by_key = {(b, f["key"]): f for b, fs in files.items() for f in fs}
    found: list[dict] = []
    seen = set()
    for row in rows:
        if row.bucket not in buckets:
            continue
        seen.add((row.bucket, row.key))
        f = by_key.get((row.bucket, row.key))
        if f is None:
            found.append(_mismatch("row_without_file", row.bucket, row.key))
            continue
        if row.size is not None and row.size != f["size"]:
            found.append(_mismatch("size", row.bucket, row.key, str(row.size), str(f["size"])))
        if row.mimetype is not None and f.get("content_type") is not None and row.mimetype != f["content_type"]:
            found.append(_mismatch("content_type", row.bucket, row.key, row.mimetype, f["content_type"]))
    found += [_mismatch("file_without_row", b, k) for (b, k) in by_key if (b, k) not in seen]
    return sorted(found, key=lambda m: (m["bucket"], m["key"], KINDS.index(m["kind"])))


def _mismatch(kind: str, bucket: str, key: str, row: str | None = None, file: str | None = None) -> dict:
    return {"kind": kind, "bucket": bucket, "key": key, "row": row, "file": file}


def describe(m: Mapping) -> str:
    """One line for a mismatch, as ``backup``, ``verify`` and the report show it."""
    where = f"{m['bucket']}/{m['key']}"
    if m["kind"] == "row_without_file":
        return f"{where}: a storage.objects row, but no file"
    if m["kind"] == "file_without_row":
        return f"{where}: a file, but no storage.objects row"
    what = "size" if m["kind"] == "size" else "content type"
    return f"{where}: the row's {what} is {m['row']}, the file's {m['file']}"


# -- reading the database (in the backup's consistent moment) --------------------------------


def has_storage_tables(conn: psycopg.Connection) -> bool:
    """Whether ``storage.objects`` and ``storage.buckets`` exist and this role may read them."""
    row = conn.execute(
        "SELECT to_regclass('storage.objects') IS NOT NULL AND to_regclass('storage.buckets') IS NOT NULL"
        " AND has_table_privilege('storage.objects', 'SELECT')"
        " AND has_table_privilege('storage.buckets', 'SELECT')"
    ).fetchone()
    return bool(row and row[0])


def read_rows(conn: psycopg.Connection, buckets: Collection[str]) -> list[Row]:
    """The ``storage.objects`` rows of ``buckets``: key, and the size and type Storage recorded."""
    cur = conn.execute(
        "SELECT bucket_id, name, metadata->>'size', metadata->>'mimetype' FROM storage.objects"
        " WHERE bucket_id = ANY(%s) ORDER BY bucket_id, name",
        [list(buckets)],
    )
    return [Row(b, k, int(s) if s is not None and s.isdigit() else None, t) for b, k, s, t in cur]


def read_settings(conn: psycopg.Connection, buckets: Collection[str]) -> dict[str, dict]:
    """Each bucket's ``storage.buckets`` settings (``model.BucketSettings``), by name."""
    cur = conn.execute(
        "SELECT id, public, file_size_limit, allowed_mime_types FROM storage.buckets WHERE id = ANY(%s)",
        [list(buckets)],
    )
    return {
        b: {"public": bool(public), "file_size_limit": limit, "allowed_mime_types": types}
        for b, public, limit, types in cur
    }


@dataclass(frozen=True)
class AtMoment:
    """What the database said of the chosen buckets at the backup's consistent moment: their
    settings and ``storage.objects`` rows (``has_tables`` False: nothing to reconcile with)."""

    names: list[str]
    has_tables: bool
    settings: dict[str, dict]
    rows: list[Row]


def read_at_moment(conn: psycopg.Connection, names: list[str]) -> AtMoment:
    """Read ``names``' settings and rows in ``conn``'s transaction (the consistent moment's)."""
    there = has_storage_tables(conn)
    return AtMoment(names, there, read_settings(conn, names) if there else {}, read_rows(conn, names) if there else [])
