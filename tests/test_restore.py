"""Restore is exact: backup → restore gives a database with the source's fingerprint.

The standard is the one pg_dump/pg_restore meets on the same fixture
(tests/test_fidelity_pgdump.py).
"""

from __future__ import annotations

import importlib
import json
import re
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from fidelity_big import add_toast_values
from fingerprint import diff_fingerprints, fingerprint
from helpers import load_small, run_cli, stored_file
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import backupkit
from backupkit.demo.data import create_demo, mutate_demo
from backupkit.pg.rows import one_row
from backupkit.recovery import parallel
from backupkit.recovery.job import restore
from backupkit.snapshot import formats
from backupkit.snapshot import manifest as mf

FIDELITY_SQL = (Path(__file__).parent / "fidelity.sql").read_text()


def all_schemas(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                "AND nspname <> 'information_schema' ORDER BY 1"
            ).fetchall()
        ]


def assert_same(source: str, target: str) -> None:
    a, b = fingerprint(source), fingerprint(target)
    assert a == b, "\n".join(diff_fingerprints(a, b)[:40])


@pytest.fixture
def small(make_db, tmp_path):
    """(source DSN, snapshot) of the small database, for the tests of restore's safety rules."""
    source = make_db("src")
    load_small(source)
    return source, backupkit.backup(source, tmp_path)


@pytest.fixture(scope="module")
def fidelity(pg_server, tmp_path_factory):
    """The fidelity fixture with TOASTed values of tens of MB, and one snapshot of it (chunked)."""
    dsn = pg_server.createdb("fidelity")
    with psycopg.connect(dsn) as conn:
        conn.execute(FIDELITY_SQL)
        # enough pages to be split into several ctid-range chunks
        conn.execute(
            "CREATE TABLE public.many (id int PRIMARY KEY, v text, n numeric); "
            "INSERT INTO public.many SELECT i, md5(i::text), i / 7.0 FROM generate_series(1, 20000) i"
        )
    add_toast_values(dsn, mb=20)
    out = tmp_path_factory.mktemp("fidelity-backups")
    res = backupkit.backup(dsn, out, schemas=all_schemas(dsn), jobs=2, chunk_bytes=16 * 1024)
    yield dsn, res
    pg_server.dropdb(dsn)


def test_round_trip_of_every_type_is_exact(fidelity, make_db):
    source, res = fidelity
    assert any(len(t["files"]) > 1 for t in res.manifest["tables"]), "expected a chunked table"
    target = make_db("restored")
    # --owner as a superuser: the standard pg_dump/pg_restore meet, owners and grants included.
    restore(res.path, target, owner=True)
    assert_same(source, target)


def test_parallel_round_trip_is_exact(fidelity, make_db):
    source, res = fidelity
    target = make_db("restored_par")
    result = restore(res.path, target, jobs=2, owner=True)
    assert result.rows == sum(t["rows"] for t in res.manifest["tables"])
    assert_same(source, target)


def sessions_opened(pg_server, dsn: str) -> int:
    """Sessions ever opened on ``dsn``'s database, once the ended ones are all counted."""
    name = conninfo_to_dict(dsn)["dbname"]
    seen: list[int] = []
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        # A backend counts its session when it exits, a moment after its client closed it.
        for _ in range(50):
            conn.execute("SELECT pg_stat_clear_snapshot()")
            seen.append(one_row(conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", [name]))[0])
            if len(seen) >= 4 and len(set(seen[-4:])) == 1:
                break
            time.sleep(0.1)
    return seen[-1]


def test_a_parallel_restore_of_many_tables_opens_a_connection_per_job_not_per_table(make_db, tmp_path, pg_server):
    # A connection costs a handshake, authentication and settings, tens of milliseconds over a
    # network, and a Supabase project allows only so many: each job keeps its own, as
    # pg_restore -j does, instead of opening one per table and per index group.
    source = make_db("many_src")
    with psycopg.connect(source) as conn:
        for i in range(30):
            conn.execute(
                f"CREATE TABLE public.t{i} (id int PRIMARY KEY, v text UNIQUE); "
                f"INSERT INTO public.t{i} SELECT g, md5(g::text) FROM generate_series(1, 100) g"
            )
    snap = backupkit.backup(source, tmp_path)
    target = make_db("many_dst")
    before = sessions_opened(pg_server, target)
    restore(snap.path, target, jobs=2)
    opened = sessions_opened(pg_server, target) - before
    assert_same(source, target)
    assert opened <= 8, f"the restore opened {opened} connections for 30 tables and 2 jobs"


def test_a_kept_connection_lost_between_two_tables_is_replaced(make_db, tmp_path, pg_server, monkeypatch):
    # A parallel restore keeps its connections from one table to the next; one the server
    # or the network closed while it waited is replaced by a new one, not a failed restore.
    source = make_db("lost_src")
    with psycopg.connect(source) as conn:
        for i in range(6):
            conn.execute(
                f"CREATE TABLE public.t{i} (id int PRIMARY KEY); INSERT INTO public.t{i} SELECT generate_series(1, 50)"
            )
    snap = backupkit.backup(source, tmp_path)
    kept = parallel.ParallelLoad._kept
    ended: list[int] = []

    def lose_the_first(self):
        with self.lock:  # no task takes a kept connection while this one is ended
            if self.idle and not ended:
                ended.append(self.idle[-1].info.backend_pid)
                with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:  # waits until it has ended
                    assert one_row(admin.execute("SELECT pg_terminate_backend(%s, 5000)", [ended[0]]))[0]
        return kept(self)

    monkeypatch.setattr(parallel.ParallelLoad, "_kept", lose_the_first)
    target = make_db("lost_dst")
    restore(snap.path, target, jobs=2)
    assert ended, "no connection was kept, so none was lost"
    assert_same(source, target)


@pytest.fixture
def latin1_db(pg_server):
    """A new LATIN1 database (a non-UTF-8 source), dropped after the test."""
    name = f"bk_latin1_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
                sql.Identifier(name)
            )
        )
    dsn = pg_server.dsn(name)
    yield dsn
    pg_server.dropdb(dsn)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_latin1_database_restores_its_accented_text_exactly(latin1_db, make_db, tmp_path, jobs):
    # The schema scripts pg_restore renders say SET client_encoding = 'LATIN1' (the source's);
    # the data files hold UTF-8 all the same, and every COPY must read them as such.
    with psycopg.connect(latin1_db) as conn:
        conn.execute(
            "CREATE TABLE public.big (id int PRIMARY KEY, word text); "
            "INSERT INTO public.big SELECT g, 'café n° ' || g FROM generate_series(1, 5000) g; "
            "CREATE TABLE public.small (id int PRIMARY KEY, word text); "
            "INSERT INTO public.small VALUES (1, 'naïve'), (2, 'Ærø')"
        )
    snap = backupkit.backup(latin1_db, tmp_path)
    target = make_db(f"from_latin1_{jobs}")
    restore(snap.path, target, jobs=jobs)
    with psycopg.connect(target) as conn:
        assert one_row(conn.execute("SELECT word FROM public.big WHERE id = 7"))[0] == "café n° 7"
        assert [r[0] for r in conn.execute("SELECT word FROM public.small ORDER BY id")] == ["naïve", "Ærø"]
    # Every row, compared as text (a fingerprint would hash each database's own encoding).
    for table in ("public.big", "public.small"):
        query = f"SELECT * FROM {table} ORDER BY id"
        with psycopg.connect(latin1_db) as a, psycopg.connect(target) as b:
            assert a.execute(query).fetchall() == b.execute(query).fetchall(), table


def test_every_parallel_task_starts_from_a_new_sessions_settings(make_db, tmp_path):
    # A connection goes on from one task to the next; what a schema script SET on it before
    # (search_path '' among others) must not follow it into the next table's COPY, where a
    # CHECK calls a function that finds another one on the default search_path.
    source = make_db("settings_src")
    with psycopg.connect(source) as conn:
        conn.execute(
            "CREATE FUNCTION public.inner_ok(k int) RETURNS boolean LANGUAGE sql AS 'SELECT $1 > 0'; "
            "CREATE FUNCTION public.valid_k(k int) RETURNS boolean LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN inner_ok(k); END $$; "
            "CREATE TABLE public.big (id int PRIMARY KEY, k int CHECK (public.valid_k(k))); "
            "INSERT INTO public.big SELECT g, g FROM generate_series(1, 20000) g; "
            "CREATE TABLE public.small (id int PRIMARY KEY, k int CHECK (public.valid_k(k))); "
            "INSERT INTO public.small VALUES (1, 1)"
        )
    snap = backupkit.backup(source, tmp_path)
    target = make_db("settings_dst")
    restore(snap.path, target, jobs=2)
    assert_same(source, target)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_csv_snapshot_from_before_the_text_format_restores_exactly(fidelity, make_db, tmp_path, monkeypatch, jobs):
    # Snapshots written before 2026-12 hold CSV (format version 1); they must keep restoring.
    source, _ = fidelity
    monkeypatch.setattr("backupkit.snapshot.formats.WRITTEN", formats.CSV)
    res = backupkit.backup(source, tmp_path, schemas=all_schemas(source), chunk_bytes=16 * 1024)
    assert {t["data_format"] for t in res.manifest["tables"]} == {"csv"}
    target = make_db(f"from_csv_{jobs}")
    restore(res.path, target, jobs=jobs, owner=True)
    assert_same(source, target)


def test_cli_restore_round_trip(fidelity, make_db):
    source, res = fidelity
    target = make_db("restored_cli")
    out = run_cli("restore", res.path, "--dsn", target, "--owner", "-q")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"restored {len(res.manifest['tables'])} tables")
    assert_same(source, target)


def test_supabase_shaped_demo_round_trip(make_db, tmp_path):
    source = make_db("demo")
    create_demo(source, scale=0.02)
    mutate_demo(source)
    res = backupkit.backup(source, tmp_path, schemas=["public", "auth", "storage"], jobs=2)
    target = make_db("demo_restored")
    restore(res.path, target, jobs=2)
    assert_same(source, target)


def test_refuses_a_target_that_has_the_tables(small, make_db):
    source, res = small
    target = make_db("tgt")
    with psycopg.connect(target) as conn:
        conn.execute("CREATE TABLE orders (keep_me int); INSERT INTO orders VALUES (42)")
    before = fingerprint(target)
    out = run_cli("restore", res.path, "--dsn", target)
    assert out.returncode == 9
    assert "already has 1 of the snapshot's tables: public.orders" in out.stderr and "--clean" in out.stderr
    assert fingerprint(target) == before


def test_clean_replaces_existing_tables_and_says_so(small, make_db):
    source, res = small
    target = make_db("tgt")
    restore(res.path, target)
    with psycopg.connect(target) as conn:
        conn.execute("DELETE FROM orders WHERE id < 100; UPDATE customers SET name = 'changed'")
    out = run_cli("restore", res.path, "--dsn", target, "--clean", "-q")
    assert out.returncode == 0, out.stderr
    assert "warning: dropping public.orders (`--clean`)" in out.stderr
    assert_same(source, target)


@pytest.mark.parametrize("jobs", [1, 2])
def test_failure_midway_leaves_the_target_as_it_was(small, make_db, monkeypatch, jobs):
    source, res = small
    target = make_db("tgt")
    with psycopg.connect(target) as conn:
        conn.execute("CREATE TABLE unrelated (x int); INSERT INTO unrelated VALUES (1), (2)")
    before = fingerprint(target)
    restore_module = importlib.import_module("backupkit.recovery.job")  # the module, not the function

    real_copy_in, calls = restore_module.copy_in, []

    def failing_copy_in(*args, **kwargs):
        # The first table loads for real; the second fails, as a vanished file would.
        calls.append(1)
        if len(calls) > 1:
            raise OSError("injected failure: data file vanished")
        return real_copy_in(*args, **kwargs)

    monkeypatch.setattr(restore_module, "copy_in", failing_copy_in)
    with pytest.raises(backupkit.RestoreError) as err:
        restore(res.path, target, jobs=jobs)
    assert "injected failure" in str(err.value) and len(calls) >= 2
    assert ("rolled back" in str(err.value)) if jobs == 1 else ("dropped again" in str(err.value))
    assert fingerprint(target) == before


def test_failure_of_the_database_rolls_back(make_db, tmp_path):
    """A real error from PostgreSQL (a unique violation while creating post-data) undoes everything."""
    source = make_db("src")
    with psycopg.connect(source) as conn:
        conn.execute(
            "CREATE TABLE a (id int); INSERT INTO a VALUES (1), (1); "
            "CREATE TABLE b (id int PRIMARY KEY); INSERT INTO b VALUES (1)"
        )
    res = backupkit.backup(source, tmp_path)
    # Make the snapshot's post-data fail: a unique index that its own data violates.
    with psycopg.connect(source) as conn:
        conn.execute("DELETE FROM a WHERE ctid = (SELECT min(ctid) FROM a); CREATE UNIQUE INDEX a_uq ON a (id)")
    res2 = backupkit.backup(source, tmp_path)
    target = make_db("tgt")
    # Load snapshot 2's schema with snapshot 1's duplicate rows: hand-build by data-only.
    restore(res2.path, target, schema_only=True)
    before = fingerprint(target)
    with pytest.raises(backupkit.RestoreError) as err:
        restore(res.path, target, data_only=True)
    assert "duplicate key" in str(err.value) and "target is unchanged" in str(err.value)
    assert fingerprint(target) == before


def test_selective_and_dependency_following_restore(small, make_db):
    source, res = small
    only = make_db("only")
    restore(res.path, only, tables=['public.Odd "Name".x'])
    with psycopg.connect(only) as conn:
        tables = conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 1"
        ).fetchall()
        assert tables == [('Odd "Name".x',)]
        assert conn.execute('SELECT count(*) FROM "Odd ""Name"".x"').fetchone()[0] == 3
    deps = make_db("deps")
    out = run_cli("restore", res.path, "--dsn", deps, "--table", "public.orders", "--with-dependencies", "-q")
    assert out.returncode == 0, out.stderr
    with psycopg.connect(deps) as conn, psycopg.connect(source) as src:
        got = conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 1"
        ).fetchall()
        assert got == [("customers",), ("orders",)]
        q = "SELECT count(*), sum(total), sum(doubled), max(id) FROM orders"
        assert conn.execute(q).fetchone() == src.execute(q).fetchone()
        # the foreign key came along, and the sequence continues after the restored ids
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'").fetchone()[0] == 1
        assert conn.execute("SELECT nextval('orders_id_seq')").fetchone()[0] == 20001
    # without --with-dependencies the FK cannot be created: refused, nothing left behind
    lone = make_db("lone")
    with pytest.raises(backupkit.RestoreError):
        restore(res.path, lone, tables=["public.orders"])
    with psycopg.connect(lone) as conn:
        assert (
            conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").fetchone()[0] == 0
        )


def test_a_table_restored_into_a_live_database_leaves_its_like_named_type_alone(make_db, tmp_path):
    """The comment of the snapshot's type ``mood`` comes with it; that of ``moods``, a type the
    target has already, must not: it would overwrite the target's own comment."""
    source = make_db("src")
    with psycopg.connect(source) as conn:
        conn.execute(
            "CREATE TYPE mood AS ENUM ('ok', 'sad'); CREATE TYPE moods AS ENUM ('many');"
            "COMMENT ON TYPE mood IS 'one mood'; COMMENT ON TYPE moods IS 'the snapshot''s';"
            "CREATE TABLE person (id int PRIMARY KEY, feels mood); INSERT INTO person VALUES (1, 'sad')"
        )
    res = backupkit.backup(source, tmp_path, progress=False)
    target = make_db("tgt")
    with psycopg.connect(target) as conn:
        conn.execute("CREATE TYPE moods AS ENUM ('many'); COMMENT ON TYPE moods IS 'the target''s own'")

    restore(res.path, target, tables=["public.person"], progress=False)

    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT feels::text FROM person").fetchall() == [("sad",)]
        assert conn.execute("SELECT obj_description('mood'::regtype)").fetchone() == ("one mood",)
        assert conn.execute("SELECT obj_description('moods'::regtype)").fetchone() == ("the target's own",)


def test_damaged_snapshot_restores_nothing(small, make_db):
    source, res = small
    entry = res.manifest["tables"][0]["files"][0]
    data = stored_file(res.path, entry)
    data.chmod(0o600)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    target = make_db("tgt")
    before = fingerprint(target)
    out = run_cli("restore", res.path, "--dsn", target)
    assert out.returncode == 6
    assert "damaged" in out.stderr and entry["path"] in out.stderr
    assert fingerprint(target) == before


@pytest.mark.parametrize("jobs", [1, 2])
def test_damaged_schema_archive_is_reported_as_damage_and_restores_nothing(small, make_db, jobs):
    """The restore is planned (pg_restore renders the schema) while the snapshot is verified:
    a broken archive that makes pg_restore fail too is still reported as the damage it is."""
    source, res = small
    entry = next(e for e in res.manifest["schema_files"] if e["path"].endswith("schema.dump"))
    dump = res.path / entry["path"]
    dump.chmod(0o600)
    dump.write_bytes(dump.read_bytes()[: entry["bytes"] // 2])
    target = make_db("tgt")
    before = fingerprint(target)
    for extra in ([], ["--dry-run"]):
        out = run_cli("restore", res.path, "--dsn", target, "--jobs", str(jobs), *extra)
        assert out.returncode == 6, out.stderr
        assert "damaged" in out.stderr and entry["path"] in out.stderr and "Traceback" not in out.stderr
    assert fingerprint(target) == before


def test_grants_to_missing_roles_are_skipped_and_reported(make_db, tmp_path, pg_server):
    source = make_db("src")
    role = "gone_" + conninfo_to_dict(source)["dbname"]
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}; CREATE TABLE t (x int); GRANT SELECT ON t TO {role}")
    res = backupkit.backup(source, tmp_path)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    target = make_db("tgt")
    result = restore(res.path, target)
    assert any(role in w for w in result.warnings)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0


def test_dry_run_touches_nothing(small, make_db):
    source, res = small
    target = make_db("tgt")
    before = fingerprint(target)
    out = run_cli("restore", res.path, "--dsn", target, "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["dry_run"] is True and sorted(plan["tables"]) == sorted(mf.table_key(t) for t in res.manifest["tables"])
    assert fingerprint(target) == before


def test_policies_naming_missing_roles_stop_the_restore_unless_create_roles(make_db, tmp_path, pg_server):
    source = make_db("src")
    role = "app_user_" + conninfo_to_dict(source)["dbname"]
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            f"CREATE ROLE {role}; CREATE TABLE t (x int); INSERT INTO t VALUES (1); "
            f"ALTER TABLE t ENABLE ROW LEVEL SECURITY; CREATE POLICY p ON t TO {role} USING (x > 0)"
        )
    res = backupkit.backup(source, tmp_path)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    target = make_db("tgt")
    before = fingerprint(target)
    out = run_cli("restore", res.path, "--dsn", target)
    assert out.returncode == 9 and f"policies name roles this database does not have: {role}" in out.stderr
    assert "--create-roles" in out.stderr and fingerprint(target) == before
    try:
        out = run_cli("restore", res.path, "--dsn", target, "--create-roles", "-q")
        assert out.returncode == 0, out.stderr
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT polroles::regrole[]::text FROM pg_policy").fetchone()[0] == f"{{{role}}}"
            assert conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)).fetchone() == (False,)
    finally:
        pg_server.dropdb(target)
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_statements_inside_function_bodies_are_data_not_commands(make_db, tmp_path):
    """A function body holding DROP/GRANT/backslash lines survives exactly and never runs."""
    source = make_db("src")
    body = (
        "CREATE FUNCTION public.tricky() RETURNS text LANGUAGE sql AS $f$\n"
        "DROP TABLE IF EXISTS public.keep_me;\nSELECT 'x'::text;\n$f$;\n"
        "CREATE FUNCTION public.latex() RETURNS text LANGUAGE sql AS $f$\nSELECT '\n\\documentclass{article}\n"
        "GRANT ALL ON x TO nobody_here;\n'::text\n$f$;\n"
        "CREATE TABLE public.t (x int); INSERT INTO public.t VALUES (1);"
    )
    with psycopg.connect(source) as conn:
        conn.execute(body)
    res = backupkit.backup(source, tmp_path)
    assert "\\documentclass{article}" in (res.path / "schema" / "pre-data.sql").read_text()
    target = make_db("tgt")
    with psycopg.connect(target) as conn:
        conn.execute(
            "CREATE TABLE public.keep_me (v text); INSERT INTO public.keep_me VALUES ('precious');"
            "CREATE TABLE public.t (x int)"
        )
    restore(res.path, target, clean=True)
    with psycopg.connect(target) as conn, psycopg.connect(source) as src:
        assert conn.execute("SELECT v FROM public.keep_me").fetchone() == ("precious",)
        q = "SELECT pg_get_functiondef('public.tricky'::regproc), public.latex()"
        assert conn.execute(q).fetchone() == src.execute(q).fetchone()


def test_data_only_does_not_fire_the_targets_triggers(make_db, tmp_path):
    """--data-only loads into existing tables without firing their triggers or FK checks."""
    source = make_db("src")
    schema = (
        "CREATE TABLE parent (id int PRIMARY KEY); "
        "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, "
        "updated_at timestamptz); "
        "CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN NEW.updated_at := '2000-01-01'; RETURN NEW; END$$; "
        "CREATE TRIGGER stamp BEFORE INSERT ON child FOR EACH ROW EXECUTE FUNCTION stamp();"
    )
    with psycopg.connect(source) as conn:
        conn.execute(schema)
        conn.execute(
            "ALTER TABLE child DISABLE TRIGGER stamp; INSERT INTO parent VALUES (1), (2); "
            "INSERT INTO child VALUES (1, 2, '2024-06-01'), (2, 1, '2024-06-02')"
        )
    res = backupkit.backup(source, tmp_path)
    target = make_db("tgt")
    with psycopg.connect(target) as conn:
        conn.execute(schema)
    out = run_cli("restore", res.path, "--dsn", target, "--data-only")
    assert out.returncode == 0, out.stderr
    assert "clean" not in out.stderr  # nothing is emptied or dropped without --clean, and none says so
    with psycopg.connect(target) as conn:
        got = conn.execute("SELECT id, parent_id, updated_at::text FROM child ORDER BY id").fetchall()
    assert got == [(1, 2, "2024-06-01 00:00:00+00"), (2, 1, "2024-06-02 00:00:00+00")]


def frozen_by_vacuum(dsn: str) -> dict[str, int]:
    """Tuples ``VACUUM (FREEZE)`` still had to freeze, per table of the small database."""
    frozen = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        for table in ("customers", "orders"):
            notices.clear()
            conn.execute(f"VACUUM (FREEZE, VERBOSE) {table}")
            report = "\n".join(notices)
            frozen[table] = int(re.search(r"had (\d+) tuples frozen", report).group(1))
    return frozen


@pytest.mark.parametrize("jobs", [1, 2])
def test_restored_rows_arrive_frozen(small, make_db, jobs):
    # COPY FREEZE into the tables the restore created: no later VACUUM has to rewrite
    # every page to freeze them (pg_restore's rows all need that).
    source, res = small
    assert sum(frozen_by_vacuum(source).values()) > 0  # the check can see unfrozen rows
    target = make_db("frozen")
    restore(res.path, target, jobs=jobs)
    assert frozen_by_vacuum(target) == {"customers": 0, "orders": 0}


def test_only_a_table_that_would_be_the_long_pole_is_split_across_jobs():
    from backupkit.recovery.parallel import _load_units

    def table(name, *text_bytes):
        return {
            "schema": "public",
            "name": name,
            "files": [{"path": f"{name}.{i}", "bytes": 1, "text_bytes": b} for i, b in enumerate(text_bytes)],
        }

    mb = 1 << 20
    big, mid, small = (
        table("big", 100 * mb, 100 * mb, 100 * mb),
        table("mid", 50 * mb, 50 * mb),
        table("small", 20 * mb),
    )
    units = _load_units([small, mid, big], jobs=2, fresh=True)
    # big holds 71% (> 2/3): file by file, not frozen; the others whole and frozen; interleaved
    assert [(t["name"], [f["path"] for f in files], freeze) for t, files, freeze in units] == [
        ("big", ["big.0"], False),
        ("mid", ["mid.0", "mid.1"], True),
        ("big", ["big.1"], False),
        ("small", ["small.0"], True),
        ("big", ["big.2"], False),
    ]
    assert all(not freeze for _, _, freeze in _load_units([small, mid, big], jobs=2, fresh=False))
    # with more jobs a smaller share is already the long pole (2/(jobs+1))
    split = {
        t["name"] for t, files, _ in _load_units([small, mid, big], jobs=10, fresh=True) if len(files) < len(t["files"])
    }
    assert split == {"big", "mid"}
    # small chunk files of a split table load a few at a time: a transaction (a connection,
    # a commit) per 8 MB file would cost more than it overlaps
    chunks = table("chunks", *[6 * mb] * 20)
    runs = [len(files) for t, files, _ in _load_units([chunks, small], jobs=2, fresh=True) if t is chunks]
    assert runs == [8, 8, 4]


def test_rows_another_session_writes_into_new_tables_stop_a_parallel_restore(small, make_db, monkeypatch):
    # A parallel restore commits its CREATE TABLEs before loading; it must not TRUNCATE
    # away rows someone wrote meanwhile (to load them frozen) without saying so.
    source, res = small
    target = make_db("busy")
    parallel_module = importlib.import_module("backupkit.recovery.parallel")
    real = parallel_module._empty_own_table

    def someone_writes_first(conn, table):
        if table["name"] == "orders":
            with psycopg.connect(target, autocommit=True) as other:
                other.execute("INSERT INTO orders (customer_id, total) VALUES (NULL, 1)")
        return real(conn, table)

    monkeypatch.setattr(parallel_module, "_empty_own_table", someone_writes_first)
    with pytest.raises(backupkit.RestoreError) as err:
        restore(res.path, target, jobs=2)
    assert "public.orders received rows from another session" in str(err.value)


def test_column_options_the_target_does_not_know_are_left_out_and_named(make_db, tmp_path):
    # Debian's PostgreSQL 15.20 sets a pg_attver option on every column; PostgreSQL 18
    # rejects the statement that carries it. Unknown options are left out (and said),
    # known ones (n_distinct) kept, and a function body quoting such a line is untouched.
    from backupkit.pg.column_options import drop_options, unknown_options
    from backupkit.pg.schema import render

    source = make_db("colopts")
    with psycopg.connect(source) as conn:
        conn.execute(
            "CREATE TABLE t (a int, b text); ALTER TABLE t ALTER COLUMN a SET (n_distinct = -1); "
            "ALTER TABLE t ALTER COLUMN b SET (n_distinct = 5)"
        )
        conn.execute(
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT "
            "'\nALTER TABLE ONLY public.t ALTER COLUMN a SET (n_distinct=-1, pg_attver=7);\n' $$"
        )
    snap = backupkit.backup(source, tmp_path, progress=False)
    real = render(snap.path / "schema" / "schema.dump", "pre-data")
    script = real.replace("ALTER COLUMN a SET (n_distinct=-1);", "ALTER COLUMN a SET (n_distinct=-1, pg_attver=7);")
    script = script.replace("ALTER COLUMN b SET (n_distinct=5);", "ALTER COLUMN b SET (pg_attver=7);")
    assert script.count("pg_attver=7") == 3  # both columns and the function body
    target = make_db("colopts_target")
    assert unknown_options(target, script) == {"pg_attver"}
    cleaned, dropped = drop_options(script, {"pg_attver"})
    assert dropped == [
        "ALTER TABLE ONLY public.t ALTER COLUMN a SET (n_distinct=-1, pg_attver=7);",
        "ALTER TABLE ONLY public.t ALTER COLUMN b SET (pg_attver=7);",
    ]
    assert "ALTER TABLE ONLY public.t ALTER COLUMN a SET (n_distinct=-1);" in cleaned
    assert "ALTER COLUMN b SET" not in cleaned
    assert cleaned.count("pg_attver=7") == 1  # only the function's text is left
    assert unknown_options(target, real) == set() and drop_options(real, set()) == (real, [])
    result = restore(snap.path, target)
    assert result.warnings == []
    with psycopg.connect(target) as conn:
        assert conn.execute(
            "SELECT attname, attoptions FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 ORDER BY attnum"
        ).fetchall() == [("a", ["n_distinct=-1"]), ("b", ["n_distinct=5"])]


def test_a_column_option_line_inside_a_string_default_is_text_not_a_statement(make_db, tmp_path):
    from backupkit.pg.column_options import drop_options
    from backupkit.pg.schema import render

    source = make_db("colopt_default")
    odd = "x\nALTER TABLE ONLY public.t ALTER COLUMN id SET (pg_attver=1);\ny"
    with psycopg.connect(source) as conn:
        conn.execute(f"CREATE TABLE t (id int, note text DEFAULT {psycopg.sql.quote(odd)})")
    snap = backupkit.backup(source, tmp_path, progress=False)
    script = render(snap.path / "schema" / "schema.dump", "pre-data")
    assert "\nALTER TABLE ONLY public.t ALTER COLUMN id SET (pg_attver=1);\n" in script
    assert drop_options(script, {"pg_attver"}) == (script, [])
    target = make_db("colopt_default_target")
    restore(snap.path, target)
    with psycopg.connect(target) as conn:
        conn.execute("INSERT INTO t (id) VALUES (1)")
        assert conn.execute("SELECT note FROM t").fetchone()[0] == odd


def test_a_table_without_columns_backs_up_restores_and_diffs(make_db, tmp_path):
    source = make_db("zero")
    with psycopg.connect(source) as conn:
        conn.execute(
            "CREATE TABLE zero (); INSERT INTO zero DEFAULT VALUES; INSERT INTO zero DEFAULT VALUES; "
            "CREATE TABLE only_generated (a int GENERATED ALWAYS AS (1) STORED); "
            "INSERT INTO only_generated DEFAULT VALUES"
        )
    snap = backupkit.backup(source, tmp_path, progress=False)
    assert {t["name"]: t["rows"] for t in snap.manifest["tables"]} == {"zero": 2, "only_generated": 1}
    assert backupkit.verify(snap.path, deep=True).ok
    target = make_db("zero_target")
    restore(snap.path, target)
    assert_same(source, target)


def test_create_roles_makes_the_owner_of_a_large_object_and_default_privileges(make_db, tmp_path):
    """Roles named only outside the schemas (a large object's owner, a default privilege's
    role) are made by --create-roles too, and publication notes name members exactly."""
    role = f"bk_lo_owner_{uuid.uuid4().hex[:8]}"
    source = make_db("lo_roles")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL(
                'CREATE SCHEMA "a b"; CREATE TABLE "a b".t (x int PRIMARY KEY); CREATE PUBLICATION "p q" FOR TABLE "a b".t;'
                "SELECT lo_from_bytea(777001, 'abc'); ALTER LARGE OBJECT 777001 OWNER TO {r};"
                "ALTER DEFAULT PRIVILEGES FOR ROLE {r} GRANT SELECT ON TABLES TO PUBLIC"
            ).format(r=sql.Identifier(role))
        )
    res = backupkit.backup(source, tmp_path, schemas=["a b"])
    with psycopg.connect(source, autocommit=True) as conn:  # the role must be gone for the restore to make it
        conn.execute(
            sql.SQL("SELECT lo_unlink(777001); DROP OWNED BY {r}; DROP ROLE {r}").format(r=sql.Identifier(role))
        )
    target = make_db("lo_roles_target")
    result = restore(res.path, target, owner=True, create_roles=True)
    assert role in result.plan.created_roles
    assert "added 1 publication member(s): p q: a b.t" in result.plan.notes
    with psycopg.connect(target) as conn:
        assert conn.execute(
            "SELECT pg_get_userbyid(lomowner) FROM pg_largeobject_metadata WHERE oid = 777001"
        ).fetchone() == (role,)
        assert conn.execute("SELECT pg_get_userbyid(defaclrole) FROM pg_default_acl").fetchall() == [(role,)]


def test_a_schema_restore_brings_the_whole_schema_and_only_what_it_uses_of_others(make_db, tmp_path):
    source = make_db("schemas_src")
    with psycopg.connect(source) as conn:
        conn.execute("""
            CREATE SCHEMA app; CREATE SCHEMA other;
            CREATE TYPE other.level AS ENUM ('low', 'high');
            CREATE FUNCTION other.unused() RETURNS int LANGUAGE sql AS 'SELECT 1';
            CREATE FUNCTION app.twice(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 2';
            CREATE TABLE app.t (id int PRIMARY KEY, lvl other.level);
            INSERT INTO app.t VALUES (1, 'low'), (2, 'high');
            CREATE VIEW app.v AS SELECT id, app.twice(id) AS d FROM app.t;
            CREATE SEQUENCE app.free_seq; SELECT setval('app.free_seq', 41);
            CREATE MATERIALIZED VIEW app.mv AS SELECT count(*) AS n FROM app.t;
            CREATE TABLE other.x (id int)""")
    res = backupkit.backup(source, tmp_path, schemas=["app", "other"])
    target = make_db("schemas_tgt")
    restore(res.path, target, schemas=["app"])
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT d FROM app.v ORDER BY id").fetchall() == [(2,), (4,)]
        assert conn.execute("SELECT n FROM app.mv").fetchone() == (2,)
        assert conn.execute("SELECT last_value FROM app.free_seq").fetchone() == (41,)
        assert conn.execute(
            "SELECT to_regtype('other.level') IS NOT NULL, to_regproc('other.unused') IS NULL, "
            "to_regclass('other.x') IS NULL"
        ).fetchone() == (True, True, True)


def test_a_restore_copies_each_archive_once_and_checks_it(make_db, tmp_path, monkeypatch):
    """pg_restore reads private copies of the archives, hashed as they are made; database.dump
    holds every large object's data, so it is copied once per restore, not once per reading."""
    from backupkit.snapshot import encryption

    source = make_db("src")
    with psycopg.connect(source) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, doc oid); INSERT INTO t VALUES (1, lo_from_bytea(0, 'x'))")
    res = backupkit.backup(source, tmp_path, progress=False)
    copied: list[str] = []
    real = encryption.decrypt_into

    def counted(snapshot, rel, *args, **kw):
        copied.append(rel)
        return real(snapshot, rel, *args, **kw)

    monkeypatch.setattr(encryption, "decrypt_into", counted)
    target = make_db("tgt")

    restore(res.path, target, progress=False)

    assert sorted(copied) == sorted([mf.DUMP, mf.DATABASE_DUMP])
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT lo_get(doc) FROM t").fetchone() == (b"x",)
