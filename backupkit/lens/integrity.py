"""Checking one snapshot's data for integrity with DuckDB: checksums, primary keys,
foreign keys, and sequences ahead of their columns."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import duckdb

from ..errors import SnapshotDamaged, SnapshotError
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..snapshot.verify import verify
from ..storage.location import SnapshotLocation
from .duck import columns_sql, duck_connection
from .schema_diff import read_schema_sql, sequence_increments
from .source import readable

#: Orphan / duplicate rows quoted per integrity check.
SAMPLES = 5


def _check(check: str, table: str, ok: bool, detail: str, **extra) -> dict:
    return {"check": check, "table": table, "ok": ok, "detail": detail, **extra}


def _pk_check(con, folder: mf.SnapshotArg, t: dict) -> dict:
    pk = t["primary_key"]
    n = len(pk)
    keys = ", ".join(f"k{i}" for i in range(n))
    src = columns_sql(folder, t, pk)
    any_null = " OR ".join(f"k{i} IS NULL" for i in range(n))
    # Keys with a NULL are counted apart: they are a violation of their own, not duplicates.
    dups = f"SELECT {keys}, count(*) AS c FROM {src} WHERE NOT ({any_null}) GROUP BY {keys} HAVING count(*) > 1"
    nulls, dup_keys, dup_rows = con.execute(
        f"SELECT (SELECT count(*) FROM {src} WHERE {any_null}), count(*), coalesce(sum(c), 0)::BIGINT FROM ({dups})"
    ).fetchone()
    samples = (
        [
            dict(zip(pk, r, strict=True))
            for r in con.execute(f"SELECT {keys} FROM ({dups}) ORDER BY {keys} LIMIT {SAMPLES}").fetchall()
        ]
        if dup_keys
        else []
    )
    ok = not nulls and not dup_keys
    detail = (
        f"primary key ({', '.join(pk)}) unique and not null"
        if ok
        else f"{dup_keys} duplicated key values over {dup_rows} rows, {nulls} rows with a NULL key column"
    )
    return _check("primary_key", mf.table_key(t), ok, detail, count=dup_rows + nulls, samples=samples)


def _base_types(t: dict, names: list[str]) -> list[str]:
    """The base types (domains resolved) of the named columns of a manifest table."""
    types = {c["name"]: c.get("base_type") or c["type"] for c in t["columns"]}
    return [types.get(name, "text") for name in names]


def _key_text(ref: str, child_type: str, parent_type: str) -> str:
    """SQL for a foreign key column's text as PostgreSQL's equality sees it.

    Texts that differ can be equal values: numeric 1.0 equals 1.00 and integer 1 (a
    numeric(12,2) column references an unconstrained numeric key), and character(n)
    pads with blanks that do not count ('ab  ' references 'ab').
    """
    both = (child_type, parent_type)
    if any(re.fullmatch(r"numeric(\(.*\))?", x) for x in both):
        return f"CASE WHEN contains({ref}, '.') THEN rtrim(rtrim({ref}, '0'), '.') ELSE {ref} END"
    if any(re.fullmatch(r"character(\(\d+\))?|bpchar", x) for x in both):
        return f"rtrim({ref}, ' ')"
    return ref


def _fk_check(con, folder: mf.SnapshotArg, t: dict, fk: dict, ref: dict) -> dict:
    cols, ref_cols = fk["columns"], fk["ref_columns"]
    n = len(cols)
    child, parent = columns_sql(folder, t, cols), columns_sql(folder, ref, ref_cols, "r")
    # MATCH SIMPLE: a row with any NULL in the key references nothing.
    not_null = " AND ".join(f"c.k{i} IS NOT NULL" for i in range(n))
    pairs = zip(_base_types(t, cols), _base_types(ref, ref_cols), strict=True)
    on = " AND ".join(f"{_key_text(f'c.k{i}', a, b)} = {_key_text(f'p.r{i}', a, b)}" for i, (a, b) in enumerate(pairs))
    orphans_sql = (
        f"SELECT {', '.join(f'c.k{i}' for i in range(n))} FROM {child} AS c "
        f"WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {on})"
    )
    count = con.execute(f"SELECT count(*) FROM ({orphans_sql})").fetchone()[0]
    samples = (
        [
            dict(zip(cols, r, strict=True))
            for r in con.execute(f"SELECT DISTINCT * FROM ({orphans_sql}) ORDER BY ALL LIMIT {SAMPLES}").fetchall()
        ]
        if count
        else []
    )
    target = f"{fk['ref_schema']}.{fk['ref_table']}({', '.join(ref_cols)})"
    detail = (
        f"{fk['name']}: every ({', '.join(cols)}) found in {target}"
        if not count
        else f"{fk['name']}: {count} rows reference a missing row of {target}"
    )
    return _check(
        "foreign_key", mf.table_key(t), not count, detail, constraint=fk["name"], count=count, samples=samples
    )


def _sequence_check(con, folder: mf.SnapshotArg, seq: dict, t: dict, step: int = 1) -> dict:
    """Whether the sequence's next value is past every value of its column, in the direction
    it counts (``step``, its INCREMENT BY: a descending sequence must stay below the minimum)."""
    column = seq["owned_by"][2]
    name = f"{seq['schema']}.{seq['name']}"
    if column not in t["copy_columns"]:
        return _check("sequence", mf.table_key(t), True, f"{name}: column {column} not stored, not checked")
    edge = "min" if step < 0 else "max"
    top = con.execute(f"SELECT {edge}(TRY_CAST(k0 AS HUGEINT)) FROM {columns_sql(folder, t, [column])}").fetchone()[0]
    # nextval returns last_value + INCREMENT BY once the sequence was called, else last_value itself.
    following = seq["last_value"] + step if seq["is_called"] else seq["last_value"]
    ok = top is None or (following < top if step < 0 else following > top)
    detail = (
        f"{name}: next value {following} {'<' if step < 0 else '>'} {edge}({column}) = {top}"
        if ok
        else f"{name}: next value {following} but {edge}({column}) is {top}; new rows would collide"
    )
    return _check(
        "sequence",
        mf.table_key(t),
        ok,
        detail,
        sequence=name,
        next_value=following,
        **{f"{edge}_value": None if top is None else int(top)},
    )


def _increments(folder: SnapshotLocation) -> dict[tuple[str | None, str], int]:
    """Each sequence's INCREMENT BY, from the snapshot's schema SQL (the manifest does not record it)."""
    try:
        return sequence_increments(read_schema_sql(folder, mf.PRE_DATA))
    except SnapshotError:  # verify already listed why the schema SQL is unusable
        return {}


def _damaged_files(problems: list[str], m: dict) -> set[str]:
    """The data files ``verify``'s problems name (missing, wrong size or checksum, unreadable)."""
    paths = {f.get("path") for t in m.get("tables") or [] for f in t.get("files") or [] if isinstance(f, dict)}
    out = set()
    for p in problems:
        for path in paths:
            if isinstance(path, str) and (p == f"missing file {path}" or p.startswith(f"{path}:")):
                out.add(path)
    return out


def integrity(path: mf.SnapshotArg, *, identity: encryption.IdentityArg | None = None) -> dict:
    """Checksums plus data checks in DuckDB: primary keys, foreign keys, sequences ahead of their columns.

    Returns ``{"ok", "checksums": VerifyReport.to_dict(), "checks": [{"check", "table",
    "ok", "detail", ...}]}``.  Foreign keys are checked only when both tables are in the
    snapshot, MATCH SIMPLE (a key with a NULL references nothing), comparing PostgreSQL's
    text of the key columns, with numeric's trailing zeros and character(n)'s padding
    left out as PostgreSQL's equality leaves them out (``_key_text``).

    Every data file is hashed first (``verify``); a check whose table has a damaged or
    missing file fails with "not checked" instead of reading it, so no result of a
    data check comes from a file that does not match its manifest.  File paths reach
    DuckDB as exact paths (``duck.path_sql``), never as patterns.
    """
    with contextlib.ExitStack() as stack:  # an encrypted snapshot: a decrypted copy, removed at the end
        return _integrity(readable(path, identity, stack))


def _integrity(folder: SnapshotLocation) -> dict:
    """``integrity`` of a snapshot the lens can read."""
    report = verify(folder)
    checks: list[dict[str, Any]] = []
    result: dict[str, Any] = {"ok": report.ok, "checksums": report.to_dict(), "checks": checks}
    try:
        m = mf.read(folder)
    except SnapshotError:  # verify already listed why the manifest is unusable
        result["ok"] = False
        return result
    tables = {(t["schema"], t["name"]): t for t in m["tables"]}
    #: (check, table, tables whose files it reads, the check itself)
    jobs: list[tuple[str, dict, list[dict], Callable[[duckdb.DuckDBPyConnection], dict]]] = []
    for t in m["tables"]:
        if t.get("primary_key") and all(c in t["copy_columns"] for c in t["primary_key"]):
            jobs.append(("primary_key", t, [t], partial(_pk_check, folder=folder, t=t)))
        for fk in t.get("foreign_keys") or []:
            ref = tables.get((fk["ref_schema"], fk["ref_table"]))
            if (
                ref is not None
                and all(c in ref["copy_columns"] for c in fk["ref_columns"])
                and all(c in t["copy_columns"] for c in fk["columns"])
            ):
                jobs.append(("foreign_key", t, [t, ref], partial(_fk_check, folder=folder, t=t, fk=fk, ref=ref)))
    increments = _increments(folder)
    for s in m.get("sequences") or []:
        owner = s.get("owned_by")
        t = tables.get((owner[0], owner[1])) if owner else None
        if t is not None:
            step = increments.get((s["schema"], s["name"]), 1)
            jobs.append(("sequence", t, [t], partial(_sequence_check, folder=folder, seq=s, t=t, step=step)))
    damaged = _damaged_files(report.problems, m)
    con = duck_connection()
    try:
        for check, t, reads, run in jobs:
            # Only files verify found intact are read: a damaged or missing file fails the
            # checks of its table (and of foreign keys into it), not the whole report, and
            # no count or sample ever comes from it.
            bad = [f["path"] for r in reads for f in r["files"] if f["path"] in damaged]
            if bad:
                checks.append(
                    _check(
                        check, mf.table_key(t), False, f"not checked: damaged data file {', '.join(sorted(set(bad)))}"
                    )
                )
                continue
            try:
                checks.append(run(con))
            except (duckdb.Error, SnapshotDamaged) as exc:
                checks.append(_check(check, mf.table_key(t), False, f"could not read the data: {exc}"))
    finally:
        con.close()
    result["ok"] = report.ok and all(c["ok"] for c in checks)
    return result
