"""Restoring into tables that exist and differ from the source: their columns, their row-level
security, their owner, their sequences.  Each is a case where the dry run said the restore
would succeed and the real run then failed, or the rows arrived changed.  Real PostgreSQL,
non-superuser roles where the case is about one.
"""

from __future__ import annotations

import contextlib

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import backupkit
from backupkit.errors import RestoreError
from backupkit.recovery.checks import takes_exactly


def _rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def _run(dsn: str, script: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(script)


@contextlib.contextmanager
def _role(dsn: str, prefix: str, *, replica: bool = True):
    """A login role (NOSUPERUSER) allowed to set session_replication_role, as Supabase's postgres
    is; its DSN to ``dsn``'s database.  Dropped afterwards (roles belong to the whole server)."""
    role = f"{prefix}_{conninfo_to_dict(dsn)['dbname']}"
    _run(dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{prefix}'")
    if replica:
        _run(dsn, f"GRANT SET ON PARAMETER session_replication_role TO {role}")
    try:
        yield role, make_conninfo(dsn, user=role, password=f"pw-{prefix}")
    finally:
        if replica:
            _run(dsn, f"REVOKE SET ON PARAMETER session_replication_role FROM {role}")
        _run(dsn, f"DROP OWNED BY {role}; DROP ROLE {role}")


SOURCE = """
CREATE TABLE prices (id int PRIMARY KEY, amount numeric(12,2));
CREATE TABLE visits (id int PRIMARY KEY, at timestamptz);
CREATE TABLE people (id int PRIMARY KEY, name text);
INSERT INTO prices VALUES (1, 1.50), (2, 2.25);
INSERT INTO visits VALUES (1, '2024-06-01 12:00+02');
INSERT INTO people VALUES (1, 'ann')"""


def test_data_only_into_columns_of_another_type_is_refused_not_converted(make_db, tmp_path):
    """COPY maps columns by name and converts each value to the target's type: 1.50 loaded into
    numeric(12,0) as 2, 12:00+02 into timestamp as 10:00 with no zone, and the restore said it
    succeeded.  A column the target requires and the snapshot lacks failed only the real run.
    Refused before anything changes; a wider column of the same kind is not refused."""
    source = make_db("types")
    _run(source, SOURCE)
    snap = backupkit.backup(source, tmp_path, progress=False).path
    target = make_db("types_to")
    _run(
        target,
        """
        CREATE TABLE prices (id int PRIMARY KEY, amount numeric(12,0));
        CREATE TABLE visits (id int PRIMARY KEY, at timestamp);
        CREATE TABLE people (id int PRIMARY KEY, name text, email text NOT NULL)""",
    )

    with pytest.raises(RestoreError) as caught:
        backupkit.restore(snap, target, data_only=True, dry_run=True, progress=False)
    said = str(caught.value)
    assert "amount is numeric(12,0), not the snapshot's numeric(12,2)" in said
    assert "at is timestamp without time zone, not the snapshot's timestamp with time zone" in said
    assert "email is NOT NULL without a default and not in the snapshot" in said
    with pytest.raises(RestoreError, match="nothing was changed"):
        backupkit.restore(snap, target, data_only=True, progress=False)
    assert _rows(target, "SELECT count(*) FROM prices") == [(0,)]

    # What a migration commonly does (another column order, integer to bigint, more digits)
    # keeps every value: loaded by column name, not refused.
    target = make_db("wider_to")
    _run(
        target,
        """
        CREATE TABLE prices (amount numeric(16,2), id bigint PRIMARY KEY);
        CREATE TABLE visits (at timestamptz, id int PRIMARY KEY, note text DEFAULT 'none');
        CREATE TABLE people (name text, id int PRIMARY KEY)""",
    )
    for jobs in (1, 2):
        backupkit.restore(snap, target, data_only=True, clean=True, jobs=jobs, progress=False)
        assert _rows(target, "SELECT id, amount::text FROM prices ORDER BY id") == [(1, "1.50"), (2, "2.25")]
        assert _rows(target, "SELECT id, at = '2024-06-01 10:00+00', note FROM visits") == [(1, True, "none")]
        assert _rows(target, "SELECT id, name FROM people") == [(1, "ann")]


def test_which_types_take_every_value_unchanged():
    assert takes_exactly("bigint", "integer") and not takes_exactly("integer", "bigint")
    assert takes_exactly("numeric", "integer") and not takes_exactly("numeric(14,2)", "integer")
    assert takes_exactly("numeric(14,2)", "numeric(12,2)") and not takes_exactly("numeric(12,0)", "numeric(12,2)")
    assert takes_exactly("text", "character varying(5)") and takes_exactly(
        "character varying(9)", "character varying(5)"
    )
    assert not takes_exactly("character varying(3)", "text") and not takes_exactly(
        "character varying(3)", "character varying"
    )
    assert not takes_exactly("timestamp without time zone", "timestamp with time zone")


FORCED = """
CREATE TABLE todos (id int PRIMARY KEY, done boolean);
INSERT INTO todos VALUES (1, true), (2, false), (3, true);
ALTER TABLE todos ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY open_only ON todos USING (NOT done)"""


@pytest.mark.parametrize("how", ["in-place", "data-only"])
def test_a_forced_rls_table_of_the_restoring_role_gets_every_row_and_stays_forced(make_db, tmp_path, how):
    """The rollback procedure (--table --clean) by the table's owner, not a superuser, on a table
    with FORCE ROW LEVEL SECURITY: the dry run passed, the real run failed on 'query would be
    affected by row-level security policy'.  FORCE is switched off for the load and back on."""
    dsn = make_db("forced")
    _run(dsn, FORCED)
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "UPDATE todos SET done = NOT done")
    with _role(dsn, "owner") as (owner, as_owner):
        _run(dsn, f"ALTER TABLE todos OWNER TO {owner}")
        kw = {"data_only": True} if how == "data-only" else {}
        result = backupkit.restore(snap, as_owner, tables=["public.todos"], clean=True, progress=False, **kw)
        assert result.rows == 3
        assert any("FORCE ROW LEVEL SECURITY of public.todos" in n for n in result.plan.notes)
        assert _rows(dsn, "SELECT id, done FROM todos ORDER BY id") == [(1, True), (2, False), (3, True)]
        assert _rows(dsn, "SELECT relforcerowsecurity FROM pg_class WHERE oid = 'todos'::regclass") == [(True,)]
        assert _rows(as_owner, "SELECT id FROM todos") == [(2,)]  # the policy applies to its owner again


@pytest.mark.parametrize("forced", [False, True], ids=["enabled", "forced"])
def test_rls_that_applies_to_the_restoring_role_is_named_by_the_dry_run(make_db, tmp_path, forced):
    """A role with every privilege on another role's table with RLS: the dry run passed, the real
    run failed.  Refused before anything changes, naming the table and who may restore it."""
    dsn = make_db("rlsother")
    _run(dsn, FORCED if forced else FORCED.replace(", FORCE ROW LEVEL SECURITY", ""))
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "UPDATE todos SET done = NOT done")
    with _role(dsn, "loader") as (loader, as_loader):
        _run(dsn, f"GRANT ALL ON todos TO {loader}")
        for kw in ({"data_only": True}, {}):
            with pytest.raises(RestoreError, match=r"row-level security of public\.todos applies to .*restore as"):
                backupkit.restore(
                    snap, as_loader, tables=["public.todos"], clean=True, dry_run=True, progress=False, **kw
                )
        assert _rows(dsn, "SELECT id, done FROM todos ORDER BY id") == [(1, False), (2, True), (3, False)]


def test_clean_of_a_table_another_role_owns_is_refused_by_the_dry_run(make_db, tmp_path):
    """--clean of a table whose columns changed drops and recreates it, which only its owner may:
    the dry run passed, the real run failed on 'must be owner of table'."""
    dsn = make_db("notmine")
    _run(dsn, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    _run(dsn, "ALTER TABLE t ADD COLUMN extra int")
    with _role(dsn, "other", replica=False) as (other, as_other):
        _run(dsn, f"GRANT ALL ON t TO {other}; GRANT ALL ON SCHEMA public TO {other}")
        for tables in (["public.t"], []):
            with pytest.raises(RestoreError, match=r"`clean` would drop public\.t .* only its owner \w+ may drop it"):
                backupkit.restore(snap, as_other, tables=tables, clean=True, dry_run=True, progress=False)
        _run(dsn, f"REVOKE ALL ON SCHEMA public FROM {other}")


def test_data_only_sets_the_sequence_the_target_table_draws_from(make_db, tmp_path):
    """Tables made by other DDL in the target (identity and serial sequences of other names):
    the whole restore failed at its end on 'relation public.q_id_seq does not exist', after a dry
    run that passed.  The sequence each column draws from is set; the next insert takes a new id."""
    source = make_db("seqsrc")
    _run(
        source,
        """
        CREATE TABLE s (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
        CREATE TABLE q (id serial PRIMARY KEY, v text);
        INSERT INTO s (v) SELECT 'x' FROM generate_series(1, 5); INSERT INTO q (v) SELECT 'x' FROM generate_series(1, 5)""",
    )
    snap = backupkit.backup(source, tmp_path, progress=False).path
    target = make_db("seqdst")
    _run(
        target,
        """
        CREATE TABLE s (id int GENERATED BY DEFAULT AS IDENTITY (SEQUENCE NAME s_ids) PRIMARY KEY, v text);
        CREATE TABLE q (id int PRIMARY KEY, v text);
        CREATE SEQUENCE q_ids OWNED BY q.id; ALTER TABLE q ALTER id SET DEFAULT nextval('q_ids')""",
    )

    result = backupkit.restore(snap, target, data_only=True, progress=False)

    assert result.rows == 10
    _run(target, "INSERT INTO s (v) VALUES ('new'); INSERT INTO q (v) VALUES ('new')")
    assert _rows(target, "SELECT max(id) FROM s") == [(6,)] and _rows(target, "SELECT max(id) FROM q") == [(6,)]


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_a_target_of_another_encoding_is_named_by_the_dry_run(pg_server, tmp_path, encoding):
    """A UTF-8 snapshot with Japanese text into a LATIN1 database: the dry run said nothing, the
    real run failed on the first row LATIN1 cannot hold (rolled back); into SQL_ASCII the bytes
    went in unchecked.  The dry run warns; the real run still changes nothing in LATIN1."""
    from psycopg import sql

    source = pg_server.createdb("utf8")
    name = f"bk_{encoding.lower()}_{conninfo_to_dict(source)['dbname'][-6:]}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
                sql.Identifier(name), sql.Literal(encoding)
            )
        )
    target = pg_server.dsn(name)
    try:
        _run(source, "CREATE TABLE w (id int PRIMARY KEY, word text); INSERT INTO w VALUES (1, 'café'), (2, '日本語')")
        snap = backupkit.backup(source, tmp_path, progress=False).path
        result = backupkit.restore(snap, target, dry_run=True, progress=False)
        assert any(f"the target database's encoding is {encoding}, the snapshot's UTF8" in w for w in result.warnings)
        if encoding == "LATIN1":
            with pytest.raises(RestoreError, match="no equivalent in encoding.*rolled back|rolled back.*no equivalent"):
                backupkit.restore(snap, target, progress=False)
            assert _rows(target, "SELECT to_regclass('public.w')") == [(None,)]
    finally:
        pg_server.dropdb(target)
        pg_server.dropdb(source)
