"""Snapshot diffs, integrity checks and the reports, against real PostgreSQL changes."""

from __future__ import annotations

import json

import psycopg
import pytest
from helpers import copy_snapshot_folder, run_cli, stored_file
from psycopg.conninfo import conninfo_to_dict

import backupkit
from backupkit.errors import SnapshotDamaged
from backupkit.lens.diff import diff_snapshots
from backupkit.lens.integrity import integrity
from backupkit.lens.report import render_html, render_json
from backupkit.snapshot import formats
from backupkit.snapshot import manifest as mf

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
    assert orders == [
        {"key": {"id": "7"}, "changes": {"amount": ["8.75", "8.76"]}},
        {"key": {"id": "8"}, "changes": {"amount": ["10.00", "10.01"]}},
    ]
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
    copy = copy_snapshot_folder(snaps[2], tmp_path / "copy")
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
    assert json.loads(text)["totals"] == {
        "inserted": 3 + 7 + 3 + 1,
        "deleted": 2 + 6 + 5 + 1 + 1,
        "updated": 4 + 2 + 10 + 1,
    }
    page = render_html(diff, integrity(snaps[0]), integrity(snaps[2]))
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    for external in ("<script", "<link", "src=", "@import", "url("):
        assert external not in page.lower()
    assert ODD not in page and "x&lt;y&gt;&amp;&quot;z" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "orders_customer_idx" in page and "dropme" in page and "<code>public.added</code>" in page


def test_diff_of_damaged_data_raises(snaps, tmp_path):
    before, _, after = snaps
    copy = copy_snapshot_folder(after, tmp_path / "damaged")
    entry = next(t for t in mf.read(copy)["tables"] if t["name"] == "customers")
    path = stored_file(copy, entry["files"][0])
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(SnapshotDamaged, match="checksum"):
        diff_snapshots(before, copy)


def test_diff_cross_checks_rows_read(snaps, tmp_path, monkeypatch):
    # DuckDB reads a truncated zstd file as a short one, silently; the row counts catch it
    # even when the checksums were (wrongly) passed.
    before, _, after = snaps
    copy = copy_snapshot_folder(after, tmp_path / "short")
    entry = next(t for t in mf.read(copy)["tables"] if t["name"] == "big")
    path = stored_file(copy, entry["files"][0])
    path.write_bytes(path.read_bytes()[:40])  # too short for a whole block: reads as no rows
    monkeypatch.setattr("backupkit.lens.diff._check_files", lambda folder, table: None)
    with pytest.raises(SnapshotDamaged, match="rows of public.big"):
        diff_snapshots(before, copy)


@pytest.mark.parametrize("pairing", ["chunk pairs", "whole table"])
def test_rows_moved_between_chunks_are_matched_exactly(make_db, tmp_path, monkeypatch, pairing):
    # The diff joins the i-th chunk of each side first; rows that moved to another chunk
    # (updated out of their page, or the whole table rewritten in another order) must
    # still meet their partner.
    dsn = make_db("moves")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text, w int); "
            "INSERT INTO t SELECT g, md5(g::text), g % 7 FROM generate_series(1, 30000) g"
        )
    before = backupkit.backup(dsn, tmp_path, label="before", chunk_bytes=128 * 1024, progress=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE t SET w = w + 100 WHERE id % 100 = 1")  # 300 updated
        conn.execute("UPDATE t SET v = v WHERE id % 100 = 2")  # rewritten, unchanged
        conn.execute("DELETE FROM t WHERE id % 300 = 3")  # 100 deleted
        conn.execute("INSERT INTO t SELECT g, 'new', 0 FROM generate_series(40001, 40050) g")  # 50 inserted
    moved = backupkit.backup(dsn, tmp_path, label="moved", chunk_bytes=128 * 1024, progress=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE INDEX t_reversed ON t ((-id)); CLUSTER t USING t_reversed")
    reversed_ = backupkit.backup(dsn, tmp_path, label="reversed", chunk_bytes=128 * 1024, progress=False)
    assert len(mf.read(before.path)["tables"][0]["files"]) > 5
    if pairing == "whole table":  # too many leftovers: the diff gives up pairing chunks
        import importlib

        monkeypatch.setattr(importlib.import_module("backupkit.lens.diff"), "MAX_LEFTOVER_ROWS", 10)

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

    for name, module in (
        ("backup", "capture.job"),
        ("restore", "recovery.job"),
        ("verify", "snapshot.verify"),
        ("prune", "retention.prune"),
        ("integrity", "lens.integrity"),
    ):
        importlib.import_module(f"backupkit.{module}")
        assert callable(getattr(backupkit, name)), name


@pytest.mark.parametrize(
    "data_format,kind,by_line",
    [
        ("text", "plain", True),
        ("text", "newlines", True),
        ("text", "delimiter byte", False),
        ("csv", "plain", True),
        ("csv", "newlines", False),
    ],
)
def test_rows_matched_by_line_or_by_column_give_the_same_exact_diff(
    make_db, tmp_path, monkeypatch, data_format, kind, by_line
):
    # Unchanged rows are matched by their whole line when lines are rows: always in COPY's
    # text format, which escapes newlines, but not in a CSV snapshot (written before
    # 2026-12) whose values hold newlines; and never when a value holds the byte the line
    # reader splits on. Then the diff parses columns instead. Either way, every change is
    # found, down to trailing spaces and '' versus NULL, and a row rewritten with the same
    # values is not a change.
    import importlib

    lines_module = importlib.import_module("backupkit.lens.diff_lines")
    monkeypatch.setattr("backupkit.snapshot.formats.WRITTEN", formats.named(data_format))
    dsn = make_db("bylines")
    odd = {"plain": "'p'", "newlines": "E'two\\nlines'", "delimiter byte": "E'a\\x01b'"}[kind]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text, c char(6), j jsonb); "
            f"INSERT INTO t SELECT g, CASE WHEN g = 5 THEN {odd} ELSE 'v, \"' || g || '\"' END, "
            "'x', jsonb_build_object('g', g) FROM generate_series(1, 20000) g"
        )
    before = backupkit.backup(dsn, tmp_path, label="before", chunk_bytes=256 * 1024, progress=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE t SET v = v || ' ' WHERE id = 1")  # a trailing space
        conn.execute("UPDATE t SET v = '' WHERE id = 2")  # to the empty string
        conn.execute("UPDATE t SET v = NULL WHERE id = 3")  # to NULL
        conn.execute("UPDATE t SET v = '' WHERE id = 4; UPDATE t SET v = NULL WHERE id = 4")
        conn.execute("UPDATE t SET c = 'y' WHERE id % 1000 = 7")  # 20 rows, a char(6) column
        conn.execute("UPDATE t SET j = j WHERE id % 10 = 9")  # rewritten, unchanged
        conn.execute("DELETE FROM t WHERE id BETWEEN 100 AND 109")
        conn.execute("INSERT INTO t VALUES (30001, 'new', 'n', '{}'), (30002, NULL, NULL, NULL)")
    after = backupkit.backup(dsn, tmp_path, label="after", chunk_bytes=256 * 1024, progress=False)
    assert len(mf.read(before.path)["tables"][0]["files"]) > 3

    passes = []
    real = lines_module.match_lines
    monkeypatch.setattr("backupkit.lens.diff.match_lines", lambda *a: passes.append(real(*a)) or passes[-1])
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
        conn.execute(
            "CREATE TABLE tk (k text PRIMARY KEY, v int); "
            "INSERT INTO tk SELECT 'k' || g, g FROM generate_series(1, 100) g; "
            "INSERT INTO tk VALUES (E'\\uFEFFA', 0)"
        )
    before = backupkit.backup(dsn, tmp_path, label="before", progress=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE tk SET v = 1 WHERE k = E'\\uFEFFA'; INSERT INTO tk VALUES ('zz', 5)")
    after = backupkit.backup(dsn, tmp_path, label="after", progress=False)
    t = diff_snapshots(before.path, after.path)["tables"][0]
    assert (t["inserted"], t["deleted"], t["updated"]) == (1, 0, 1)
    assert t["sample_updates"] == [{"key": {"k": "\ufeffA"}, "changes": {"v": ["0", "1"]}}]
    assert diff_snapshots(before.path, after.path, sample=-1)["tables"][0]["sample_updates"] == []
    assert len(diff_snapshots(before.path, after.path, sample=2.5)["tables"][0]["sample_updates"]) == 1


# -- schema objects, object by object (a restore that lost a view, a trigger and policies) ---

LOST_BY_RESTORE = """
CREATE TABLE accounts (id int PRIMARY KEY, owner_id int, balance numeric);
INSERT INTO accounts SELECT g, g % 3, g * 10 FROM generate_series(1, 50) g;
CREATE TABLE "odd tab" (id int PRIMARY KEY);
CREATE VIEW rich AS SELECT * FROM accounts WHERE balance > 100;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION touch();
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON accounts USING (owner_id = 1);
CREATE POLICY "read all" ON accounts FOR SELECT USING (true);
CREATE POLICY "p 1" ON "odd tab" USING (true);
COMMENT ON TABLE accounts IS 'money';
"""


@pytest.fixture(scope="module")
def lost(pg_server, tmp_path_factory):
    """Snapshots of a database before, again unchanged, and after losing schema objects."""
    dsn = pg_server.createdb("lost")
    role = "owner_" + conninfo_to_dict(dsn)["dbname"]
    root = tmp_path_factory.mktemp("lost")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(LOST_BY_RESTORE)
        source = backupkit.backup(dsn, root, label="source", progress=False).path
        again = backupkit.backup(dsn, root, label="again", progress=False).path
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"""
                DROP VIEW rich; DROP TRIGGER accounts_touch ON accounts;
                DROP POLICY own_rows ON accounts; DROP POLICY "p 1" ON "odd tab";
                COMMENT ON TABLE accounts IS 'cash';
                CREATE ROLE {role}; ALTER FUNCTION touch() OWNER TO {role};""")
        restored = backupkit.backup(dsn, root, label="restored", progress=False).path
        yield source, again, restored
    finally:
        pg_server.dropdb(dsn)
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_lost_schema_objects_are_named_in_json_text_and_html(lost, tmp_path):
    source, _, restored = lost
    out = run_cli("diff", source, restored, "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["same"] is False and d["schema_sql_changed"] is True  # the old keys stay
    assert all(counts(t) == (0, 0, 0) for t in d["tables"])  # no row changed: only the schema
    objects = d["schema_objects"]
    assert {"type": "view", "schema": "public", "name": "rich", "change": "removed"} in objects
    assert {
        "type": "trigger",
        "schema": "public",
        "name": "accounts_touch",
        "table": "accounts",
        "change": "removed",
    } in objects
    assert {
        "type": "policy",
        "schema": "public",
        "name": "own_rows",
        "table": "accounts",
        "change": "removed",
    } in objects
    assert {"type": "policy", "schema": "public", "name": "p 1", "table": "odd tab", "change": "removed"} in objects
    assert {
        "type": "table",
        "schema": "public",
        "name": "accounts",
        "change": "changed",
        "detail": "comment",
    } in objects
    touch = next(o for o in objects if o["name"] == "touch()")
    assert (touch["type"], touch["change"], touch["owner"]["old"]) == ("function", "changed", "postgres")
    assert touch["detail"] == f"owner postgres → {touch['owner']['new']}"
    assert not any(o["name"] == "read all" for o in objects)  # unchanged objects are not listed
    assert len(objects) == 6

    text = run_cli("diff", source, restored)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "schema: 6 objects changed (4 removed, 2 changed)" in lines
    for line in (
        "  removed  view public.rich",
        "  removed  trigger accounts_touch on public.accounts",
        "  removed  policy own_rows on public.accounts",
        "  removed  policy p 1 on public.odd tab",
        "  changed  table public.accounts: comment",
    ):
        assert line in lines, text.stdout
    assert any(line.startswith("  changed  function public.touch(): owner postgres → ") for line in lines)
    assert any(line.startswith("  1 of them differ only in owner") for line in lines), text.stdout

    page = tmp_path / "report.html"
    html = run_cli("diff", source, restored, "--html", page)
    assert html.returncode == 0, html.stderr
    section = page.read_text().split("<h2>Schema objects</h2>", 1)[1].split("<h2>", 1)[0]
    for name in (
        "public.rich",
        "accounts_touch on public.accounts",
        "own_rows on public.accounts",
        "p 1 on public.odd tab",
        "public.touch()",
    ):
        assert f"<code>{name}</code>" in section, name
    assert "removed" in section and "owner postgres →" in section


def test_exit_code_tells_same_from_different(lost, snaps):
    source, again, restored = lost
    different = run_cli("diff", "--exit-code", source, restored)
    assert different.returncode == 12, different.stderr
    assert run_cli("diff", "--exit-code", "--json", source, restored).returncode == 12
    same = run_cli("diff", "--exit-code", source, again)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "schema: same" in same.stdout.splitlines()
    assert json.loads(run_cli("diff", "--exit-code", "--json", source, again).stdout)["same"] is True
    # Data alone differs: rows changed, the schema did not.
    before, chunked, after = snaps
    assert run_cli("diff", "--exit-code", before, chunked).returncode == 0
    assert run_cli("diff", "--exit-code", before, after).returncode == 12


def test_data_only_difference_is_not_same(make_db, tmp_path):
    dsn = make_db("rows")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
    one = backupkit.backup(dsn, tmp_path, label="one", progress=False).path
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE t SET v = 'b'")
    two = backupkit.backup(dsn, tmp_path, label="two", progress=False).path
    d = diff_snapshots(one, two)
    assert d["schema_objects"] == [] and d["same"] is False
    out = run_cli("diff", "--exit-code", one, two)
    assert out.returncode == 12 and "schema: same" in out.stdout.splitlines()


def test_table_changes_are_schema_objects_too(diff):
    objects = {(o["type"], o["name"], o["change"]) for o in diff["schema_objects"]}
    assert ("table", "dropme", "removed") in objects and ("table", "added", "added") in objects
    assert ("index", "orders_customer_idx", "added") in objects
    assert ("table", "orders", "changed") in objects  # a column added
    assert ("constraint", "rekeyed_pkey", "changed") in objects  # now on (code)
    assert ("table", "static", "changed") not in objects
    assert diff["same"] is False


def test_database_objects_of_the_manifests_are_compared_when_both_have_them():
    from backupkit.lens.schema_diff import manifest_objects

    pub = {
        "name": "realtime",
        "owner": "postgres",
        "all_tables": False,
        "publish": ["insert"],
        "via_root": False,
        "tables": [{"schema": "public", "name": "orders", "columns": None, "row_filter": None}],
        "schemas": [],
    }
    old = {
        "extensions": [
            {"name": "pgcrypto", "version": "1.3", "schema": "extensions", "required": True},
            {"name": "pg_trgm", "version": "1.6", "schema": "public", "required": False},
        ],
        "publications": [pub],
        "default_privileges": [
            {"role": "postgres", "schema": "public", "object_type": "tables", "acl": ["anon=r/postgres"]}
        ],
        "large_objects": [{"oid": 7, "owner": "postgres"}, {"oid": 8, "owner": "postgres"}],
    }
    new = {
        "extensions": [
            {"name": "pgcrypto", "version": "1.4", "schema": "extensions", "required": False},
            {"name": "vector", "version": "0.8", "schema": "extensions", "required": True},
        ],
        "publications": [
            {
                **pub,
                "owner": "supabase_admin",
                "tables": [
                    {"schema": "public", "name": "orders", "columns": ["id"], "row_filter": None},
                    {"schema": "public", "name": "items", "columns": None, "row_filter": None},
                ],
            }
        ],
        "default_privileges": [{"role": "postgres", "schema": "public", "object_type": "tables", "acl": []}],
        "large_objects": [{"oid": 7, "owner": "app"}],
    }
    found = {(o["type"], o["schema"], o["name"], o["change"]): o.get("detail") for o in manifest_objects(old, new)}
    assert found == {
        ("extension", "extensions", "pgcrypto", "changed"): 'version "1.3" → "1.4"',  # not "required"
        ("extension", "public", "pg_trgm", "removed"): None,
        ("extension", "extensions", "vector", "added"): None,
        (
            "publication",
            None,
            "realtime",
            "changed",
        ): "tables +public.items public.orders columns/row filter, owner postgres → supabase_admin",
        ("default privileges", "public", "tables for role postgres", "changed"): "grants",
        ("large object", None, "7", "changed"): "owner postgres → app",
        ("large object", None, "8", "removed"): None,
    }
    # A manifest written before these lists existed says nothing about them.
    assert manifest_objects({}, new) == []
    assert sorted((o["name"], o["change"]) for o in manifest_objects(old, {"extensions": []})) == [
        ("pg_trgm", "removed"),
        ("pgcrypto", "removed"),
    ]


def test_text_output_caps_long_lists_and_says_same():
    from backupkit.lens.report import TEXT_SCHEMA_OBJECTS, schema_text

    many = [
        {"type": "large object", "schema": None, "name": str(i), "change": "added"}
        for i in range(TEXT_SCHEMA_OBJECTS + 7)
    ]
    lines = schema_text({"schema_objects": many})
    assert lines[0] == f"schema: {len(many)} objects changed ({len(many)} added)"
    assert lines[1] == "  added    large object 0"
    assert lines[-1] == "  ... and 7 more (--json lists them all)"
    assert len(lines) == TEXT_SCHEMA_OBJECTS + 2
    assert schema_text({"schema_objects": [], "schema_sql_changed": False}) == ["schema: same"]
    assert schema_text({"schema_objects": many[:1]})[0] == "schema: 1 object changed (1 added)"


def test_text_and_html_name_added_and_removed_tables(snaps, tmp_path):
    """The normal case after a migration (a table added, one dropped) used to crash both."""
    before, _, after = snaps
    text = run_cli("diff", before, after)
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
    assert "public.added" in text.stdout and "public.dropme" in text.stdout
    page = tmp_path / "r.html"
    html = run_cli("diff", before, after, "--html", page)
    assert html.returncode == 0, html.stderr
    body = page.read_text()
    assert "added" in body and "dropme" in body


def test_unnamed_cron_jobs_are_counted_not_merged():
    """Two unnamed pg_cron jobs of one schedule and role were one identity: one of them
    removed, or paused, was no change at all (``diff --exit-code`` said same)."""
    from backupkit.lens.schema_diff import manifest_objects

    def job(active: bool) -> dict:
        return {"name": None, "schedule": "*/5 * * * *", "database": "postgres", "username": "app", "active": active}

    two = {"cron_jobs": [job(True), job(True)]}
    name = "an unnamed job (*/5 * * * *) of role app in database postgres #2"
    assert manifest_objects(two, {"cron_jobs": [job(True)]}) == [
        {"type": "cron job", "schema": None, "name": name, "change": "removed"}
    ]
    assert manifest_objects(two, {"cron_jobs": [job(False), job(True)]}) == [
        {"type": "cron job", "schema": None, "name": name, "change": "changed", "detail": "active true → false"}
    ]
    # The same jobs in another jobid order are the same.
    assert manifest_objects({"cron_jobs": [job(False), job(True)]}, {"cron_jobs": [job(True), job(False)]}) == []
