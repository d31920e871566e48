"""Restoring into a database that is in use: what a restore empties or drops, what it leaves.

--data-only loads into tables that exist, whose triggers and foreign keys exist already, so
the rows load with them switched off (``session_replication_role = replica``, as
``pg_restore --disable-triggers``) and the keys are checked afterwards; a selective `clean`
restore must never take along what it does not bring back.  Everything here runs against a
real PostgreSQL and checks what a user would look at afterwards.
"""

from __future__ import annotations

import psycopg
import pytest

import backupkit
from backupkit.errors import RestoreError
from backupkit.recovery.in_place import deleting


def _rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def _run(dsn: str, script: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(script)


def test_clean_empties_only_the_tables_it_reloads_not_their_inheritance_children(make_db, tmp_path):
    """TRUNCATE without ONLY also emptied a child table made after the snapshot: its rows were lost."""
    dsn = make_db("inherit")
    _run(
        dsn,
        """
        CREATE TABLE events (id int, body text);
        CREATE TABLE events_2024 () INHERITS (events);
        INSERT INTO events VALUES (1, 'old');
        INSERT INTO events_2024 VALUES (2, 'y2024')""",
    )
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "CREATE TABLE events_2025 () INHERITS (events); INSERT INTO events_2025 VALUES (3, 'y2025')")
    _run(dsn, "UPDATE events SET body = 'changed'")

    backupkit.restore(snap, dsn, data_only=True, clean=True, progress=False)

    assert _rows(dsn, "SELECT id, body FROM events_2025") == [(3, "changed")]  # not the snapshot's: kept
    assert _rows(dsn, "SELECT id, body FROM ONLY events") == [(1, "old")]
    assert _rows(dsn, "SELECT id, body FROM events_2024") == [(2, "y2024")]


@pytest.fixture
def shop(make_db):
    """customers <- orders (ON DELETE CASCADE) <- items; notes -> customers; the app goes on."""
    dsn = make_db("shop")
    _run(
        dsn,
        """
        CREATE TABLE customers (id int PRIMARY KEY, name text);
        CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers ON DELETE CASCADE);
        CREATE TABLE items (id int PRIMARY KEY, "order" int REFERENCES orders ON DELETE CASCADE);
        INSERT INTO customers VALUES (1, 'ann'), (2, 'bob');
        INSERT INTO orders VALUES (10, 1), (20, 2);
        INSERT INTO items VALUES (100, 10), (200, 20)""",
    )
    return dsn


def test_one_table_others_reference_is_reloaded_and_its_references_kept(shop, tmp_path):
    """--table customers --data-only --clean: TRUNCATE refused it (orders references it) with a hint
    nobody could act on.  Its rows are replaced, nothing cascades into orders or items."""
    snap = backupkit.backup(shop, tmp_path, progress=False).path
    _run(shop, "UPDATE customers SET name = 'oops'")

    backupkit.restore(snap, shop, tables=["public.customers"], data_only=True, clean=True, progress=False)

    assert _rows(shop, "SELECT id, name FROM customers ORDER BY id") == [(1, "ann"), (2, "bob")]
    assert _rows(shop, "SELECT count(*) FROM orders") == [(2,)] and _rows(shop, "SELECT count(*) FROM items") == [(2,)]


def test_rows_that_break_a_foreign_key_roll_the_data_only_restore_back(shop, tmp_path):
    """Loaded with foreign-key checks off, the rows were never checked: an order of a customer
    deleted since the snapshot was loaded, and the restore reported success."""
    snap = backupkit.backup(shop, tmp_path, progress=False).path  # orders 10 (ann) and 20 (bob)
    _run(shop, "DELETE FROM customers WHERE id = 2")  # bob, his order and its item go (CASCADE)

    with pytest.raises(RestoreError, match=r"break foreign keys: orders_customer_fkey.*rolled back"):
        backupkit.restore(snap, shop, tables=["public.orders"], data_only=True, clean=True, progress=False)

    assert _rows(shop, "SELECT id FROM orders") == [(10,)]  # as it was
    assert _rows(shop, "SELECT id FROM items") == [(100,)]


def test_which_tables_are_emptied_by_delete():
    # 1 <- 2 <- 3 (outside): 2 is referenced from outside, and 2 references 1.
    assert deleting([1, 2], [(2, 1), (3, 2)]) == {1, 2}
    assert deleting([1, 2], [(2, 1)]) == set()  # both truncated together
    assert deleting([1], [(1, 1)]) == set()  # a table referencing itself
    assert deleting([1, 2], [(3, 1), (2, 2)]) == {1}


#: A table in two yearly partitions, one row in each.
PARTITIONED = """
    CREATE TABLE m (id int, ts date, v text) PARTITION BY RANGE (ts);
    CREATE TABLE m_2023 PARTITION OF m FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
    CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
    INSERT INTO m VALUES (1, '2023-05-01', 'a'), (2, '2024-05-01', 'b')"""


def test_one_partition_with_clean_never_drops_the_others(make_db, tmp_path):
    """Restoring one partition with clean dropped and recreated its partitioned table, and every
    other partition with it: rows written after the snapshot were lost, and it said it succeeded."""
    dsn = make_db("parts")
    _run(dsn, PARTITIONED)
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "DROP TABLE m_2023; INSERT INTO m VALUES (3, '2024-06-01', 'new')")  # dropped by mistake

    with pytest.raises(RestoreError, match=r"`clean` would drop public\.m with its partitions public\.m_2024"):
        backupkit.restore(snap, dsn, tables=["public.m_2023"], clean=True, dry_run=True, progress=False)
    with pytest.raises(RestoreError, match="nothing was changed"):
        backupkit.restore(snap, dsn, tables=["public.m_2023"], clean=True, progress=False)
    assert _rows(dsn, "SELECT id FROM m ORDER BY id") == [(2,), (3,)]


def test_data_only_by_a_role_that_cannot_stop_triggers_is_refused_when_planning(make_db, tmp_path):
    """Found before anything changes (the dry run says it), not after a parallel restore had
    marked the target and every load had failed."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    dsn = make_db("nosuper")
    role = "loader_" + conninfo_to_dict(dsn)["dbname"]
    _run(
        dsn,
        f"""
        CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);
        CREATE ROLE {role} LOGIN PASSWORD 'pw-loader'; GRANT ALL ON t TO {role}""",
    )
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    loader = make_conninfo(dsn, user=role, password="pw-loader")
    try:
        for jobs in (1, 2):
            with pytest.raises(RestoreError, match="data_only must stop the tables' triggers") as caught:
                backupkit.restore(snap, loader, data_only=True, clean=True, jobs=jobs, dry_run=True, progress=False)
            assert "nothing was changed" in str(caught.value)
    finally:
        _run(dsn, f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_a_data_only_restore_says_it_leaves_the_large_objects_out(make_db, tmp_path):
    dsn = make_db("lobs")
    _run(dsn, "CREATE TABLE docs (id int PRIMARY KEY, body oid); INSERT INTO docs VALUES (1, lo_from_bytea(0, 'x'))")
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    result = backupkit.restore(snap, dsn, data_only=True, clean=True, dry_run=True, progress=False)
    assert any("left out the snapshot's 1 large object(s)" in n for n in result.plan.notes)


def test_a_selective_data_only_restore_sets_the_sequence_a_default_uses(make_db, tmp_path):
    """A sequence no table owns, used through DEFAULT nextval(): left as it was, so the next
    insert after restoring the table took an id that exists."""
    dsn = make_db("freeseq")
    _run(
        dsn,
        """
        CREATE SEQUENCE ticket_no;
        CREATE TABLE tickets (id bigint PRIMARY KEY DEFAULT nextval('ticket_no'), t text);
        CREATE TABLE other (id int);
        INSERT INTO tickets (t) SELECT 't' FROM generate_series(1, 5)""",
    )
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "TRUNCATE tickets; SELECT setval('ticket_no', 1, false)")  # emptied, and counting restarted

    backupkit.restore(snap, dsn, tables=["public.tickets"], data_only=True, clean=True, progress=False)

    assert _rows(dsn, "SELECT last_value, is_called FROM ticket_no") == [(5, True)]
    _run(dsn, "INSERT INTO tickets (t) VALUES ('new')")
    assert _rows(dsn, "SELECT max(id) FROM tickets") == [(6,)]


@pytest.mark.parametrize("reshaped", [False, True], ids=["all-in-place", "one-reshaped"])
def test_a_schema_clean_restore_keeps_in_place_what_it_says_it_keeps(make_db, tmp_path, reshaped):
    """--schema app --clean, app.t unchanged in shape: planned "in place" (its grants, triggers
    and what points at it stay), but the whole schema's entries still held app.t's own, so the
    restore failed on 'already exists', or, beside a reshaped table, dropped and recreated app.t
    and lost the grant and trigger the target had added."""
    from psycopg.conninfo import conninfo_to_dict

    dsn = make_db("schemaclean")
    reader = "reader_" + conninfo_to_dict(dsn)["dbname"]
    _run(
        dsn,
        """
        CREATE SCHEMA app;
        CREATE TABLE app.t (id int PRIMARY KEY, v text);
        CREATE TABLE app.u (id int PRIMARY KEY);
        INSERT INTO app.t VALUES (1, 'a'), (2, 'b'); INSERT INTO app.u VALUES (1)""",
    )
    snap = backupkit.backup(dsn, tmp_path, schemas=["public", "app"], progress=False).path
    _run(
        dsn,
        f"""
        INSERT INTO app.t VALUES (3, 'c');
        CREATE ROLE {reader}; GRANT USAGE ON SCHEMA app TO {reader}; GRANT SELECT ON app.t TO {reader};
        CREATE FUNCTION app.stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
        CREATE TRIGGER stamp BEFORE INSERT ON app.t FOR EACH ROW EXECUTE FUNCTION app.stamp()""",
    )
    if reshaped:
        _run(dsn, "ALTER TABLE app.u ADD COLUMN extra int")
    oid = _rows(dsn, "SELECT 'app.t'::regclass::oid")
    try:
        result = backupkit.restore(snap, dsn, schemas=["app"], clean=True, progress=False)
        assert result.plan.in_place == (["app.t"] if reshaped else ["app.t", "app.u"])
        assert _rows(dsn, "SELECT id, v FROM app.t ORDER BY id") == [(1, "a"), (2, "b")]
        assert _rows(dsn, "SELECT 'app.t'::regclass::oid") == oid  # the same table, not a new one
        assert _rows(dsn, f"SELECT has_table_privilege('{reader}', 'app.t', 'SELECT')") == [(True,)]
        assert _rows(dsn, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'app.t'::regclass AND NOT tgisinternal") == [
            ("stamp",)
        ]
        assert _rows(dsn, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'u'") == [(1,)]
    finally:
        _run(dsn, f"DROP OWNED BY {reader}; DROP ROLE {reader}")


def test_an_in_place_restore_does_not_mix_in_rows_the_app_writes_meanwhile(make_db, tmp_path):
    """The rows were replaced under ROW EXCLUSIVE only: an app's insert committed while the
    restore ran survived beside the snapshot's rows.  The tables are locked against writes
    first; a write in progress makes the restore wait (here, give up after 1 s), not mix."""
    dsn = make_db("mix")
    _run(dsn, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "UPDATE t SET v = 'oops'")
    with psycopg.connect(dsn) as app:
        app.execute("INSERT INTO t VALUES (99, 'written meanwhile')")  # not committed yet
        with pytest.raises(RestoreError, match="rolled back, the target is unchanged"):
            backupkit.restore(snap, dsn, tables=["public.t"], clean=True, lock_wait_timeout=1, progress=False)
        app.commit()
    assert _rows(dsn, "SELECT id, v FROM t ORDER BY id") == [(1, "oops"), (2, "oops"), (99, "written meanwhile")]
    result = backupkit.restore(snap, dsn, tables=["public.t"], clean=True, progress=False)
    assert result.plan.in_place == ["public.t"]
    assert _rows(dsn, "SELECT id, v FROM t ORDER BY id") == [(1, "a"), (2, "b")]


def test_a_view_over_a_forced_rls_table_refreshes_for_a_non_superuser_owner(make_db, pg_server, tmp_path):
    """FORCE ROW LEVEL SECURITY applies to the table's owner: with row_security off (as for
    loading) PostgreSQL refused the materialized view's refresh, after a dry run that passed."""
    from psycopg import sql as pgsql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    source = make_db("forced")
    owner = "owner_" + conninfo_to_dict(source)["dbname"]
    _run(
        source,
        f"""
        CREATE ROLE {owner} LOGIN PASSWORD 'pw-owner';
        CREATE TABLE todos (id int PRIMARY KEY, done boolean);
        INSERT INTO todos VALUES (1, true), (2, false), (3, true);
        ALTER TABLE todos ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
        CREATE POLICY open_only ON todos USING (NOT done);
        CREATE MATERIALIZED VIEW todo_counts AS SELECT count(*) AS n FROM todos;
        ALTER TABLE todos OWNER TO {owner}; ALTER MATERIALIZED VIEW todo_counts OWNER TO {owner}""",
    )
    snap = backupkit.backup(source, tmp_path, progress=False).path
    target = make_db("forced_to")
    name = conninfo_to_dict(target)["dbname"]
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("ALTER DATABASE {} OWNER TO {}").format(pgsql.Identifier(name), pgsql.Identifier(owner)))
    try:
        result = backupkit.restore(snap, make_conninfo(target, user=owner, password="pw-owner"), progress=False)
        assert result.rows == 3
        assert _rows(target, "SELECT count(*) FROM todos") == [(3,)]  # every row, whatever the policy
        # The view as its owner's REFRESH makes it: through the policy, as on the source.
        assert _rows(target, "SELECT n FROM todo_counts") == [(1,)]
    finally:
        _run(target, f"DROP OWNED BY {owner}")
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(pgsql.Identifier(name)))
        _run(source, f"DROP OWNED BY {owner}; DROP ROLE {owner}")


@pytest.mark.parametrize("how", ["in-place", "data-only"])
def test_triggers_that_fire_even_with_triggers_off_do_not_fire_during_the_load(make_db, tmp_path, how):
    """ENABLE ALWAYS triggers fire under session_replication_role = replica: an audit trigger
    wrote a row for each of the restore's DELETEs and COPY rows, and one that stamps a column
    changed the snapshot's values.  Switched off for the load and back on, as they were."""
    dsn = make_db("always")
    _run(
        dsn,
        """
        CREATE TABLE audit (what text);
        CREATE TABLE t (id int PRIMARY KEY, v text, stamped text);
        CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS
          $$BEGIN INSERT INTO audit VALUES (TG_OP); RETURN COALESCE(NEW, OLD); END$$;
        CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS
          $$BEGIN NEW.stamped := 'by trigger'; RETURN NEW; END$$;
        INSERT INTO t VALUES (1, 'a'), (2, 'b');
        CREATE TRIGGER log_it AFTER INSERT OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION log_it();
        CREATE TRIGGER stamp BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION stamp();
        ALTER TABLE t ENABLE ALWAYS TRIGGER log_it; ALTER TABLE t ENABLE REPLICA TRIGGER stamp;
        TRUNCATE audit""",
    )
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "UPDATE t SET v = 'oops'; TRUNCATE audit")
    kw = {"data_only": True} if how == "data-only" else {}
    result = backupkit.restore(snap, dsn, tables=["public.t"], clean=True, jobs=2, progress=False, **kw)
    assert len(result.plan.firing_triggers) == 2
    assert _rows(dsn, "SELECT id, v, stamped FROM t ORDER BY id") == [(1, "a", None), (2, "b", None)]
    assert _rows(dsn, "SELECT count(*) FROM audit") == [(0,)]
    assert _rows(dsn, "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 't'::regclass ORDER BY 1") == [
        ("log_it", "A"),
        ("stamp", "R"),
    ]


def test_a_trigger_that_fires_and_that_the_role_cannot_switch_off_is_refused_when_planning(make_db, tmp_path):
    """Only a table's owner may switch a trigger off: an ENABLE ALWAYS trigger on another
    role's table fired for every row a data-only restore loaded (an audit row per COPY row)
    and the restore said nothing.  Refused before anything changes, naming the trigger."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    dsn = make_db("alwaysnotmine")
    role = "loader_" + conninfo_to_dict(dsn)["dbname"]
    _run(
        dsn,
        f"""
        CREATE TABLE audit (what text);
        CREATE TABLE t (id int PRIMARY KEY, v text);
        CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS
          $$BEGIN INSERT INTO audit VALUES (TG_OP); RETURN NEW; END$$;
        INSERT INTO t VALUES (1, 'a'), (2, 'b');
        CREATE TRIGGER log_it AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION log_it();
        ALTER TABLE t ENABLE ALWAYS TRIGGER log_it;
        CREATE ROLE {role} LOGIN PASSWORD 'pw-loader'; GRANT ALL ON t, audit TO {role};
        GRANT SET ON PARAMETER session_replication_role TO {role}""",
    )
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "UPDATE t SET v = 'oops'; TRUNCATE audit")
    loader = make_conninfo(dsn, user=role, password="pw-loader")
    try:
        with pytest.raises(
            RestoreError, match="public.t.s trigger log_it is ENABLE ALWAYS.*ENABLE ALWAYS TRIGGER log_it. after it"
        ) as caught:
            backupkit.restore(snap, loader, data_only=True, clean=True, progress=False)
        assert "nothing was changed" in str(caught.value)
        assert _rows(dsn, "SELECT v FROM t ORDER BY id") == [("oops",), ("oops",)]
        assert _rows(dsn, "SELECT count(*) FROM audit") == [(0,)]
    finally:
        _run(
            dsn, f"REVOKE SET ON PARAMETER session_replication_role FROM {role}; DROP OWNED BY {role}; DROP ROLE {role}"
        )


def test_one_partition_kept_in_place_is_restored_not_refused(make_db, tmp_path):
    """The partition exists with the snapshot's columns: its rows are replaced in place, and
    its partitioned table and the other partitions are not touched."""
    dsn = make_db("partkept")
    _run(dsn, PARTITIONED)
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "UPDATE m SET v = 'oops'; INSERT INTO m VALUES (3, '2024-06-01', 'new')")

    result = backupkit.restore(snap, dsn, tables=["public.m_2023"], clean=True, progress=False)

    assert result.plan.in_place == ["public.m_2023"]
    assert _rows(dsn, "SELECT id, v FROM m ORDER BY id") == [(1, "a"), (2, "oops"), (3, "new")]


def test_a_sequence_two_tables_share_never_goes_back(make_db, tmp_path):
    """Restoring one of two tables that take ids from one sequence rewound it to the snapshot's
    value, and the other table's next insert took an id it already had."""
    dsn = make_db("sharedseq")
    _run(
        dsn,
        """
        CREATE SEQUENCE ids;
        CREATE TABLE a (id bigint PRIMARY KEY DEFAULT nextval('ids'));
        CREATE TABLE b (id bigint PRIMARY KEY DEFAULT nextval('ids'));
        INSERT INTO a DEFAULT VALUES; INSERT INTO b DEFAULT VALUES""",
    )
    snap = backupkit.backup(dsn, tmp_path, progress=False).path  # ids at 2
    _run(dsn, "INSERT INTO b DEFAULT VALUES; INSERT INTO b DEFAULT VALUES")  # ids at 4

    backupkit.restore(snap, dsn, tables=["public.a"], clean=True, progress=False)

    assert _rows(dsn, "SELECT last_value FROM ids") == [(4,)]
    _run(dsn, "INSERT INTO b DEFAULT VALUES")
    assert _rows(dsn, "SELECT max(id) FROM b") == [(5,)]


def test_a_parallel_data_only_restore_checks_the_foreign_keys_too(shop, tmp_path):
    """With --jobs 2 the rows loaded and committed without the check: orders of a customer
    deleted since the snapshot, and success."""
    snap = backupkit.backup(shop, tmp_path, progress=False).path
    _run(shop, "DELETE FROM customers WHERE id = 2")
    _run(shop, "DELETE FROM items; DELETE FROM orders")
    with pytest.raises(RestoreError, match="break foreign keys: orders_customer_fkey"):
        backupkit.restore(snap, shop, tables=["public.orders", "public.items"], data_only=True, jobs=2, progress=False)
    assert _rows(shop, "SELECT count(*) FROM orders") == [(0,)]


def test_a_kept_tables_foreign_key_to_a_rebuilt_table_is_made_again(make_db, tmp_path):
    """--schema app --clean: app.a is kept in place, app.b (reshaped) dropped and recreated.
    a's foreign key to b stood in the way of dropping b and failed the restore."""
    dsn = make_db("fkrebuilt")
    _run(
        dsn,
        """
        CREATE SCHEMA app;
        CREATE TABLE app.b (id int PRIMARY KEY);
        CREATE TABLE app.a (id int PRIMARY KEY, b int REFERENCES app.b);
        INSERT INTO app.b VALUES (1), (2); INSERT INTO app.a VALUES (10, 1)""",
    )
    snap = backupkit.backup(dsn, tmp_path, schemas=["public", "app"], progress=False).path
    _run(dsn, "ALTER TABLE app.b ADD COLUMN extra int; UPDATE app.a SET b = 2")

    result = backupkit.restore(snap, dsn, schemas=["app"], clean=True, progress=False)

    assert result.plan.in_place == ["app.a"]
    assert _rows(dsn, "SELECT id, b FROM app.a") == [(10, 1)]
    assert _rows(dsn, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'b'") == [(1,)]
    assert _rows(dsn, "SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'a_b_fkey'") == [("app.b",)]


def test_a_schema_clean_restore_with_every_table_in_place_replaces_its_views_and_sequences(make_db, tmp_path):
    """The rollback procedure (--schema public --clean) with nothing reshaped: the schema's
    views and unowned sequences already existed, and the restore failed on 'already exists'."""
    dsn = make_db("allkept")
    _run(
        dsn,
        """
        CREATE SEQUENCE ids;
        CREATE SEQUENCE spare;
        CREATE TABLE t (id bigint PRIMARY KEY DEFAULT nextval('ids'), v text);
        CREATE VIEW t_names AS SELECT v FROM t;
        CREATE VIEW t_count AS SELECT count(*) AS n FROM t_names;
        INSERT INTO t (v) VALUES ('a'), ('b')""",
    )
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "UPDATE t SET v = 'oops'; INSERT INTO t (v) VALUES ('c')")

    result = backupkit.restore(snap, dsn, schemas=["public"], clean=True, progress=False)

    assert result.plan.in_place == ["public.t"]
    assert _rows(dsn, "SELECT v FROM t_names ORDER BY v") == [("a",), ("b",)]
    assert _rows(dsn, "SELECT n FROM t_count") == [(2,)]
    _run(dsn, "INSERT INTO t (v) VALUES ('d')")
    assert _rows(dsn, "SELECT max(id) FROM t") == [(3,)]  # ids as in the snapshot, whose rows t holds again
