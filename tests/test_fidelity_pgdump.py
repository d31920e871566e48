"""The fidelity standard: fixture, fingerprint, and what pg_dump/pg_restore achieve.

* tests/fidelity.sql builds every built-in type family and the awkward cases;
* tests/fingerprint.py fingerprints a database by name, comparable across
  databases;
* here we prove the fingerprint is deterministic and sensitive, and that a
  ``pg_dump -Fc`` / ``pg_restore`` round trip of the fixture (plus tens of MB
  of TOASTed values) reproduces an EQUAL fingerprint.  backupkit's own
  backup/restore must meet the same standard.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from fidelity_big import add_toast_values  # tests/ is on sys.path (rootdir conftest)
from fingerprint import diff_fingerprints, fingerprint
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from backupkit.pg.embedded import bin_dir

FIXTURE_SQL = Path(__file__).with_name("fidelity.sql")
ODD_TABLE = '"Odd Schema.v1"."Mixed ""Case"".Table"'


def load_fixture(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FIXTURE_SQL.read_text())


def run_tool(name: str, *args: str) -> None:
    """Run an embedded PostgreSQL client tool; fail with its stderr (never the DSN)."""
    res = subprocess.run(
        [str(bin_dir() / name), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300
    )
    assert res.returncode == 0, f"{name} failed ({res.returncode}):\n{res.stderr}"


def assert_same(a: dict, b: dict) -> None:
    diffs = diff_fingerprints(a, b)
    assert not diffs, f"{len(diffs)} difference(s):\n" + "\n".join(diffs[:50])
    assert a == b


@pytest.fixture(scope="module")
def fixture_db(pg_server):
    """One database loaded from fidelity.sql, shared (read-only) by this module's tests."""
    dsn = pg_server.createdb("fidelity")
    try:
        load_fixture(dsn)
        yield dsn
    finally:
        pg_server.dropdb(dsn)


@pytest.fixture(scope="module")
def base_fp(fixture_db):
    return fingerprint(fixture_db)


@pytest.fixture
def clone_db(pg_server):
    """Factory: ``clone_db(dsn)`` copies a database (CREATE DATABASE ... TEMPLATE)."""
    made = []

    def clone(src_dsn: str) -> str:
        src = conninfo_to_dict(src_dsn)["dbname"]
        name = f"bk_clone_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(src)))
        dsn = pg_server.dsn(name)
        made.append(dsn)
        return dsn

    yield clone
    for dsn in made:
        pg_server.dropdb(dsn)


# -- (a) the fixture loads and the fingerprint is deterministic -----------------


def test_fixture_loads_and_fingerprint_is_deterministic(make_db):
    dsn = make_db("fid")
    load_fixture(dsn)
    first = fingerprint(dsn)
    second = fingerprint(dsn)
    assert_same(first, second)

    # The fixture really contains the awkward cases the fingerprint must see.
    data, rels, seqs = first["data"], first["relations"], first["sequences"]
    assert data[ODD_TABLE]["rows"] == 3
    assert rels[ODD_TABLE]["column_order"] == [
        "select",
        "from",
        "user",
        "Column With Spaces",
        'a "quoted", col.',
        "ÜniCödé",
    ]
    assert data["public.no_pk_dups"]["rows"] == 8
    assert len(rels["public.wide_table"]["column_order"]) == 300
    assert data["public.wide_table"]["rows"] == 3
    assert data["public.empty_table"] == {"kind": "r", "rows": 0, "hash": data["public.empty_table"]["hash"]}
    assert "public.measurements" not in data  # partitioned parent: rows live in partitions
    assert sum(data[f"public.measurements_{p}"]["rows"] for p in ("early", "2023", "2024", "default")) == 202
    assert rels["public.measurements_default"]["partition_bound"] == "DEFAULT"
    assert data["public.inh_parent"]["rows"] == 2  # FROM ONLY: children not counted
    assert data["public.inh_child"]["rows"] == 2
    assert rels["public.inh_grandchild"]["inherits"] == ["public.inh_child"]
    assert data["public.audit_log"]["rows"] == 1
    assert rels["public.rls_secret"]["rls_enabled"] and rels["public.rls_secret"]["rls_forced"]
    assert data["public.rls_secret"]["rows"] == 3  # row_security=off: nothing hidden
    assert rels["public.rls_secret"]["policies"]["rls_secret_only_visible"]["permissive"] is False
    assert rels["public.trigger_target"]["triggers"]["trigger_target_disabled"]["enabled"] == "D"
    cols = rels["public.generated_cols"]["columns"]
    assert (cols["id"]["identity"], cols["alt_id"]["identity"]) == ("a", "d")
    assert (cols["total"]["generated"], cols["label"]["generated"]) == ("s", "v")
    assert rels["public.dropped_col"]["column_order"] == ["id", "kept", "last", "added_later"]
    assert data["public.product_stats"] == {
        "kind": "m",
        "populated": True,
        "rows": 1,
        "hash": data["public.product_stats"]["hash"],
    }
    assert data["public.product_names_unpopulated"] == {"kind": "m", "populated": False, "rows": None, "hash": None}
    assert seqs["public.serials_id_seq"]["last_value"] == 1000
    assert seqs["public.standalone_not_called"]["is_called"] is False
    assert seqs["public.generated_cols_id_seq"]["owned_kind"] == "identity"
    assert seqs['"Odd Schema.v1"."Seq ""quoted"" name"']["last_value"] == 77
    assert first["types"]["public.mood"]["labels"] == [
        "sad",
        "meh",
        "ok",
        "happy",
        "ecstatic",
        'it\'s "complicated"',
        "with space",
    ]
    assert rels["public.products"]["comment"] == "Products: a table with a comment"
    assert set(rels["public.products"]["indexes"]) >= {
        "products_lower_name_idx",
        "products_active_price_idx",
        "products_name_include_idx",
    }
    assert rels["public.misc"]["columns"]["x"]["type"] == "xml"

    # extensions in their own schema, used by public tables and a domain
    assert {k: v["schema"] for k, v in first["extensions"].items()}.items() >= {("citext", "ext"), ("hstore", "ext")}
    ext_cols = rels["public.ext_typed"]["columns"]
    assert (ext_cols["nick"]["type"], ext_cols["aliases"]["type"], ext_cols["attrs"]["type"]) == (
        "ext.citext",
        "ext.citext[]",
        "ext.hstore",
    )
    assert first["types"]["public.email_address"]["base"] == "ext.citext"
    assert data["public.ext_typed"]["rows"] == 4
    # database-wide objects
    pubs = first["publications"]
    assert set(pubs) == {"fid_pub_filtered", "fid_pub_schema", "fid_pub_plain", "fid pub Root", "fid_pub_empty"}
    assert pubs["fid_pub_filtered"]["tables"]["public.products"] == {
        "columns": ["id", "sku", "price", "active"],
        "row_filter": "((price > (0)::numeric) AND active)",
    }
    assert pubs["fid_pub_filtered"]["publish"] == ["insert", "truncate"]
    assert pubs["fid_pub_schema"]["schemas"] == ["Odd Schema.v1"]
    assert pubs["fid pub Root"]["via_partition_root"] is True
    assert set(pubs["fid_pub_plain"]["tables"]) == {"public.employees", "public.composite_pk"}
    los = first["large_objects"]
    assert set(los) == {"4242001", "4242002"}
    assert los["4242001"]["owner"] == "bk_fid_owner" and los["4242001"]["size"] > 3 * 2048
    assert '"bk fid Reader' in los["4242001"]["acl"] and los["4242001"]["comment"]
    assert los["4242002"]["size"] == 0
    defacl = first["default_privileges"]
    assert {(v["role"], v["schema"], v["object_type"]) for v in defacl.values()} == {
        ("bk_fid_owner", None, "r"),
        ("bk_fid_owner", None, "f"),
        ("bk_fid_owner", "public", "S"),
        ("bk_fid_owner", "Odd Schema.v1", "r"),
    }
    assert first["event_triggers"] == {}


def test_fingerprint_schema_filter(fixture_db, base_fp):
    odd = fingerprint(fixture_db, schemas=["Odd Schema.v1"])
    assert set(odd["schemas"]) == {"Odd Schema.v1"}
    assert set(odd["data"]) == {ODD_TABLE, '"Odd Schema.v1".lower_case_in_odd_schema'}
    assert odd["data"][ODD_TABLE] == base_fp["data"][ODD_TABLE]
    assert odd["relations"][ODD_TABLE] == base_fp["relations"][ODD_TABLE]
    # objects outside every schema only appear in a whole-database fingerprint
    assert odd["publications"] == odd["large_objects"] == odd["event_triggers"] == {}
    assert [v["schema"] for v in odd["default_privileges"].values()] == ["Odd Schema.v1"]


# -- (b) the fingerprint detects every kind of change ----------------------------

MUTATIONS = {
    "changed-text-value": ("UPDATE texts SET t = t || 'x' WHERE id = 5", ['data["public.texts"]']),
    "float-minus-zero-to-zero": ("UPDATE numbers SET f8 = 0 WHERE id = 4", ['data["public.numbers"]']),
    "numeric-scale-0.1-to-0.10": ("UPDATE numbers SET n = 0.10 WHERE id = 8", ['data["public.numbers"]']),
    "deleted-duplicate-row": (
        "DELETE FROM no_pk_dups WHERE ctid = (SELECT ctid FROM no_pk_dups WHERE a = 1 LIMIT 1)",
        ['data["public.no_pk_dups"]'],
    ),
    # same row count and same set of distinct rows, different multiplicities
    "duplicate-multiplicity-swap": (
        "DELETE FROM no_pk_dups WHERE ctid = (SELECT ctid FROM no_pk_dups WHERE a = 1 LIMIT 1);"
        "INSERT INTO no_pk_dups VALUES (2, 'pair', '-0')",
        ['data["public.no_pk_dups"]["hash"]'],
    ),
    "sequence-value": ("SELECT setval('serials_id_seq', 1001)", ['sequences["public.serials_id_seq"]["last_value"]']),
    "sequence-is-called": (
        "SELECT setval('standalone_not_called', 42, true)",
        ['sequences["public.standalone_not_called"]["is_called"]'],
    ),
    "dropped-index": (
        "DROP INDEX products_active_price_idx",
        ['relations["public.products"]["indexes"]["products_active_price_idx"]'],
    ),
    "trigger-fired": (
        "UPDATE trigger_target SET note = note WHERE id = 1",
        ['data["public.trigger_target"]', 'data["public.audit_log"]', 'sequences["public.audit_log_id_seq"]'],
    ),
    "rls-no-force": (
        "ALTER TABLE rls_secret NO FORCE ROW LEVEL SECURITY",
        ['relations["public.rls_secret"]["rls_forced"]'],
    ),
    "matview-refreshed": (
        "REFRESH MATERIALIZED VIEW product_names_unpopulated",
        ['data["public.product_names_unpopulated"]', 'relations["public.product_names_unpopulated"]["populated"]'],
    ),
    "odd-table-value": (
        f'UPDATE {ODD_TABLE} SET "user" = NULL WHERE "select" = 2',  # '' -> NULL
        [f"data[{json.dumps(ODD_TABLE)}]"],
    ),
    # equal as citext, different as text: a restore must keep the exact value
    "citext-case-only": ("UPDATE ext_typed SET nick = 'ALICE' WHERE id = 1", ['data["public.ext_typed"]']),
    "publication-row-filter": (
        "ALTER PUBLICATION fid_pub_filtered SET TABLE products (id, sku, price, active)"
        " WHERE (price > 1 AND active), TABLE ext_typed WHERE (id > 1 AND id <> 3)",
        ['publications["fid_pub_filtered"]["tables"]["public.products"]["row_filter"]'],
    ),
    "publication-column-list": (
        "ALTER PUBLICATION fid_pub_filtered SET TABLE products (id, sku, active)"
        " WHERE (price > 0 AND active), TABLE ext_typed WHERE (id > 1 AND id <> 3)",
        ['publications["fid_pub_filtered"]["tables"]["public.products"]["columns"]'],
    ),
    "publication-schema-dropped": (
        'ALTER PUBLICATION fid_pub_schema DROP TABLES IN SCHEMA "Odd Schema.v1"',
        ['publications["fid_pub_schema"]["schemas"]'],
    ),
    "publication-via-root": (
        "ALTER PUBLICATION fid_pub_plain SET (publish_via_partition_root = true)",
        ['publications["fid_pub_plain"]["via_partition_root"]'],
    ),
    "publication-actions": (
        "ALTER PUBLICATION \"fid pub Root\" SET (publish = 'insert, delete')",
        ['publications["fid pub Root"]["publish"]'],
    ),
    "large-object-content": (  # same size, one byte changed
        "SELECT lo_put(4242001, 0, '\\x4c')",
        ['large_objects["4242001"]["md5"]'],
    ),
    "large-object-grant": (
        'REVOKE SELECT ON LARGE OBJECT 4242001 FROM "bk fid Reader"',
        ['large_objects["4242001"]["acl"]'],
    ),
    "large-object-owner": ("ALTER LARGE OBJECT 4242002 OWNER TO bk_fid_owner", ['large_objects["4242002"]["owner"]']),
    "large-object-comment": (
        "COMMENT ON LARGE OBJECT 4242002 IS 'now with a comment'",
        ['large_objects["4242002"]["comment"]'],
    ),
    "dropped-default-privilege": (  # back to the built-in default: the entry disappears
        'ALTER DEFAULT PRIVILEGES FOR ROLE bk_fid_owner REVOKE SELECT ON TABLES FROM "bk fid Reader"',
        ['default_privileges["bk_fid_owner in * on r"]'],
    ),
    "dropped-schema-default-privilege": (
        "ALTER DEFAULT PRIVILEGES FOR ROLE bk_fid_owner IN SCHEMA public"
        ' REVOKE USAGE, SELECT ON SEQUENCES FROM "bk fid Reader"',
        ['default_privileges["bk_fid_owner in public on S"]'],
    ),
    "event-trigger-added": (
        "CREATE FUNCTION public.fid_evt() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$;"
        "CREATE EVENT TRIGGER fid_evt ON ddl_command_end EXECUTE FUNCTION public.fid_evt()",
        ['functions["public.fid_evt()"]', 'event_triggers["fid_evt"]'],
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_fingerprint_detects(mutation, fixture_db, base_fp, clone_db):
    stmt, expected_paths = MUTATIONS[mutation]
    copy = clone_db(fixture_db)
    assert_same(base_fp, fingerprint(copy))
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute(stmt)
    changed = fingerprint(copy)
    assert changed != base_fp
    diffs = diff_fingerprints(base_fp, changed)
    assert diffs
    unexpected = [d for d in diffs if not d.startswith(tuple(expected_paths))]
    assert not unexpected, "\n".join(unexpected)
    for path in expected_paths:
        assert any(d.startswith(path) for d in diffs), (path, diffs)


def test_fingerprint_ignores_row_order(fixture_db, base_fp, clone_db):
    copy = clone_db(fixture_db)
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("""
            CREATE TEMP TABLE keep AS SELECT * FROM no_pk_dups ORDER BY a DESC, c;
            DELETE FROM no_pk_dups;
            INSERT INTO no_pk_dups SELECT * FROM keep;
            CREATE TEMP TABLE keep2 AS SELECT * FROM no_index ORDER BY k DESC;
            DELETE FROM no_index;
            INSERT INTO no_index SELECT * FROM keep2;
        """)
        conn.execute("VACUUM FULL texts")
    assert_same(base_fp, fingerprint(copy))


# -- (c) the standard: pg_dump -Fc / pg_restore reproduces it exactly -----------


def test_pg_dump_restore_round_trip_is_exact(make_db, tmp_path):
    src = make_db("fidsrc")
    load_fixture(src)
    add_toast_values(src, mb=20)
    before = fingerprint(src)
    assert before["data"]["public.big_values"]["rows"] == 3

    dump = tmp_path / "fidelity.dump"
    run_tool("pg_dump", "-Fc", "--dbname", src, "-f", str(dump))
    dst = make_db("fiddst")
    run_tool("pg_restore", "--exit-on-error", "--dbname", dst, str(dump))

    assert_same(before, fingerprint(dst))
    # the source was only read
    assert_same(before, fingerprint(src))


def test_pg_dump_known_gap_inherited_column_order(make_db, tmp_path):
    """pg_dump does NOT keep a child's column order when its parent gained a
    column after the child was created: the restored child lists inherited
    columns first.  The fingerprint must (and does) report it; the fixture
    avoids the case so the round trip above can be exact."""
    src = make_db("inhsrc")
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE p (a int, b text);
            CREATE TABLE ch (c text) INHERITS (p);
            ALTER TABLE p ADD COLUMN d int;
            INSERT INTO ch VALUES (1, 'x', 'c', 4);
        """)
    dump = tmp_path / "inh.dump"
    run_tool("pg_dump", "-Fc", "--dbname", src, "-f", str(dump))
    dst = make_db("inhdst")
    run_tool("pg_restore", "--exit-on-error", "--dbname", dst, str(dump))

    before, after = fingerprint(src), fingerprint(dst)
    assert before["relations"]["public.ch"]["column_order"] == ["a", "b", "c", "d"]
    assert after["relations"]["public.ch"]["column_order"] == ["a", "b", "d", "c"]
    diffs = diff_fingerprints(before, after)
    assert [d.split(":")[0] for d in diffs] == [
        'data["public.ch"]["hash"]',
        'relations["public.ch"]["column_order"][2]',
        'relations["public.ch"]["column_order"][3]',
    ]


def test_pg_dump_known_gap_stale_matview(make_db, tmp_path):
    """pg_restore does not copy a materialized view's rows: it re-runs REFRESH
    MATERIALIZED VIEW on the restored tables.  A matview that was stale in the
    source (its tables changed since the last refresh) comes back with fresh,
    different rows.  (No restore can do better: rows cannot be inserted into a
    matview.)  The fingerprint must (and does) report it; the fixture's
    matviews are fresh so the round trip above can be exact."""
    src = make_db("mvsrc")
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE b (x int);
            INSERT INTO b VALUES (1);
            CREATE MATERIALIZED VIEW m AS SELECT count(*) AS n FROM b;
            INSERT INTO b VALUES (2);
        """)
    dump = tmp_path / "mv.dump"
    run_tool("pg_dump", "-Fc", "--dbname", src, "-f", str(dump))
    dst = make_db("mvdst")
    run_tool("pg_restore", "--exit-on-error", "--dbname", dst, str(dump))

    diffs = diff_fingerprints(fingerprint(src), fingerprint(dst))
    assert [d.split(":")[0] for d in diffs] == ['data["public.m"]["hash"]']
    with psycopg.connect(dst) as conn:
        assert conn.execute("SELECT n FROM m").fetchone() == (2,)  # source still says 1
