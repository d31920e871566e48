"""Snapshot diffs, integrity checks and the reports, against real PostgreSQL changes."""

from __future__ import annotations

import json
import shutil

import psycopg
import pytest

import backupkit
from backupkit import manifest as mf
from backupkit.errors import SnapshotDamaged
from backupkit.diff import diff_snapshots
from backupkit.integrity import integrity
from backupkit.report import render_html, render_json

ODD = 'x<y>&"z'  # a table name that must be escaped in HTML

BEFORE = f"""
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text, note text);
INSERT INTO customers (name, email, note) SELECT 'c' || g, 'c' || g || '@example.com', CASE WHEN g % 2 = 0 THEN '' END
  FROM generate_series(1, 100) g;
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int REFERENCES customers, amount numeric(12,2), memo text);
INSERT INTO orders SELECT g, 1 + g % 100, g * 1.25, 'memo, "' || g || '"' FROM generate_series(1, 300) g;
CREATE TABLE events (kind text, n int);
INSERT INTO events VALUES ('a', 1), ('a', 1), ('a', 1), ('b', 2), ('b', 2), ('c', NULL), ('', NULL);
CREATE TABLE big (id int PRIMARY KEY, v text, w int);
INSERT INTO big SELECT g, 'value ' || g, g % 10 FROM generate_series(1, 50000) g;
CREATE TABLE static (id int PRIMARY KEY, v text);
INSERT INTO static VALUES (1, 'never changes');
CREATE TABLE rekeyed (id int PRIMARY KEY, code text NOT NULL);
INSERT INTO rekeyed SELECT g, 'k' || g FROM generate_series(1, 10) g;
CREATE TABLE dropme (id int PRIMARY KEY);
CREATE TABLE "{ODD.replace('"', '""')}" (id int PRIMARY KEY, v text);
INSERT INTO "{ODD.replace('"', '""')}" VALUES (1, 'a'), (2, 'b');
ANALYZE;
"""

CHANGES = f"""
INSERT INTO customers (name, email) VALUES ('new1', NULL), ('new2', 'n2@x'), ('new3', '');
DELETE FROM orders WHERE customer_id IN (5, 6);
DELETE FROM customers WHERE id IN (5, 6);
UPDATE customers SET email = 'changed@example.com' WHERE id IN (1, 2, 3);
UPDATE customers SET note = NULL WHERE id = 4;          -- '' -> NULL is a change
UPDATE customers SET name = name WHERE id BETWEEN 10 AND 20;  -- rewritten, not changed
UPDATE orders SET amount = amount + 0.01 WHERE id IN (7, 8);
ALTER TABLE orders ADD COLUMN status text;
CREATE INDEX orders_customer_idx ON orders (customer_id);
DELETE FROM events WHERE ctid = (SELECT min(ctid) FROM events WHERE kind = 'a');
INSERT INTO events VALUES ('b', 2), ('d', 4), ('', NULL);
UPDATE big SET v = v || '!' WHERE id <= 10;
DELETE FROM big WHERE id BETWEEN 40001 AND 40005;
INSERT INTO big SELECT g, 'late ' || g, 0 FROM generate_series(60001, 60007) g;
ALTER TABLE rekeyed DROP CONSTRAINT rekeyed_pkey, ADD PRIMARY KEY (code);
UPDATE rekeyed SET code = 'K10' WHERE id = 10;
DROP TABLE dropme;
CREATE TABLE added (id int PRIMARY KEY);
INSERT INTO added VALUES (1), (2);
UPDATE "{ODD.replace('"', '""')}" SET v = '<script>alert(1)</script>' WHERE id = 2;
"""


@pytest.fixture(scope="module")
def snaps(pg_server, tmp_path_factory):
    """Snapshots before (chunked and not) and after a known set of changes."""
    dsn = pg_server.createdb("diff")
    root = tmp_path_factory.mktemp("diffsnaps")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(BEFORE)
        before = backupkit.backup(dsn, root, label="before", progress=False)
        chunked = backupkit.backup(dsn, root, label="chunked", chunk_bytes=256 * 1024, progress=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(CHANGES)
        after = backupkit.backup(dsn, root, label="after", progress=False)
        yield before.path, chunked.path, after.path
    finally:
        pg_server.dropdb(dsn)


@pytest.fixture(scope="module")
def diff(snaps):
    before, _, after = snaps
    return diff_snapshots(before, after)


def table(diff: dict, name: str) -> dict:
    return next(t for t in diff["tables"] if t["name"] == name)


def counts(t: dict) -> tuple:
    return t["inserted"], t["deleted"], t["updated"]


def test_row_counts_per_table(diff):
    assert counts(table(diff, "customers")) == (3, 2, 4)
    assert counts(table(diff, "orders")) == (0, 6, 2)
    assert counts(table(diff, "big")) == (7, 5, 10)
    assert counts(table(diff, ODD)) == (0, 0, 1)
    c = table(diff, "customers")
    assert (c["rows_old"], c["rows_new"], c["method"]) == (100, 101, "primary_key")


def test_samples_show_only_changed_columns(diff):
    samples = table(diff, "customers")["sample_updates"]
    assert samples == [
        {"key": {"id": "1"}, "changes": {"email": ["c1@example.com", "changed@example.com"]}},
        {"key": {"id": "2"}, "changes": {"email": ["c2@example.com", "changed@example.com"]}},
        {"key": {"id": "3"}, "changes": {"email": ["c3@example.com", "changed@example.com"]}},
        {"key": {"id": "4"}, "changes": {"note": ["", None]}},
    ]
    orders = table(diff, "orders")["sample_updates"]
    assert orders == [{"key": {"id": "7"}, "changes": {"amount": ["8.75", "8.76"]}},
                      {"key": {"id": "8"}, "changes": {"amount": ["10.00", "10.01"]}}]
    fewer = diff_snapshots(diff["old"]["path"], diff["new"]["path"], sample=2)
    assert [s["key"] for s in table(fewer, "big")["sample_updates"]] == [{"id": "1"}, {"id": "10"}]
    assert table(fewer, "big")["sample_updates"][1]["changes"] == {"v": ["value 10", "value 10!"]}


def test_table_without_key_is_a_multiset(diff):
    events = table(diff, "events")
    # removed one of three ('a',1); added a third ('b',2), a new ('d',4) and a second ('', NULL)
    assert (events["method"], events["inserted"], events["deleted"], events["updated"]) == ("multiset", 3, 1, None)
    assert events["sample_updates"] == []


def test_changed_primary_key_falls_back_to_multiset(diff):
    rekeyed = table(diff, "rekeyed")
    assert rekeyed["method"] == "multiset" and "primary key changed" in rekeyed["note"]
    assert counts(rekeyed) == (1, 1, None)
    assert rekeyed["schema_changes"]["primary_key"] == {"old": ["id"], "new": ["code"]}


def test_identical_files_are_not_read(diff):
    static = table(diff, "static")
    assert (static["method"], counts(static)) == ("identical", (0, 0, 0))


def test_schema_changes(diff):
    assert [t["name"] for t in diff["tables_added"]] == ["added"]
    assert diff["tables_added"][0]["rows"] == 2
    assert [t["name"] for t in diff["tables_removed"]] == ["dropme"]
    sc = table(diff, "orders")["schema_changes"]
    assert sc["columns_added"] == ["status"] and sc["columns_dropped"] == [] and sc["columns_retyped"] == []
    assert sc["indexes_added"] == ["orders_customer_idx"] and sc["indexes_removed"] == []
    assert sc["changed"] and not table(diff, "static")["schema_changes"]["changed"]
    assert table(diff, "orders")["compared_columns"] == ["id", "customer_id", "amount", "memo"]
    assert diff["schema_sql_changed"] is True
    assert diff["schema_sql_files"] == {"schema/pre-data.sql": True, "schema/post-data.sql": True}
    assert "+    status text" in diff["schema_sql_diff"]
    assert "+CREATE INDEX orders_customer_idx" in diff["schema_sql_diff"]
    assert "-CREATE TABLE public.dropme" in diff["schema_sql_diff"]


def test_chunked_snapshot_diffs_like_unchunked(snaps, diff):
    before, chunked, after = snaps
    assert len(next(t for t in mf.read(chunked)["tables"] if t["name"] == "big")["files"]) > 1
    same = diff_snapshots(before, chunked)
    assert all(counts(t) in ((0, 0, 0), (0, 0, None)) for t in same["tables"])
    assert table(same, "big")["method"] == "primary_key"  # different files, same rows
    assert not same["schema_sql_changed"] and same["schema_sql_diff"] == ""
    via_chunks = diff_snapshots(chunked, after)
    for name in ("big", "customers", "orders", "events", "rekeyed"):
        a, b = table(via_chunks, name), table(diff, name)
        assert (counts(a), a["sample_updates"]) == (counts(b), b["sample_updates"])


def test_integrity_of_clean_snapshot(snaps):
    report = integrity(snaps[2])
    assert report["ok"] is True and report["checksums"]["ok"] is True
    kinds = {(c["check"], c["table"]) for c in report["checks"]}
    assert ("primary_key", "public.customers") in kinds
    assert ("foreign_key", "public.orders") in kinds
    assert ("sequence", "public.customers") in kinds
    assert all(c["ok"] for c in report["checks"])


def test_integrity_finds_orphans_and_lagging_sequences(make_db, tmp_path):
    dsn = make_db("integrity")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE parent (id serial PRIMARY KEY);
            INSERT INTO parent SELECT FROM generate_series(1, 3);
            CREATE TABLE child (id serial PRIMARY KEY, parent_id int, a int, b int);
            INSERT INTO child (parent_id) VALUES (1), (2), (3), (42), (42), (NULL), (7);
            ALTER TABLE child ADD CONSTRAINT child_parent_fk FOREIGN KEY (parent_id) REFERENCES parent NOT VALID;
            CREATE TABLE pair (a int, b int, PRIMARY KEY (a, b));
            INSERT INTO pair VALUES (1, 1);
            INSERT INTO child (parent_id, a, b) VALUES (1, 1, 1), (1, 1, 2), (1, NULL, 9);
            ALTER TABLE child ADD CONSTRAINT child_pair_fk FOREIGN KEY (a, b) REFERENCES pair NOT VALID;
            SELECT setval('child_id_seq', 4);               -- next 5, but max(id) is 10
            SELECT setval('parent_id_seq', 3, false);      -- next 3 = max(id): would collide
        """)
    snap = backupkit.backup(dsn, tmp_path, label="bad", progress=False).path
    report = integrity(snap)
    assert report["ok"] is False and report["checksums"]["ok"] is True
    by = {(c["check"], c.get("constraint") or c.get("sequence") or c["table"]): c for c in report["checks"]}
    fk = by[("foreign_key", "child_parent_fk")]
    assert (fk["ok"], fk["count"], fk["samples"]) == (False, 3, [{"parent_id": "42"}, {"parent_id": "7"}])
    pair = by[("foreign_key", "child_pair_fk")]
    assert (pair["ok"], pair["count"], pair["samples"]) == (False, 1, [{"a": "1", "b": "2"}])
    child_seq = by[("sequence", "public.child_id_seq")]
    assert (child_seq["ok"], child_seq["next_value"], child_seq["max_value"]) == (False, 5, 10)
    parent_seq = by[("sequence", "public.parent_id_seq")]
    assert (parent_seq["ok"], parent_seq["next_value"], parent_seq["max_value"]) == (False, 3, 3)
    assert by[("primary_key", "public.child")]["ok"] and by[("primary_key", "public.pair")]["ok"]

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT setval('parent_id_seq', 3, true)")  # next 4 > 3
        conn.execute("DELETE FROM child WHERE parent_id NOT IN (SELECT id FROM parent) OR (a, b) = (1, 2)")
        conn.execute("SELECT setval('child_id_seq', 10, true)")
    fixed = integrity(backupkit.backup(dsn, tmp_path, label="fixed", progress=False).path)
    assert fixed["ok"] is True, [c for c in fixed["checks"] if not c["ok"]]


def test_integrity_reports_damage_and_duplicate_keys(snaps, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(snaps[2], copy)
    m = json.loads((copy / "manifest.json").read_text())
    events = next(t for t in m["tables"] if t["name"] == "events")
    events["primary_key"] = ["kind", "n"]  # the data has duplicates and NULLs: a false claim
    (copy / "manifest.json").write_text(json.dumps(m))
    report = integrity(copy)
    assert report["ok"] is False and report["checksums"]["ok"] is False
    pk = next(c for c in report["checks"] if c["check"] == "primary_key" and c["table"] == "public.events")
    # ('a',1) twice and ('b',2) three times; ('', NULL) twice and ('c', NULL) have a NULL key column
    assert pk["ok"] is False and pk["count"] == 5 + 3
    assert pk["samples"] == [{"kind": "a", "n": "1"}, {"kind": "b", "n": "2"}]


def test_reports_render(snaps, diff):
    text = render_json(diff)
    assert json.loads(text)["totals"] == {"inserted": 3 + 7 + 3 + 1, "deleted": 2 + 6 + 5 + 1 + 1,
                                          "updated": 4 + 2 + 10 + 1}
    page = render_html(diff, integrity(snaps[0]), integrity(snaps[2]))
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    for external in ("<script", "<link", "src=", "@import", "url("):
        assert external not in page.lower()
    assert ODD not in page and "x&lt;y&gt;&amp;&quot;z" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "orders_customer_idx" in page and "dropme" in page and "<code>public.added</code>" in page


def test_diff_of_damaged_data_raises(snaps, tmp_path):
    before, _, after = snaps
    copy = tmp_path / "damaged"
    shutil.copytree(after, copy)
    entry = next(t for t in mf.read(copy)["tables"] if t["name"] == "customers")
    path = copy / entry["files"][0]["path"]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(SnapshotDamaged, match="checksum"):
        diff_snapshots(before, copy)


def test_diff_cross_checks_rows_read(snaps, tmp_path, monkeypatch):
    # DuckDB reads a truncated zstd file as a short one, silently; the row counts catch it
    # even when the checksums were (wrongly) passed.
    before, _, after = snaps
    copy = tmp_path / "short"
    shutil.copytree(after, copy)
    entry = next(t for t in mf.read(copy)["tables"] if t["name"] == "big")
    path = copy / entry["files"][0]["path"]
    path.write_bytes(path.read_bytes()[:40])  # too short for a whole block: reads as no rows
    monkeypatch.setattr("backupkit.diff._check_files", lambda folder, table: None)
    with pytest.raises(SnapshotDamaged, match="rows of public.big"):
        diff_snapshots(before, copy)


@pytest.mark.parametrize("pairing", ["chunk pairs", "whole table"])
def test_rows_moved_between_chunks_are_matched_exactly(make_db, tmp_path, monkeypatch, pairing):
    # The diff joins the i-th chunk of each side first; rows that moved to another chunk
    # (updated out of their page, or the whole table rewritten in another order) must
    # still meet their partner.
    dsn = make_db("moves")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, w int); "
                     "INSERT INTO t SELECT g, md5(g::text), g % 7 FROM generate_series(1, 30000) g")
    before = backupkit.backup(dsn, tmp_path, label="before", chunk_bytes=128 * 1024, progress=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE t SET w = w + 100 WHERE id % 100 = 1")              # 300 updated
        conn.execute("UPDATE t SET v = v WHERE id % 100 = 2")                    # rewritten, unchanged
        conn.execute("DELETE FROM t WHERE id % 300 = 3")                         # 100 deleted
        conn.execute("INSERT INTO t SELECT g, 'new', 0 FROM generate_series(40001, 40050) g")  # 50 inserted
    moved = backupkit.backup(dsn, tmp_path, label="moved", chunk_bytes=128 * 1024, progress=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE INDEX t_reversed ON t ((-id)); CLUSTER t USING t_reversed")
    reversed_ = backupkit.backup(dsn, tmp_path, label="reversed", chunk_bytes=128 * 1024, progress=False)
    assert len(mf.read(before.path)["tables"][0]["files"]) > 5
    if pairing == "whole table":  # too many leftovers: the diff gives up pairing chunks
        import importlib
        monkeypatch.setattr(importlib.import_module("backupkit.diff"), "MAX_LEFTOVER_ROWS", 10)

    for after in (moved, reversed_):
        t = diff_snapshots(before.path, after.path)["tables"][0]
        assert (t["inserted"], t["deleted"], t["updated"]) == (50, 100, 300), after.path.name
        # samples are the smallest changed keys by key text
        assert [s["key"]["id"] for s in t["sample_updates"]] == sorted(str(i) for i in range(1, 30001, 100))[:5]
        assert t["sample_updates"][0]["changes"] == {"w": ["1", "101"]}
    t = diff_snapshots(moved.path, reversed_.path)["tables"][0]
    assert (t["inserted"], t["deleted"], t["updated"]) == (0, 0, 0)


def test_the_public_names_stay_functions_after_their_modules_are_imported():
    import importlib
    for name in ("backup", "restore", "verify", "prune", "integrity"):
        importlib.import_module(f"backupkit.{name}")
        assert callable(getattr(backupkit, name)), name


@pytest.mark.parametrize("data_format,kind,by_line", [
    ("text", "plain", True), ("text", "newlines", True), ("text", "delimiter byte", False),
    ("csv", "plain", True), ("csv", "newlines", False)])
def test_rows_matched_by_line_or_by_column_give_the_same_exact_diff(make_db, tmp_path, monkeypatch,
                                                                    data_format, kind, by_line):
    # Unchanged rows are matched by their whole line when lines are rows: always in COPY's
    # text format, which escapes newlines, but not in a CSV snapshot (written before
    # 2026-12) whose values hold newlines; and never when a value holds the byte the line
    # reader splits on. Then the diff parses columns instead. Either way, every change is
    # found, down to trailing spaces and '' versus NULL, and a row rewritten with the same
    # values is not a change.
    import importlib
    lines_module = importlib.import_module("backupkit.lines")
    monkeypatch.setattr("backupkit.copyio.DATA_FORMAT", data_format)
    dsn = make_db("bylines")
    odd = {"plain": "'p'", "newlines": "E'two\\nlines'", "delimiter byte": "E'a\\x01b'"}[kind]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, c char(6), j jsonb); "
                     f"INSERT INTO t SELECT g, CASE WHEN g = 5 THEN {odd} ELSE 'v, \"' || g || '\"' END, "
                     "'x', jsonb_build_object('g', g) FROM generate_series(1, 20000) g")
    before = backupkit.backup(dsn, tmp_path, label="before", chunk_bytes=256 * 1024, progress=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE t SET v = v || ' ' WHERE id = 1")          # a trailing space
        conn.execute("UPDATE t SET v = '' WHERE id = 2")                # to the empty string
        conn.execute("UPDATE t SET v = NULL WHERE id = 3")              # to NULL
        conn.execute("UPDATE t SET v = '' WHERE id = 4; UPDATE t SET v = NULL WHERE id = 4")
        conn.execute("UPDATE t SET c = 'y' WHERE id % 1000 = 7")        # 20 rows, a char(6) column
        conn.execute("UPDATE t SET j = j WHERE id % 10 = 9")            # rewritten, unchanged
        conn.execute("DELETE FROM t WHERE id BETWEEN 100 AND 109")
        conn.execute("INSERT INTO t VALUES (30001, 'new', 'n', '{}'), (30002, NULL, NULL, NULL)")
    after = backupkit.backup(dsn, tmp_path, label="after", chunk_bytes=256 * 1024, progress=False)
    assert len(mf.read(before.path)["tables"][0]["files"]) > 3

    passes = []
    real = lines_module.match_lines
    monkeypatch.setattr("backupkit.diff.match_lines", lambda *a: passes.append(real(*a)) or passes[-1])
    t = diff_snapshots(before.path, after.path)["tables"][0]
    assert (t["inserted"], t["deleted"], t["updated"]) == (2, 10, 24)
    assert [s["key"]["id"] for s in t["sample_updates"]] == ["1", "10007", "1007", "11007", "12007"]  # by key text
    assert t["sample_updates"][0]["changes"] == {"v": ['v, "1"', 'v, "1" ']}
    assert [p is not None for p in passes] == [by_line]


def test_leftover_lines_keep_a_leading_byte_order_mark_and_odd_sample_sizes_work(make_db, tmp_path):
    # The line pass writes unmatched lines to spill files; DuckDB drops a UTF-8 BOM at the
    # start of a file, which must not cost a key that begins with U+FEFF its first character.
    dsn = make_db("bom")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE tk (k text PRIMARY KEY, v int); "
                     "INSERT INTO tk SELECT 'k' || g, g FROM generate_series(1, 100) g; "
                     "INSERT INTO tk VALUES (E'\\uFEFFA', 0)")
    before = backupkit.backup(dsn, tmp_path, label="before", progress=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE tk SET v = 1 WHERE k = E'\\uFEFFA'; INSERT INTO tk VALUES ('zz', 5)")
    after = backupkit.backup(dsn, tmp_path, label="after", progress=False)
    t = diff_snapshots(before.path, after.path)["tables"][0]
    assert (t["inserted"], t["deleted"], t["updated"]) == (1, 0, 1)
    assert t["sample_updates"] == [{"key": {"k": "\ufeffA"}, "changes": {"v": ["0", "1"]}}]
    assert diff_snapshots(before.path, after.path, sample=-1)["tables"][0]["sample_updates"] == []
    assert len(diff_snapshots(before.path, after.path, sample=2.5)["tables"][0]["sample_updates"]) == 1
