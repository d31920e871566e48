"""The DuckDB lens must not be silently wrong: a diff that says "same" when rows differ,
differences that are not there, or values that are not what PostgreSQL held."""

from __future__ import annotations

import psycopg
import pytest

import backupkit
from backupkit.lens.diff import diff_snapshots
from backupkit.lens.duck import open_snapshot
from backupkit.lens.integrity import integrity
from backupkit.snapshot import formats


def changes(diff: dict, name: str) -> tuple:
    t = next(t for t in diff["tables"] if t["name"] == name)
    return t["inserted"], t["deleted"], t["updated"]


def test_columns_that_swapped_names_are_changed_rows(make_db, tmp_path):
    """A migration swaps the names of two columns (a <-> b): every row now holds other values
    in `a` and `b`, but the data files are byte for byte the same. The diff said 0 inserted,
    0 deleted, 0 updated ("identical") for those tables."""
    dsn = make_db("swap")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE keyed (id int PRIMARY KEY, a text, b text); "
            "INSERT INTO keyed SELECT g, 'a' || g, 'b' || g FROM generate_series(1, 50) g; "
            "CREATE TABLE bag (a text, b text); "
            "INSERT INTO bag SELECT 'a' || g, 'b' || g FROM generate_series(1, 50) g"
        )
    before = backupkit.backup(dsn, tmp_path, label="before", progress=False).path
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in ("keyed", "bag"):
            conn.execute(
                f"ALTER TABLE {t} RENAME a TO tmp; ALTER TABLE {t} RENAME b TO a; ALTER TABLE {t} RENAME tmp TO b"
            )
    after = backupkit.backup(dsn, tmp_path, label="after", progress=False).path
    diff = diff_snapshots(before, after, progress=False)
    assert changes(diff, "keyed") == (0, 0, 50)
    assert changes(diff, "bag") == (50, 50, None)
    sample = next(t for t in diff["tables"] if t["name"] == "keyed")["sample_updates"][0]
    assert sample == {"key": {"id": "1"}, "changes": {"a": ["a1", "b1"], "b": ["b1", "a1"]}}


def test_a_csv_snapshot_against_a_text_one_compares_values_not_bytes(make_db, tmp_path, monkeypatch):
    """A one-column table in a snapshot from before 2026-12 (CSV) against a new one (COPY text):
    an empty line is NULL in CSV and '' in text, `a\\\\b` is two backslashes in CSV and one in
    text. NULL became '' and a value lost a backslash, yet the files were byte-identical and the
    diff said the snapshots were the same."""
    dsn = make_db("formats")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(r"CREATE TABLE tags (v text); INSERT INTO tags VALUES (NULL), ('x'), (E'a\\\\b')")
    monkeypatch.setattr("backupkit.snapshot.formats.WRITTEN", formats.named("csv"))
    old = backupkit.backup(dsn, tmp_path, label="csv", progress=False).path
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(r"TRUNCATE tags; INSERT INTO tags VALUES (''), ('x'), (E'a\\b')")
    monkeypatch.setattr("backupkit.snapshot.formats.WRITTEN", formats.named("text"))
    new = backupkit.backup(dsn, tmp_path, label="text", progress=False).path
    diff = diff_snapshots(old, new, progress=False)
    assert changes(diff, "tags") == (2, 2, None)
    assert diff["same"] is False


@pytest.mark.parametrize("data_format", ["text", "csv"])
def test_a_value_starting_with_a_byte_order_mark_keeps_it_at_the_start_of_a_file(
    make_db, tmp_path, monkeypatch, data_format
):
    """Text imported from a Windows file often starts with U+FEFF. When such a value was the
    first of a data file, DuckDB dropped it as the file's byte order mark: the SQL view showed
    'x' for '\\ufeffx', and a diff saw no change when the mark was removed."""
    monkeypatch.setattr("backupkit.snapshot.formats.WRITTEN", formats.named(data_format))
    dsn = make_db("bom")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bag (v text, w text); "
            "INSERT INTO bag VALUES (E'\\uFEFFx', E'two\\nlines'), ('x', E'two\\nlines'), ('y', NULL); "
            "CREATE TABLE keyed (k text PRIMARY KEY, n int); "
            "INSERT INTO keyed VALUES (E'\\uFEFFA', 0); "
            "INSERT INTO keyed SELECT 'k' || g, g FROM generate_series(1, 50) g"
        )
    before = backupkit.backup(dsn, tmp_path, label="before", progress=False)
    assert {t["data_format"] for t in before.manifest["tables"]} == {data_format}
    with open_snapshot(before.path) as con:
        got = con.execute("SELECT v, w FROM public.bag ORDER BY v, w").fetchall()
        assert got == [("x", "two\nlines"), ("y", None), ("\ufeffx", "two\nlines")]
        assert con.execute("SELECT k, n FROM public.keyed WHERE n = 0").fetchall() == [("\ufeffA", 0)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE bag; INSERT INTO bag VALUES ('x', E'two\\nlines'), ('x', E'two\\nlines'), ('y', NULL); "
            "UPDATE keyed SET k = 'A' WHERE n = 0"
        )
    after = backupkit.backup(dsn, tmp_path, label="after", progress=False).path
    diff = diff_snapshots(before.path, after, progress=False)
    assert changes(diff, "bag") == (1, 1, None)
    assert changes(diff, "keyed") == (1, 1, 0)


def test_foreign_keys_compare_values_as_postgresql_does(make_db, tmp_path):
    """A numeric(10,2) column referencing an unconstrained numeric key (1.00 references 1),
    and a character(4) column referencing a text key ('ab  ' references 'ab'): PostgreSQL
    enforces both constraints, yet `integrity` said every row referenced a missing row and
    the snapshot was not ok. A real orphan must still be found."""
    dsn = make_db("fks")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE price (amount numeric PRIMARY KEY); INSERT INTO price VALUES (1), (2.5), (10.0); "
            "CREATE TABLE line (id int PRIMARY KEY, amount numeric(10,2) REFERENCES price); "
            "INSERT INTO line VALUES (1, 1), (2, 2.5), (3, 10); "
            "CREATE TABLE code (c text PRIMARY KEY); INSERT INTO code VALUES ('ab'); "
            "CREATE TABLE coded (id int PRIMARY KEY, c char(4) REFERENCES code); INSERT INTO coded VALUES (1, 'ab')"
        )
    clean = integrity(backupkit.backup(dsn, tmp_path, label="clean", progress=False).path)
    assert clean["ok"] is True, [c for c in clean["checks"] if not c["ok"]]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE line DROP CONSTRAINT line_amount_fkey; INSERT INTO line VALUES (4, 100); "
            "ALTER TABLE line ADD CONSTRAINT line_amount_fkey FOREIGN KEY (amount) REFERENCES price NOT VALID"
        )
    orphan = integrity(backupkit.backup(dsn, tmp_path, label="orphan", progress=False).path)
    fk = next(c for c in orphan["checks"] if c.get("constraint") == "line_amount_fkey")
    assert (fk["ok"], fk["count"], fk["samples"]) == (False, 1, [{"amount": "100.00"}])


def test_a_descending_sequence_is_checked_against_the_smallest_value(make_db, tmp_path):
    """A sequence counting down (INCREMENT BY -1) hands out -1, -2, ...: its next value must be
    below every value of its column. `integrity` compared it with the largest value and said
    "new rows would collide" about a healthy table; an identity column counting up by 10 got a
    wrong next value. A sequence that would really collide is still found."""
    dsn = make_db("seqs")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE down (id int PRIMARY KEY); CREATE SEQUENCE down_seq INCREMENT BY -1 OWNED BY down.id; "
            "ALTER TABLE down ALTER id SET DEFAULT nextval('down_seq'); "
            "INSERT INTO down DEFAULT VALUES; INSERT INTO down DEFAULT VALUES; "
            "CREATE TABLE up (id int GENERATED ALWAYS AS IDENTITY (INCREMENT BY 10) PRIMARY KEY, v int); "
            "INSERT INTO up (v) VALUES (1), (2)"
        )
    report = integrity(backupkit.backup(dsn, tmp_path, label="healthy", progress=False).path)
    seqs = {c["sequence"]: c for c in report["checks"] if c["check"] == "sequence"}
    assert (seqs["public.down_seq"]["ok"], seqs["public.down_seq"]["next_value"]) == (True, -3)
    assert (seqs["public.up_id_seq"]["ok"], seqs["public.up_id_seq"]["next_value"]) == (True, 21)
    assert report["ok"] is True
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT setval('down_seq', -1)")  # next -2, which is taken
    lagging = integrity(backupkit.backup(dsn, tmp_path, label="lagging", progress=False).path)
    down = next(c for c in lagging["checks"] if c.get("sequence") == "public.down_seq")
    assert (down["ok"], down["next_value"], down["min_value"]) == (False, -2, -2)
