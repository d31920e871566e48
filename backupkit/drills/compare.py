"""Is the restored database what the snapshot recorded?  Rows, their text, sequences, objects.

Each data file's entry records ``text_hash``: the xxh3-128 of the COPY text it held when
the backup read it.  A drill restores the snapshot in one transaction (one COPY stream per
table, files in order, into a new table), so a plain ``COPY table TO`` of the restored
table yields the same text in the same order, file after file; it is cut at each file's
``text_bytes`` and hashed piece by piece.  A file whose stored bytes were replaced (and
the manifest resealed so ``verify`` passes) loads other rows, and its hash says so.

On Supabase row-level security is the public API's security boundary, so a table that came
back without it (or without one of its policies) is a difference like a lost row: each
table's ``rls`` flags are compared with the manifest's, and the policies of the snapshot's
tables in its schema archive with ``pg_policies``.  The decisions (``rls_differences``,
``policy_differences``, ``archive_policies``) are pure; the rest reads the database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from ..pg.copyio import TEXT_HASH, copy_source, text_hasher
from ..pg.schema import render, toc, unquote_ident
from ..snapshot import manifest as mf


def piece_hashes(blocks: Iterable[bytes], sizes: list[int]) -> Iterator[str]:
    """``TEXT_HASH``-prefixed hashes of consecutive pieces of ``sizes`` bytes of the stream
    ``blocks``, then one more of whatever follows the last piece (only if anything does)."""
    sizes = list(sizes)
    h, left, extra = text_hasher(), sizes.pop(0) if sizes else None, False
    for block in blocks:
        view = memoryview(block)
        while view:
            if left is None:  # past every piece: rows the snapshot did not have
                h.update(view)
                extra = True
                break
            take = min(left, len(view))
            h.update(view[:take])
            view, left = view[take:], left - take
            if left == 0:
                yield TEXT_HASH + h.hexdigest()
                h, left = text_hasher(), sizes.pop(0) if sizes else None
    while left is not None:  # the stream ended early: the remaining pieces are short
        yield TEXT_HASH + h.hexdigest()
        h, left = text_hasher(), sizes.pop(0) if sizes else None
    if extra:
        yield TEXT_HASH + h.hexdigest()


def _copy_blocks(conn: psycopg.Connection, table: dict) -> Iterator[bytes]:
    with conn.cursor().copy(copy_source(table)) as copy:
        for block in copy:
            yield bytes(block)


def table_differences(conn: psycopg.Connection, table: dict) -> list[str]:
    """How the restored ``table`` differs from its manifest entry: row count and text hashes."""
    key = mf.table_key(table)
    files = table["files"]
    (rows,) = conn.execute(
        sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(table["schema"], table["name"]))
    ).fetchone() or (0,)
    found = []
    if rows != table["rows"]:
        found.append(f"{key}: {rows} rows restored, the snapshot has {table['rows']}")
    if not files or any("text_hash" not in f or "text_bytes" not in f for f in files):
        return found  # a snapshot from before text hashes: rows counted, text not checked
    got = list(piece_hashes(_copy_blocks(conn, table), [f["text_bytes"] for f in files]))
    for f, h in zip(files, got, strict=False):
        if h != f["text_hash"]:
            found.append(f"{key}: the rows restored from {f['path']} are not the rows backed up (text hash differs)")
    if len(got) > len(files):
        found.append(f"{key}: more rows restored than the snapshot's files held")
    return found


def sequence_differences(conn: psycopg.Connection, sequences: list[dict]) -> list[str]:
    """Sequences whose restored value is not the one recorded, or is behind the rows of the
    column that owns it (the next insert would collide with a restored row)."""
    found = []
    for s in sequences:
        label = f"sequence {s['schema']}.{s['name']}"
        name = sql.Identifier(s["schema"], s["name"])
        try:
            with conn.transaction():  # a savepoint: a missing sequence leaves the session as it was
                row = conn.execute(
                    sql.SQL(
                        "SELECT last_value, is_called,"
                        " (SELECT seqincrement FROM pg_catalog.pg_sequence WHERE seqrelid = {}::regclass) FROM {}"
                    ).format(sql.Literal(name.as_string(conn)), name)
                ).fetchone()
        except psycopg.errors.UndefinedTable:
            found.append(f"{label}: missing")
            continue
        if row is None:
            continue
        value, called, increment = int(row[0]), bool(row[1]), int(row[2] or 1)
        if (value, called) != (int(s["last_value"]), bool(s["is_called"])):
            found.append(
                f"{label}: {value} (called: {called}) restored, "
                f"the snapshot has {s['last_value']} (called: {s['is_called']})"
            )
        owner = s.get("owned_by")
        if owner and increment > 0:
            largest = _largest(conn, owner)
            following = value + increment if called else value
            if largest is not None and following <= largest:
                found.append(
                    f"{label}: its next value {following} is not above the largest "
                    f"{owner[0]}.{owner[1]}.{owner[2]} restored ({largest}): the next insert would collide"
                )
    return found


def _largest(conn: psycopg.Connection, owner: list[str]) -> int | None:
    """The largest value of the column a sequence belongs to (None: no rows, or not a number)."""
    query = sql.SQL("SELECT max({})::numeric FROM {}").format(
        sql.Identifier(owner[2]), sql.Identifier(owner[0], owner[1])
    )
    try:
        with conn.transaction():
            row = conn.execute(query).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        raise  # row-level security hides rows from this role: the caller says so (never "no rows")
    except psycopg.Error:  # a column a sequence fills but that max() or numeric does not take
        return None
    return None if row is None or row[0] is None else int(row[0])


def object_differences(conn: psycopg.Connection, tables: list[dict]) -> list[str]:
    """Tables, indexes and foreign keys the snapshot recorded that the restored database lacks."""
    found = []
    for t in tables:
        key = mf.table_key(t)
        regclass = sql.Identifier(t["schema"], t["name"]).as_string(conn)
        if conn.execute("SELECT to_regclass(%s)", [regclass]).fetchone() == (None,):
            found.append(f"{key}: table missing")
            continue
        plain = {
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = %s::regclass",
                [regclass],
            )
        }
        found += [f"{key}: index {i} missing" for i in t.get("indexes", []) if i not in plain]
        constraints = {
            n for (n,) in conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass", [regclass])
        }
        found += [
            f"{key}: foreign key {fk['name']} missing"
            for fk in t.get("foreign_keys", [])
            if fk.get("name") and fk["name"] not in constraints
        ]
        flags = conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass", [regclass]
        ).fetchone()
        if flags is not None:
            found += rls_differences(t, enabled=bool(flags[0]), forced=bool(flags[1]))
    return found


def row_security_applies(conn: psycopg.Connection, tables: list[dict]) -> list[str]:
    """``schema.name`` of the ``tables`` whose rows row-level security filters for this session's
    role (it is not a superuser, has no BYPASSRLS, and the table is forced or another role's)."""
    names = [sql.Identifier(t["schema"], t["name"]).as_string(conn) for t in tables]
    rows = conn.execute(
        "SELECT n FROM unnest(%s::text[]) WITH ORDINALITY AS u(n, i)"
        " WHERE to_regclass(n) IS NOT NULL AND row_security_active(to_regclass(n)) ORDER BY i",
        [names],
    )
    keyed = dict(zip(names, (mf.table_key(t) for t in tables), strict=True))
    return [keyed[n] for (n,) in rows]


def rls_differences(table: dict, *, enabled: bool, forced: bool) -> list[str]:
    """How the restored ``table``'s row-level security (``pg_class.relrowsecurity``,
    ``relforcerowsecurity``) differs from its manifest entry's ``rls`` (none recorded: nothing)."""
    rls = table.get("rls")
    if not isinstance(rls, dict):
        return []  # a snapshot from before rls was recorded
    key = mf.table_key(table)
    found = []
    if bool(rls.get("enabled")) and not enabled:
        found.append(f"{key}: row-level security lost (enabled in the snapshot, off in the restored table)")
    elif enabled and not rls.get("enabled"):
        found.append(f"{key}: row-level security enabled in the restored table, off in the snapshot")
    if bool(rls.get("forced")) and not forced:
        found.append(f"{key}: FORCE ROW LEVEL SECURITY lost (forced in the snapshot, not in the restored table)")
    elif forced and not rls.get("forced"):
        found.append(f"{key}: FORCE ROW LEVEL SECURITY set in the restored table, not in the snapshot")
    return found


#: An identifier as pg_dump writes it: quoted (doubled quotes inside), or plain.
_IDENT = r'(?:"(?:[^"]|"")*"|[^\s".]+)'
#: The start of each CREATE POLICY statement pg_restore renders: name, schema, table.
_CREATE_POLICY = re.compile(rf"^CREATE POLICY ({_IDENT}) ON ({_IDENT})\.({_IDENT})", re.M)

Policy = tuple[str, str, str]


def policies_in(script: str) -> set[Policy]:
    """(schema, table, policy) of every CREATE POLICY in pg_restore's rendering ``script``.

    Read from the SQL, not from ``pg_restore --list``: its "table policy" tag is ambiguous when
    a name holds a space, the SQL quotes every name that needs it."""
    return {
        (unquote_ident(schema), unquote_ident(table), unquote_ident(name))
        for name, schema, table in _CREATE_POLICY.findall(script)
    }


def archive_policies(dump: Path) -> set[Policy]:
    """(schema, table, policy) of the policies in the schema archive ``dump`` (its POLICY entries)."""
    entries = [e for e in toc(dump) if e.type == "POLICY"]
    return policies_in(render(dump, "post-data", entries)) if entries else set()


def restored_policies(conn: psycopg.Connection) -> set[Policy]:
    """(schema, table, policy) of every policy in the restored database."""
    rows = conn.execute("SELECT schemaname::text, tablename::text, policyname::text FROM pg_catalog.pg_policies")
    return {(s, t, p) for s, t, p in rows}


def policy_differences(tables: list[dict], recorded: set[Policy], restored: set[Policy]) -> list[str]:
    """Policies of the snapshot's ``tables`` that are ``recorded`` (in its schema archive) but
    not ``restored``, or restored but not recorded (a policy nobody wrote can widen access)."""
    keys = {(t["schema"], t["name"]) for t in tables}
    found = []
    for s, t, p in sorted(recorded - restored):
        if (s, t) in keys:
            found.append(f"{s}.{t}: policy {sql.Identifier(p).as_string()} missing")
    for s, t, p in sorted(restored - recorded):
        if (s, t) in keys:
            found.append(f"{s}.{t}: policy {sql.Identifier(p).as_string()} not in the snapshot")
    return found
