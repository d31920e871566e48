"""Restore drills and row-level security: on Supabase RLS is the public API's security boundary,
so a restored table that lost it, or lost a policy, must fail the drill; and a ``--dsn`` role
that policies filter must get one clear error, never a verdict on the rows it happened to see.

Everything is real: drills restore into the embedded PostgreSQL, the session's test server or a
private server of this module.  How a restored database loses RLS or a policy:

* a real event trigger in the private server's ``template1`` (so in every database the drill
  creates there) disables RLS on one table and drops one policy as the restore makes them;
* a snapshot whose manifest is resealed (``manifest.digest``, so ``verify`` passes) to claim RLS
  on a table its schema has none on.
"""

from __future__ import annotations

import os

import psycopg
import pytest
import test_drill
from helpers import copy_snapshot_folder, run_cli
from test_drill import ROLE_PASSWORD, drill_databases, reseal, role_of

import backupkit
from backupkit.drills import compare, record
from backupkit.drills.job import drill
from backupkit.errors import ConfigError, DrillFailed
from backupkit.pg.embedded import temporary_server
from backupkit.snapshot import encryption
from backupkit.snapshot import manifest as mf
from backupkit.storage.location import open_storage

# The fixtures of tests/test_drill.py, shared.
drill_tmp = test_drill.drill_tmp
drill_role = test_drill.drill_role

ODD_POLICY = 'Admins see "all" accounts'

SCHEMA = f"""
CREATE TABLE notes (id int PRIMARY KEY, body text);
INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 50) g;
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Notes are readable" ON notes FOR SELECT USING (true);

CREATE TABLE accounts (id int PRIMARY KEY, owner name NOT NULL);
INSERT INTO accounts SELECT g, 'someone_else' FROM generate_series(1, 40) g;
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY own_accounts ON accounts USING (owner = current_user);
CREATE POLICY "{ODD_POLICY.replace('"', '""')}" ON accounts AS RESTRICTIVE FOR SELECT USING (true);

CREATE TABLE plain (a int);
INSERT INTO plain SELECT generate_series(1, 30);
"""


@pytest.fixture(scope="module")
def rls_snapshots(pg_server, tmp_path_factory):
    """Snapshots of a database with RLS (one table forced) and policies, one oddly named: as
    is, and encrypted (its age identity file)."""
    dsn = pg_server.createdb("drillrls")
    keys = tmp_path_factory.mktemp("drillrls-keys")
    recipient = encryption.keygen(keys / "age.txt")
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute(SCHEMA)
        res = backupkit.backup(dsn, tmp_path_factory.mktemp("drillrls"), progress=False)
        sealed = backupkit.backup(dsn, tmp_path_factory.mktemp("drillrls-enc"), recipients=[recipient], progress=False)
    finally:
        pg_server.dropdb(dsn)
    return res.path, sealed.path, keys / "age.txt"


@pytest.fixture(scope="module")
def rls_snapshot(rls_snapshots):
    path = rls_snapshots[0]
    tables = {t["name"]: t for t in mf.read(path)["tables"]}
    assert tables["notes"]["rls"]["enabled"] and not tables["notes"]["rls"]["forced"]
    assert tables["accounts"]["rls"]["enabled"] and tables["accounts"]["rls"]["forced"]
    assert not tables["plain"]["rls"]["enabled"]
    return path


@pytest.fixture
def snap(rls_snapshot, tmp_path):
    """A private copy of the snapshot, alone in the repository ``tmp_path / "repo"``."""
    return copy_snapshot_folder(rls_snapshot, tmp_path / "repo" / os.path.basename(rls_snapshot))


@pytest.fixture(scope="module")
def private_server():
    """A PostgreSQL server of this module's own, whose ``template1`` a test may change."""
    server = temporary_server().start()
    try:
        yield server
    finally:
        server.stop()


#: Event triggers that undo, in whatever database they are in, the RLS of ``public.notes`` and the
#: policy ODD_POLICY of ``public.accounts`` as soon as a restore makes them (ENABLE ALWAYS: they
#: fire whatever session_replication_role the restore uses).
LOSING_TRIGGERS = f"""
CREATE FUNCTION public.lose_notes_rls() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT FROM pg_class WHERE oid = to_regclass('public.notes') AND relrowsecurity) THEN
    ALTER TABLE public.notes DISABLE ROW LEVEL SECURITY;
  END IF;
END $$;
CREATE EVENT TRIGGER lose_notes_rls ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
  EXECUTE FUNCTION public.lose_notes_rls();
ALTER EVENT TRIGGER lose_notes_rls ENABLE ALWAYS;
CREATE FUNCTION public.lose_policy() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT FROM pg_policies WHERE policyname = '{ODD_POLICY}') THEN
    EXECUTE format('DROP POLICY %I ON public.accounts', '{ODD_POLICY}');
  END IF;
END $$;
CREATE EVENT TRIGGER lose_policy ON ddl_command_end WHEN TAG IN ('CREATE POLICY')
  EXECUTE FUNCTION public.lose_policy();
ALTER EVENT TRIGGER lose_policy ENABLE ALWAYS;
"""

UNDO_TRIGGERS = """
DROP EVENT TRIGGER IF EXISTS lose_notes_rls;
DROP EVENT TRIGGER IF EXISTS lose_policy;
DROP FUNCTION IF EXISTS public.lose_notes_rls();
DROP FUNCTION IF EXISTS public.lose_policy();
"""


def test_a_restore_that_loses_rls_or_a_policy_fails_the_drill_naming_both(snap, rls_snapshots, private_server):
    admin = private_server.dsn()
    _, sealed, identity = rls_snapshots
    # As it was: the drill passes (the policies, odd names included, are found where they were),
    # also of the encrypted snapshot (its schema archive read through the identity).
    assert drill(snap, dsn=admin, progress=False).ok
    assert drill(sealed, dsn=admin, identity=identity, progress=False).ok

    template1 = private_server.dsn("template1")
    with psycopg.connect(template1, autocommit=True) as conn:
        conn.execute(LOSING_TRIGGERS)
    try:
        with pytest.raises(DrillFailed) as caught:
            drill(snap, dsn=admin, progress=False)
        with pytest.raises(DrillFailed) as caught_sealed:
            drill(sealed, dsn=admin, identity=identity, progress=False)
        out = run_cli("drill", snap.parent, "--dsn", admin, "-q")
    finally:
        with psycopg.connect(template1, autocommit=True) as conn:
            conn.execute(UNDO_TRIGGERS)
    assert caught.value.exit_code == 14
    assert sorted(caught.value.differences) == [
        'public.accounts: policy "Admins see ""all"" accounts" missing',
        "public.notes: row-level security lost (enabled in the snapshot, off in the restored table)",
    ]
    assert sorted(caught_sealed.value.differences) == sorted(caught.value.differences)
    last = record.latest(open_storage(snap.parent))
    assert last is not None and last.ok is False and sorted(last.differences) == sorted(caught.value.differences)

    assert out.returncode == 14, out.stderr
    assert "Traceback" not in out.stderr
    assert "public.notes: row-level security lost" in out.stderr and "policy" in out.stderr
    assert len(record.history(open_storage(snap.parent))) == 3


def test_a_snapshot_recording_rls_its_restored_table_lacks_fails_the_drill(snap, drill_tmp):
    """The manifest is resealed to say ``plain`` had RLS, forced (``verify`` passes): the restored
    table has none, and the drill (on an embedded server) names the table and what it lost."""
    m = mf.read(snap)
    next(t for t in m["tables"] if t["name"] == "plain")["rls"] = {"enabled": True, "forced": True, "bypassed": True}
    reseal(snap, m)
    assert backupkit.verify(snap).ok

    with pytest.raises(DrillFailed) as caught:
        drill(snap, progress=False)
    assert caught.value.differences == [
        "public.plain: row-level security lost (enabled in the snapshot, off in the restored table)",
        "public.plain: FORCE ROW LEVEL SECURITY lost (forced in the snapshot, not in the restored table)",
    ]
    assert "public.plain: row-level security lost" in str(caught.value)
    assert list(drill_tmp.iterdir()) == []


def test_a_dsn_role_that_policies_filter_gets_one_error_not_a_verdict_on_filtered_rows(snap, pg_server, drill_role):
    """The role owns what it restores, but ``accounts`` is FORCE ROW LEVEL SECURITY and its
    policy shows the role none of the 40 rows: a drill must neither compare 0 rows (a false
    failure on record) nor pass on what it may see."""
    dsn = drill_role("CREATEDB")
    role = role_of(dsn)
    with pytest.raises(ConfigError) as caught:
        drill(snap, dsn=dsn, progress=False)
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert message.startswith(f"dsn role {role} is subject to row-level security on public.accounts ")
    assert "public.notes" not in message  # its owner, not forced: it reads every row
    assert "BYPASSRLS" in caught.value.hint and ROLE_PASSWORD not in message + caught.value.hint
    # Not the snapshot's fault: no failed drill on record, and the throwaway database is gone.
    assert record.latest(open_storage(snap.parent)) is None
    assert drill_databases(pg_server, os.getpid()) == []

    out = run_cli("drill", snap.parent, "--dsn", dsn, "-q")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and ROLE_PASSWORD not in out.stdout + out.stderr
    error, hint = out.stderr.strip().splitlines()
    assert error.startswith(f"error: --dsn role {role} is subject to row-level security on public.accounts")
    assert hint.startswith("hint: drill as a superuser or a role with BYPASSRLS") and "--dsn" in hint
    assert record.latest(open_storage(snap.parent)) is None


def test_the_comparisons_of_rls_and_policies_say_what_differs():
    table = {"schema": "public", "name": "t", "rls": {"enabled": True, "forced": False, "bypassed": True}}
    assert compare.rls_differences(table, enabled=True, forced=False) == []
    assert compare.rls_differences(table, enabled=False, forced=False) == [
        "public.t: row-level security lost (enabled in the snapshot, off in the restored table)"
    ]
    assert compare.rls_differences(table, enabled=True, forced=True) == [
        "public.t: FORCE ROW LEVEL SECURITY set in the restored table, not in the snapshot"
    ]
    off = {**table, "rls": {"enabled": False, "forced": False, "bypassed": True}}
    assert compare.rls_differences(off, enabled=True, forced=False) == [
        "public.t: row-level security enabled in the restored table, off in the snapshot"
    ]
    assert compare.rls_differences({"schema": "public", "name": "t"}, enabled=False, forced=False) == []
    script = (
        "CREATE POLICY p ON public.t USING (true);\n"
        'CREATE POLICY "a ""b"" c" ON "odd schema"."t.x" AS RESTRICTIVE FOR SELECT USING (true);\n'
    )
    recorded = compare.policies_in(script)
    assert recorded == {("public", "t", "p"), ("odd schema", "t.x", 'a "b" c')}
    tables = [table, {"schema": "odd schema", "name": "t.x"}]
    assert compare.policy_differences(tables, recorded, recorded) == []
    assert compare.policy_differences(tables, recorded, {("public", "t", "p"), ("public", "t", "extra")}) == [
        'odd schema.t.x: policy "a ""b"" c" missing',
        'public.t: policy "extra" not in the snapshot',
    ]
    # A policy of a table the snapshot does not hold is not the drill's to compare.
    assert compare.policy_differences(tables, {("public", "other", "p")}, set()) == []
