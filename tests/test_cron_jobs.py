"""pg_cron's scheduled jobs come back with a whole restore (Supabase Cron is pg_cron).

A schema-filtered pg_dump leaves ``cron.job`` out, and on Supabase the ``postgres`` role
may not insert into it anyway: before backupkit recorded the jobs, a restored project
silently had none.  These tests run real pg_cron (Debian's postgresql-15-cron, preloaded
in two PostgreSQL 15 clusters: pg_cron lives in one database of a server, ``postgres``),
with the jobs made the way Supabase users make them: ``cron.schedule`` by a role that is
not a superuser and has no BYPASSRLS, with pg_cron's own row-level security on its table.

Needs ``/usr/lib/postgresql/15`` with pg_cron (``.ci/run`` installs both); marked
``crossversion`` with the other PostgreSQL 15 tests.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import psycopg
import pyrage
import pytest
from helpers import run_cli
from test_snapshot_model import problems as model_problems

import backupkit
from backupkit.errors import SourceError
from backupkit.pg.embedded import EmbeddedServer
from backupkit.snapshot import manifest as mf
from backupkit.snapshot import model

pytestmark = pytest.mark.crossversion

PG15 = Path(os.environ.get("BACKUPKIT_PG15_BIN", "/usr/lib/postgresql/15/bin"))
SECRET = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"

#: What a project's role is given to use pg_cron (Supabase's grant_pg_cron_access, minus
#: the writes on cron.job it revokes again).
APP_ROLE = """
CREATE ROLE app LOGIN PASSWORD 'app-pw';
GRANT USAGE ON SCHEMA cron TO app;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cron TO app;
GRANT SELECT ON cron.job TO app;
GRANT CREATE ON SCHEMA public TO app;
"""

JOBS = [
    ("nightly", "0 3 * * *", "VACUUM public.notes", True),
    ("purge", "*/5 * * * *", "DELETE FROM public.notes\n WHERE body = 'it''s old';", True),
    (None, "@hourly", f"SELECT 'Authorization: Bearer {SECRET}'", True),
    ("paused", "0 0 * * 0", "SELECT 1", False),
    # Supabase's guide to calling an Edge Function on a schedule, its key kept in Vault.
    (
        "call-edge",
        "*/10 * * * *",
        "SELECT net.http_post(url := 'https://old.supabase.co/functions/v1/hello', headers := "
        "jsonb_build_object('Authorization', 'Bearer ' || (SELECT decrypted_secret FROM "
        "\"vault\".decrypted_secrets WHERE name = 'service_role_key')))",
        True,
    ),
]


def bare_cluster(tag: str) -> EmbeddedServer:
    """A PostgreSQL 15 cluster with pg_cron preloaded and created in ``postgres``."""
    assert (PG15 / "postgres").exists(), f"PostgreSQL 15 not found in {PG15}: apt-get install postgresql-15"
    root = Path(tempfile.mkdtemp(prefix=f"backupkit-cron-{tag}-"))
    os.chmod(root, 0o755)
    server = EmbeddedServer(root / "data", bindir=PG15, remove_parent=True).start()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_cron'")
    server.shut_down()
    server.start()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_cron")
    return server


def cron_cluster(tag: str) -> EmbeddedServer:
    """``bare_cluster``, with role app given pg_cron as a Supabase project's role is."""
    server = bare_cluster(tag)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(APP_ROLE)
    return server


def as_app(server: EmbeddedServer) -> str:
    return server.dsn(user="app").replace(f":{server.password}@", ":app-pw@")


def jobs_of(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT jobname, schedule, command, database, username, active FROM cron.job ORDER BY jobid"
        ).fetchall()


@pytest.fixture(scope="module")
def source():
    server = cron_cluster("source")
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE other_db")
        conn.execute("CREATE TABLE public.notes (id int PRIMARY KEY, body text)")
        conn.execute("ALTER TABLE public.notes OWNER TO app")
        conn.execute("INSERT INTO public.notes VALUES (1, 'it''s old'), (2, 'new')")
        conn.execute("SELECT cron.schedule('backup-role-job', '15 * * * *', 'SELECT 2')")  # the superuser's
        conn.execute("SELECT cron.schedule_in_database('elsewhere', '0 1 * * *', 'SELECT 3', 'other_db')")
        conn.execute("SET ROLE app")
        for name, schedule, command, active in JOBS:
            args = [schedule, command] if name is None else [name, schedule, command]
            jobid = conn.execute(f"SELECT cron.schedule({', '.join(['%s'] * len(args))})", args).fetchone()[0]
            if not active:
                conn.execute("SELECT cron.alter_job(%s, active := false)", (jobid,))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def target():
    server = cron_cluster("target")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def snapshot(source, tmp_path_factory):
    return str(backupkit.backup(source.dsn(), tmp_path_factory.mktemp("cron-repo")).location)


def app_jobs(dsn: str) -> list[tuple]:
    return [j for j in jobs_of(dsn) if j[4] == "app"]


def test_the_manifest_names_the_jobs_and_holds_no_command(source, snapshot):
    manifest = (Path(snapshot) / "manifest.json").read_text()
    listed = mf.read(snapshot)["cron_jobs"]
    assert [(j["name"], j["username"], j["active"]) for j in listed] == [
        ("backup-role-job", "postgres", True),
        ("elsewhere", "postgres", True),
        ("nightly", "app", True),
        ("purge", "app", True),
        (None, "app", True),
        ("paused", "app", False),
        ("call-edge", "app", True),
    ]
    assert SECRET not in manifest and "VACUUM" not in manifest
    seen: set[tuple[str, str]] = set()
    assert model_problems(mf.read(snapshot), model.Manifest, "manifest", seen) == []
    assert {("CronJob", f.name) for f in model.fields(model.CronJob)} <= seen
    assert backupkit.verify(snapshot).ok


def test_a_whole_restore_schedules_them_as_they_were(source, target, snapshot):
    dry = backupkit.restore(snapshot, as_app(target), dry_run=True)
    assert jobs_of(target.dsn()) == []
    said = " ".join(dry.plan.notes)
    assert "nightly (0 3 * * *)" in said and "paused (0 0 * * 0, inactive)" in said

    result = backupkit.restore(snapshot, as_app(target), jobs=2)
    assert app_jobs(target.dsn()) == app_jobs(source.dsn())
    said = " ".join(result.plan.notes)
    # Not the connecting role's, or another database's: named, with where the commands are.
    assert "backup-role-job (15 * * * *) of role postgres in database postgres: they run as another role" in said
    assert "elsewhere (0 1 * * *) of role postgres in database other_db: they ran in another database" in said
    assert "schema/cron_jobs.json" in said
    assert SECRET not in said
    # Supabase's way to keep a job's key out of its command does not move with the project.
    vault = [n for n in result.plan.notes if "Vault" in n]
    assert len(vault) == 1 and vault[0].startswith("pg_cron job(s) call-edge (*/10 * * * *) read Supabase Vault")

    # Restoring again replaces the named jobs and adds no second copy of the unnamed one.
    backupkit.restore(snapshot, as_app(target), clean=True)
    assert app_jobs(target.dsn()) == app_jobs(source.dsn())


def test_a_superuser_restores_every_role_s_jobs(source, target, snapshot):
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        conn.execute("SELECT cron.unschedule(jobid) FROM cron.job")
    backupkit.restore(snapshot, target.dsn(), clean=True)
    here = [j for j in jobs_of(source.dsn()) if j[3] == "postgres"]
    assert sorted(jobs_of(target.dsn()), key=repr) == sorted(here, key=repr)


def test_a_target_without_pg_cron_is_told_which_jobs_it_lacks(snapshot, make_db):
    result = backupkit.restore(snapshot, make_db())  # PostgreSQL 18, no pg_cron there
    said = " ".join(result.plan.notes)
    assert "did not schedule the snapshot's 7 pg_cron job(s)" in said
    assert "nightly (0 3 * * *)" in said and "has no pg_cron" in said


def test_an_encrypted_snapshot_keeps_the_commands_sealed(source, target, tmp_path):
    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "age.key"
    key.write_text(str(identity))
    key.chmod(0o600)
    snap = backupkit.backup(source.dsn(), tmp_path / "repo", recipients=[str(identity.to_public())]).location
    stored = [p for p in Path(str(snap)).rglob("*") if p.is_file()]
    assert any(p.name == "cron_jobs.json" for p in stored)
    assert not [p for p in stored if SECRET.encode() in p.read_bytes()]
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        conn.execute("SELECT cron.unschedule(jobid) FROM cron.job")
    backupkit.restore(str(snap), target.dsn(), clean=True, identity=key)
    here = [j for j in jobs_of(source.dsn()) if j[3] == "postgres"]
    assert sorted(jobs_of(target.dsn()), key=repr) == sorted(here, key=repr)


def test_a_role_that_sees_only_its_own_jobs_does_not_make_a_complete_looking_snapshot(source, tmp_path):
    # app owns the table but has no BYPASSRLS: pg_cron shows it its own jobs only.
    with pytest.raises(SourceError, match=r"may not read every pg_cron job \(cron.job\)"):
        backupkit.backup(as_app(source), tmp_path / "repo")
    out = run_cli("backup", "--to", tmp_path / "repo", env={"BACKUPKIT_DSN": as_app(source)})
    assert out.returncode == 5 and "allow-partial" in out.stderr.replace("_", "-")
    result = backupkit.backup(as_app(source), tmp_path / "repo", allow_partial=True)
    assert result.manifest["partial"] is True and "cron.job" in result.manifest["partial_tables"]
    assert "cron_jobs" not in result.manifest
    assert any("cron.job" in w for w in result.warnings)


def test_a_server_that_does_not_run_pg_cron_gets_the_rest_of_the_snapshot(snapshot):
    # Debian's package installed but not preloaded: CREATE EXTENSION pg_cron would fail
    # there, after a dry run that passed, and roll the whole restore back.
    root = Path(tempfile.mkdtemp(prefix="backupkit-cron-off-"))
    os.chmod(root, 0o755)
    server = EmbeddedServer(root / "data", bindir=PG15, remove_parent=True).start()
    try:
        result = backupkit.restore(snapshot, server.dsn())
        said = " ".join(result.plan.notes)
        assert "skipped extension pg_cron" in said and "shared_preload_libraries" in said
        assert "did not schedule the snapshot's 7 pg_cron job(s)" in said
        with psycopg.connect(server.dsn()) as conn:
            assert conn.execute("SELECT body FROM public.notes ORDER BY id").fetchall() == [("it's old",), ("new",)]
    finally:
        server.stop()


def test_jobs_pg_cron_refuses_or_roles_that_cannot_run_them_cost_nothing_else(source, tmp_path):
    """A superuser restores into a server without role app (then with app made NOLOGIN by
    --create-roles): app's jobs cannot run there and are named; a job whose schedule this
    pg_cron does not know (30 seconds: pg_cron 1.5+, Supabase's 1.6) is a warning; the
    superuser's own jobs, and a job of the same name of another role, are all scheduled."""
    with psycopg.connect(source.dsn(), autocommit=True) as conn:
        conn.execute("SELECT cron.schedule('purge', '0 4 * * *', 'SELECT 4')")  # the superuser's purge, beside app's
        # As a newer pg_cron has it (1.4 would refuse to schedule it).
        conn.execute(
            "INSERT INTO cron.job (schedule, command, nodename, nodeport, database, username, jobname) "
            "VALUES ('30 seconds', 'SELECT 5 /* often-key */', 'localhost', 5432, 'postgres', 'postgres', 'often')"
        )
    try:
        snap = str(backupkit.backup(source.dsn(), tmp_path / "repo").location)
    finally:
        with psycopg.connect(source.dsn(), autocommit=True) as conn:
            conn.execute("DELETE FROM cron.job WHERE username = 'postgres' AND jobname IN ('purge', 'often')")
    server = bare_cluster("no-app")
    try:
        result = backupkit.restore(snap, server.dsn())
        said = " ".join(result.plan.notes)
        assert "nightly (0 3 * * *) of role app in database postgres" in said and "may not log in" in said
        assert [w for w in result.warnings if "often" in w] == [
            "pg_cron did not schedule job often (30 seconds) of role postgres in database postgres: invalid "
            "schedule: 30 seconds; their commands are in the snapshot's schema/cron_jobs.json"
        ]
        assert sorted(j[:2] + j[4:] for j in jobs_of(server.dsn())) == [
            ("backup-role-job", "15 * * * *", "postgres", True),
            ("purge", "0 4 * * *", "postgres", True),
        ]
        with psycopg.connect(server.dsn()) as conn:  # and the rest of the snapshot
            assert conn.execute("SELECT count(*) FROM public.notes").fetchone() == (2,)
        # The refused job's command went as a parameter: not into the server's error log.
        assert "often-key" not in (server.datadir / "server.log").read_text()

        # --create-roles makes app, NOLOGIN: pg_cron would refuse to run its jobs.
        result = backupkit.restore(snap, server.dsn(), clean=True, create_roles=True, dry_run=True)
        assert "nightly (0 3 * * *) of role app" in " ".join(result.plan.notes)
    finally:
        server.stop()


def test_a_role_without_pg_cron_rights_restores_everything_else(snapshot, tmp_path):
    """Self-hosted pg_cron grants nothing to PUBLIC: a role without USAGE on schema cron (or
    without EXECUTE on cron.alter_job, which pauses a job) restored the snapshot before
    backupkit knew of jobs, and must still; a paused job is never scheduled active."""
    server = bare_cluster("no-rights")
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE ROLE app LOGIN PASSWORD 'app-pw'; GRANT CREATE ON SCHEMA public TO app")
        result = backupkit.restore(snapshot, as_app(server))
        assert "role app may not run cron.schedule here" in " ".join(result.plan.notes)
        assert jobs_of(server.dsn()) == []

        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(
                "GRANT USAGE ON SCHEMA cron TO app; GRANT EXECUTE ON FUNCTION cron.schedule(text,text,text), "
                "cron.schedule(text,text) TO app"
            )
        result = backupkit.restore(snapshot, as_app(server), clean=True)
        said = " ".join(result.plan.notes)
        assert "paused (0 0 * * 0, inactive) of role app in database postgres: they are to be paused" in said
        assert sorted(j[0] or "" for j in jobs_of(server.dsn())) == ["", "call-edge", "nightly", "purge"]
        assert all(j[5] for j in jobs_of(server.dsn()))
    finally:
        server.stop()


def test_a_backup_role_without_usage_on_cron_says_so(source, tmp_path):
    with psycopg.connect(source.dsn(), autocommit=True) as conn:
        conn.execute("CREATE ROLE reader LOGIN BYPASSRLS PASSWORD 'app-pw'")
        conn.execute("GRANT SELECT ON public.notes TO reader")
    reader = source.dsn(user="reader").replace(f":{source.password}@", ":app-pw@")
    with pytest.raises(SourceError, match=r"may not read every pg_cron job"):
        backupkit.backup(reader, tmp_path / "repo", schemas=["public"])
    result = backupkit.backup(reader, tmp_path / "repo", schemas=["public"], allow_partial=True)
    assert "cron.job" in result.manifest["partial_tables"]


def test_a_role_whose_jobs_are_all_its_own_backs_up_without_bypassrls(tmp_path):
    """pg_cron shows a role without BYPASSRLS its own jobs only; when those are all there
    are, its backup is complete (it was before jobs were recorded) and has them."""
    server = cron_cluster("own")
    try:
        with psycopg.connect(as_app(server), autocommit=True) as conn:
            conn.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
            conn.execute("SELECT cron.schedule('mine', '0 5 * * *', 'SELECT 1')")
        result = backupkit.backup(as_app(server), tmp_path / "repo")
        assert result.manifest["partial"] is False
        assert [j["name"] for j in result.manifest["cron_jobs"]] == ["mine"]
    finally:
        server.stop()


def test_a_staging_copy_gets_the_jobs_paused_or_none(source, target, snapshot):
    """A copy restored to try a migration must not call the webhooks and send the emails the
    project's jobs do: `--cron-jobs paused` schedules every job inactive, `skip` none."""
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        conn.execute("SELECT cron.unschedule(jobid) FROM cron.job")
    # The copy has the jobs running already (restored as they were, once): they are paused, not doubled.
    backupkit.restore(snapshot, target.dsn(), clean=True)
    assert any(j[5] for j in jobs_of(target.dsn()) if j[0] is None)
    out = run_cli("restore", snapshot, "--clean", "--cron-jobs", "paused", env={"BACKUPKIT_DSN": target.dsn()})
    assert out.returncode == 0, out.stderr
    restored = jobs_of(target.dsn())
    here = [j for j in jobs_of(source.dsn()) if j[3] == "postgres"]
    assert sorted(repr(j[:5]) for j in restored) == sorted(repr(j[:5]) for j in here)
    assert not any(j[5] for j in restored), restored

    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        conn.execute("SELECT cron.unschedule(jobid) FROM cron.job")
    result = backupkit.restore(snapshot, target.dsn(), clean=True, cron_jobs="skip")
    assert jobs_of(target.dsn()) == []
    assert any("did not schedule the snapshot's 7 pg_cron job(s) (`cron_jobs` skip)" in n for n in result.plan.notes)
    # Only a whole restore schedules jobs: asking a partial one to pause them is answered.
    partial = backupkit.restore(
        snapshot, target.dsn(), schemas=["public"], clean=True, cron_jobs="paused", dry_run=True
    )
    assert "`cron_jobs` paused is for whole restores: this one schedules no jobs" in partial.warnings
    out = run_cli("restore", snapshot, "--cron-jobs", "later", env={"BACKUPKIT_DSN": target.dsn()})
    assert out.returncode == 2 and "--cron-jobs" in out.stderr


def test_jobs_only_the_target_has_are_named(target, snapshot):
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        conn.execute("SELECT cron.unschedule(jobid) FROM cron.job")
        conn.execute("SELECT cron.schedule('made-after', '0 6 * * *', 'SELECT 6')")
    result = backupkit.restore(snapshot, target.dsn(), clean=True)
    assert [n for n in result.plan.notes if n.startswith("kept")] == [
        "kept this database's pg_cron job(s) made-after (0 6 * * *) of role postgres, which the snapshot "
        "does not have; the active ones run on (cron.unschedule removes one, cron.alter_job pauses one)"
    ]


def test_diff_names_jobs_added_removed_and_rescheduled(source, snapshot, tmp_path):
    with psycopg.connect(source.dsn(), autocommit=True) as conn:
        conn.execute("SET ROLE app")
        conn.execute("SELECT cron.schedule('nightly', '30 2 * * *', 'VACUUM public.notes')")  # moved
        conn.execute("SELECT cron.unschedule('purge')")
        conn.execute("SELECT cron.schedule('weekly', '0 1 * * 1', 'SELECT 7')")
    try:
        later = str(backupkit.backup(source.dsn(), tmp_path / "repo").location)
    finally:
        with psycopg.connect(source.dsn(), autocommit=True) as conn:
            conn.execute("SET ROLE app")
            conn.execute("SELECT cron.unschedule('weekly')")
            conn.execute("SELECT cron.schedule('nightly', '0 3 * * *', 'VACUUM public.notes')")
            conn.execute("SELECT cron.schedule('purge', %s, %s)", JOBS[1][1:3])
    out = run_cli("diff", snapshot, later, "--json")
    assert out.returncode == 0, out.stderr
    jobs = {
        (o["name"], o["change"], o.get("detail"))
        for o in json.loads(out.stdout)["schema_objects"]
        if o["type"] == "cron job"
    }
    assert jobs == {
        ("purge of role app in database postgres", "removed", None),
        ("weekly of role app in database postgres", "added", None),
        ("nightly of role app in database postgres", "changed", 'schedule "0 3 * * *" → "30 2 * * *"'),
    }


def test_plan_matches_only_this_database_and_says_what_paused_cannot_pause():
    """Pure: an unnamed job of another database on the target is not this one's copy (it was
    paused in its place); under `paused`, jobs left to their role are named with their own
    state, and a copy of them the target runs is said to run on."""
    from backupkit.pg import cron

    mine = cron.Job(None, "*/5 * * * *", "SELECT 1", "postgres", "app")
    theirs = cron.Job("report", "0 8 * * *", "SELECT 2", "postgres", "owner")
    elsewhere = cron.Job(None, "*/5 * * * *", "SELECT 1", "other_db", "app", jobid=7)
    target = cron.TargetCron(
        True,
        True,
        [elsewhere, cron.Job("report", "0 8 * * *", "SELECT 2", "postgres", "owner", jobid=8)],
        {"app", "owner"},
        "postgres",
    )
    done = cron.plan([mine, theirs], target, source_database="postgres", role="app", superuser=False, paused=True)
    assert [(s.query, s.params) for s in done.statements] == [
        ("SELECT cron.alter_job(cron.schedule(%s, %s), active := %s)", ("*/5 * * * *", "SELECT 1", False))
    ]
    assert done.notes[0].startswith("did not schedule pg_cron job(s) report (0 8 * * *) of role owner")
    assert done.notes[1].startswith("a copy of those jobs this database already has runs on")
