"""DuckDB views over a snapshot: awkward values read exactly, types as documented in backupkit.lens.duck."""

from __future__ import annotations

import math
from decimal import Decimal

import psycopg
import pytest

import backupkit
from backupkit.lens.duck import duck_type, ident, open_snapshot, relation_sql
from backupkit.snapshot import formats

SCHEMA = r"""
SET TimeZone = 'UTC';
CREATE TYPE mood AS ENUM ('sad', 'ok', 'it''s "complicated"');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE awkward (
    id      int PRIMARY KEY,
    s       text,
    vc      varchar(20),
    money12 numeric(12,2),
    big     numeric,
    wide    numeric(50,10),
    f8      double precision,
    f4      real,
    ts      timestamptz,
    tsn     timestamp(3),
    d       date,
    tm      time,
    j       jsonb,
    js      json,
    u       uuid,
    ia      int[],
    ta      text[],
    b       bytea,
    ok      boolean,
    m       mood,
    p       posint,
    iv      interval,
    i8      bigint,
    twice   int GENERATED ALWAYS AS (id * 2) STORED
);
INSERT INTO awkward (id, s, vc, money12, big, wide, f8, f4, ts, tsn, d, tm, j, js, u, ia, ta, b, ok, m, p, iv, i8)
VALUES
 (1, '', '', 1234567890.12, '12345678901234567890123456789012345678901234567890.123456789',
     '1234567890123456789012345678901234567890.0123456789', 'NaN', '-Infinity',
     '2024-02-29 23:59:59.123456+05:30', '2024-01-02 03:04:05.678', '2024-01-02', '24:00:00',
     '{"k": "v", "n": 1, "nested": {"a": [1, 2]}}', '{"a":  1,  "a": 2}',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,NULL,3}',
     ARRAY['a,b', NULL, 'NULL', '', 'x"y', 'back\slash', ' sp ', '{br}', e'new\nline'],
     '\x00ff10', true, 'it''s "complicated"', 7, '1 year 2 mons -3 days 04:05:06.5', -9223372036854775808),
 (2, NULL, NULL, NULL, 'NaN', NULL, 'Infinity', '1e-45', 'infinity', '-infinity', '0044-03-15 BC', '00:00:00',
     'null', 'null', NULL, '{}', '{}', '\x', false, NULL, NULL, NULL, NULL),
 (3, e'a "q", b\nnewline, \\N and ''single''', 'comma,quote"', -0.01, '-1e-30', -0.5, 1.7976931348623157e308, 3.4e38,
     '0001-01-01 00:00:00+00 BC', '2000-01-01 00:00:00', 'infinity', '12:34:56.789', '"just a string"',
     '[1, 2.50, 1e400]',
     '00000000-0000-0000-0000-000000000000', '{{1,2},{3,4}}', '{NULL}', NULL, NULL, 'sad', 1, '-1 days +02:00:00', 0),
 (4, '""', 'NULL', 0, '0.00000000000000000000000000000000000000000000000001', 0, -0.0, 0.1,
     '1970-01-01 00:00:00+00', '294276-12-31 23:59:59', '5874897-12-31', NULL, '[]', '{}',
     NULL, NULL, NULL, '\x5c0022', NULL, 'ok', NULL, '0', 9223372036854775807);

CREATE TABLE empty_table (id int PRIMARY KEY, t text);
-- DuckDB matches names case-insensitively: only the first of these gets a view.
CREATE TABLE "Mixed" (id int);
INSERT INTO "Mixed" VALUES (1);
CREATE TABLE mixed (id int);
INSERT INTO mixed VALUES (1), (2);

CREATE SCHEMA "odd schema.x";
CREATE TABLE "odd schema.x"."Tab ""quoted"".name" ("col, one" int, "Col ""Two"" x" text, "CASE" text);
INSERT INTO "odd schema.x"."Tab ""quoted"".name" VALUES (1, 'a', 'x'), (1, 'a', 'x'), (2, NULL, '');

CREATE TABLE chunked (id int PRIMARY KEY, v text, n numeric(10,3));
INSERT INTO chunked SELECT g, 'row ' || g || repeat(',"', g % 3), g / 7.0 FROM generate_series(1, 50000) g;
"""

#: What DuckDB's typeof() says for each column (the mapping documented in backupkit.lens.duck).
EXPECTED_TYPES = {
    "id": "INTEGER",
    "s": "VARCHAR",
    "vc": "VARCHAR",
    "money12": "DECIMAL(12,2)",
    "big": "VARCHAR",
    "wide": "VARCHAR",
    "f8": "DOUBLE",
    "f4": "FLOAT",
    "ts": "TIMESTAMP WITH TIME ZONE",
    "tsn": "TIMESTAMP",
    "d": "DATE",
    "tm": "TIME",
    "j": "JSON",
    "js": "JSON",
    "u": "UUID",
    "ia": "INTEGER[]",
    "ta": "VARCHAR[]",
    "b": "BLOB",
    "ok": "BOOLEAN",
    "m": "VARCHAR",
    "p": "INTEGER",
    "iv": "VARCHAR",
    "i8": "BIGINT",
}
COLUMNS = list(EXPECTED_TYPES)
#: The session settings backups write with, so PostgreSQL's ::text matches the files.
SESSION = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3"


@pytest.fixture(scope="module")
def snap(pg_server, tmp_path_factory):
    """A database with awkward values and its snapshot (the chunked table split into several files)."""
    dsn = pg_server.createdb("duck")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute("ANALYZE")
        result = backupkit.backup(
            dsn,
            tmp_path_factory.mktemp("snaps"),
            schemas=["public", "odd schema.x"],
            label="awkward",
            chunk_bytes=256 * 1024,
            progress=False,
        )
        yield dsn, result
    finally:
        pg_server.dropdb(dsn)


def pg_rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        conn.execute(SESSION)
        return conn.execute(query).fetchall()


def test_counts_match_postgres(snap):
    dsn, result = snap
    con = open_snapshot(result.path)
    views = {(s, n): v for s, n, v in con.execute("SELECT schema, name, view FROM backupkit.tables").fetchall()}
    for t in result.manifest["tables"]:
        rel = f"{ident(t['schema'])}.{ident(t['name'])}"
        source = rel if views[t["schema"], t["name"]] else f"({relation_sql(result.path, t)})"
        assert (
            con.execute(f"SELECT count(*) FROM {source}").fetchone()[0]
            == pg_rows(dsn, f"SELECT count(*) FROM {rel}")[0][0]
        )
    assert views["public", "Mixed"] == '"public"."Mixed"' and views["public", "mixed"] is None
    listed = con.execute("SELECT schema, name, rows, files, primary_key FROM backupkit.tables").fetchall()
    assert ("public", "awkward", 4, 1, ["id"]) in listed
    assert ("odd schema.x", 'Tab "quoted".name', 3, 1, None) in listed


def test_types_are_as_documented(snap):
    _, result = snap
    con = open_snapshot(result.path)
    got = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = 'awkward'"
        ).fetchall()
    )
    assert got == EXPECTED_TYPES  # the generated column is not stored, so not in the view
    typeofs = con.execute(
        "SELECT " + ", ".join(f"typeof({c})" for c in COLUMNS) + " FROM public.awkward LIMIT 1"
    ).fetchone()
    assert dict(zip(COLUMNS, typeofs, strict=True)) == EXPECTED_TYPES
    entry = next(t for t in result.manifest["tables"] if t["name"] == "awkward")
    assert {c["name"]: duck_type(c["base_type"]) for c in entry["columns"] if not c["generated"]} == EXPECTED_TYPES


def test_raw_mode_is_postgres_text_exactly(snap):
    dsn, result = snap
    con = open_snapshot(result.path, raw=True)
    duck = con.execute("SELECT * FROM public.awkward ORDER BY id::INT").fetchall()
    # COPY writes booleans as t/f where ::text says true/false.
    texts = [f"{c}::text" if c != "ok" else "CASE WHEN ok THEN 't' WHEN NOT ok THEN 'f' END" for c in COLUMNS]
    pg = pg_rows(dsn, "SELECT " + ", ".join(texts) + " FROM awkward ORDER BY id")
    assert duck == pg
    types = con.execute("SELECT DISTINCT data_type FROM information_schema.columns WHERE table_name = 'awkward'")
    assert types.fetchall() == [("VARCHAR",)]


def test_empty_string_and_null_stay_distinct(snap):
    dsn, result = snap
    for raw in (False, True):
        con = open_snapshot(result.path, raw=raw)
        got = con.execute("SELECT id, s IS NULL, s = '', vc IS NULL, vc FROM public.awkward ORDER BY id").fetchall()
        got = [(int(r[0]), *r[1:]) for r in got]
        assert got == pg_rows(dsn, "SELECT id, s IS NULL, s = '', vc IS NULL, vc FROM awkward ORDER BY id")
        assert got[0][2] is True and got[1][1] is True  # '' in row 1, NULL in row 2
    odd = (
        open_snapshot(result.path)
        .execute('SELECT "CASE", "CASE" IS NULL FROM "odd schema.x"."Tab ""quoted"".name" ORDER BY "col, one"')
        .fetchall()
    )
    assert odd == [("x", False), ("x", False), ("", False)]


def test_numeric_is_exact(snap):
    dsn, result = snap
    con = open_snapshot(result.path)
    duck = con.execute("SELECT id, money12::VARCHAR, big, wide FROM public.awkward ORDER BY id").fetchall()
    assert duck == pg_rows(dsn, "SELECT id, money12::text, big::text, wide::text FROM awkward ORDER BY id")
    assert con.execute("SELECT money12 FROM public.awkward WHERE id = 1").fetchone()[0] == Decimal("1234567890.12")
    assert duck[0][2] == "12345678901234567890123456789012345678901234567890.123456789"
    assert duck[1][2] == "NaN"
    chunked = con.execute("SELECT sum(n)::VARCHAR, typeof(any_value(n)) FROM public.chunked").fetchone()
    assert chunked == (pg_rows(dsn, "SELECT sum(n)::text FROM chunked")[0][0], "DECIMAL(10,3)")


def test_floats_and_temporal_values(snap):
    _, result = snap
    con = open_snapshot(result.path)
    f8, f4 = zip(*con.execute("SELECT f8, f4 FROM public.awkward ORDER BY id").fetchall(), strict=True)
    assert math.isnan(f8[0]) and f8[1] == math.inf and f8[2] == 1.7976931348623157e308 and f4[0] == -math.inf
    rows = con.execute(
        "SELECT id, ts::VARCHAR, isinf(ts), tsn::VARCHAR, d::VARCHAR, tm::VARCHAR FROM public.awkward ORDER BY id"
    ).fetchall()
    assert rows == [
        (1, "2024-02-29 18:29:59.123456+00", False, "2024-01-02 03:04:05.678", "2024-01-02", "24:00:00"),
        (2, "infinity", True, "-infinity", "0044-03-15 (BC)", "00:00:00"),
        (3, "0001-01-01 (BC) 00:00:00+00", False, "2000-01-01 00:00:00", "infinity", "12:34:56.789"),
        # beyond DuckDB's timestamp range: NULL in the typed view, the text in raw mode
        (4, "1970-01-01 00:00:00+00", False, None, "5874897-12-31", None),
    ]
    raw = open_snapshot(result.path, raw=True)
    assert raw.execute("SELECT tsn FROM public.awkward WHERE id = '4'").fetchone()[0] == "294276-12-31 23:59:59"


def test_json_uuid_bytea_bool(snap):
    dsn, result = snap
    con = open_snapshot(result.path)
    got = con.execute(
        "SELECT id, j->>'k', j->'nested'->'a'->>1, js::VARCHAR, u::VARCHAR, b, ok FROM public.awkward ORDER BY id"
    ).fetchall()
    assert got == pg_rows(
        dsn, "SELECT id, j->>'k', j->'nested'->'a'->>1, js::text, u::text, b, ok FROM awkward ORDER BY id"
    )
    assert got[0][1:3] == ("v", "2") and got[0][5] == b"\x00\xff\x10" and got[1][5] == b""
    types = con.execute("SELECT json_type(j) FROM public.awkward ORDER BY id").fetchall()
    assert types == [("OBJECT",), ("NULL",), ("VARCHAR",), ("ARRAY",)]
    assert con.execute("SELECT count(*) FROM public.awkward WHERE j->>'k' = 'v'").fetchone()[0] == 1


def test_arrays_become_lists(snap):
    dsn, result = snap
    con = open_snapshot(result.path)
    got = con.execute("SELECT id, ia, ta FROM public.awkward ORDER BY id").fetchall()
    pg = pg_rows(dsn, "SELECT id, ia, ta FROM awkward ORDER BY id")
    # psycopg parses PostgreSQL arrays itself: an independent reading of the same values.
    assert [r for r in got if r[0] != 3] == [r for r in pg if r[0] != 3]
    assert got[0][2] == ["a,b", None, "NULL", "", 'x"y', "back\\slash", " sp ", "{br}", "new\nline"]
    # A 2-D value cannot be a 1-D LIST: NULL in the typed view, the text in raw mode.
    assert got[2] == (3, None, [None])
    raw = open_snapshot(result.path, raw=True)
    assert raw.execute("SELECT ia FROM public.awkward WHERE id = '3'").fetchone()[0] == "{{1,2},{3,4}}"


def test_odd_names_are_quoted(snap):
    dsn, result = snap
    con = open_snapshot(result.path)
    got = con.execute(
        'SELECT "col, one", "Col ""Two"" x" FROM "odd schema.x"."Tab ""quoted"".name" ORDER BY 1, 2 NULLS LAST'
    ).fetchall()
    assert got == pg_rows(
        dsn, 'SELECT "col, one", "Col ""Two"" x" FROM "odd schema.x"."Tab ""quoted"".name" ORDER BY 1, 2 NULLS LAST'
    )
    assert con.execute("SELECT count(*) FROM public.empty_table").fetchone()[0] == 0


def test_chunked_table_reads_every_row_once(snap):
    dsn, result = snap
    entry = next(t for t in result.manifest["tables"] if t["name"] == "chunked")
    assert len(entry["files"]) > 1
    con = open_snapshot(result.path)
    got = con.execute("SELECT count(*), count(DISTINCT id), sum(id), sum(length(v)) FROM public.chunked").fetchone()
    assert got == pg_rows(dsn, "SELECT count(*), count(DISTINCT id), sum(id), sum(length(v)) FROM chunked")[0]
    assert got[0] == 50000
    assert con.execute("SELECT v FROM public.chunked WHERE id = 5").fetchone()[0] == "row 5" + ',"' * 2


ESCAPES = r"""
CREATE TABLE esc (id int PRIMARY KEY, v text);
INSERT INTO esc VALUES (1, e'tab\there'), (2, e'cr\rlf\n'), (3, e'\b\f\v'), (4, e'back\\slash'),
  (5, e'\\N'), (6, e'\\\\N'), (7, e'\\n is not a newline'), (8, e'\\'), (9, ''), (10, NULL),
  (11, e'\x01 and \x02'), (12, 'trailing  ');
CREATE TABLE one_column (v text);
INSERT INTO one_column VALUES (''), (NULL), ('x'), (''), (e'\\N');
CREATE TABLE cr_first (v text);
INSERT INTO cr_first VALUES (e'a\rb'), ('c'), (e'd\r');
"""


@pytest.mark.parametrize("data_format", ["text", "csv"])
def test_every_escape_reads_back_exactly_in_either_data_format(make_db, tmp_path, monkeypatch, data_format):
    # New snapshots use COPY's text format (backslash escapes, \N for NULL, '' as an empty
    # field, so a one-column row of '' is an empty line); snapshots from before 2026-12 are
    # CSV. DuckDB must give back each value as PostgreSQL has it, in both.
    monkeypatch.setattr("backupkit.snapshot.formats.WRITTEN", formats.named(data_format))
    dsn = make_db("escapes")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ESCAPES)
    snap = backupkit.backup(dsn, tmp_path, progress=False)
    assert {t["data_format"] for t in snap.manifest["tables"]} == {data_format}
    con = open_snapshot(snap.path, raw=True)
    assert con.execute("SELECT id::INT, v FROM public.esc ORDER BY 1").fetchall() == pg_rows(
        dsn, "SELECT id, v FROM esc ORDER BY id"
    )
    for table in ("one_column", "cr_first"):
        assert sorted(con.execute(f"SELECT v FROM public.{table}").fetchall(), key=repr) == sorted(
            pg_rows(dsn, f"SELECT v FROM {table}"), key=repr
        )
    assert backupkit.verify(snap.path, deep=True).ok
