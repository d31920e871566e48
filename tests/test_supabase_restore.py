"""Restoring a Supabase project as its non-superuser ``postgres`` role, into the places users need.

The source is the fixture built from Supabase's own SQL (tests/supabase_platform.py)
with an app on top; every backup and restore here connects as ``postgres``,
which is NOSUPERUSER there, as on the platform.  Results are compared by the
fingerprint (tests/fingerprint.py), read as ``supabase_admin`` so nothing is hidden:
it covers data, extensions, publications, large objects, default privileges,
owners and grants.
"""

from __future__ import annotations

import contextlib
import json
import re

import psycopg
import pytest
from fingerprint import diff_fingerprints, fingerprint
from helpers import run_cli
from psycopg import sql
from supabase_platform import APP_POLICY_GRANTS_SQL, supautils_policy_grants
from test_snapshot_model import problems as model_problems

import backupkit
from backupkit.errors import RestoreError
from backupkit.snapshot import manifest as mf
from backupkit.snapshot import model

APP_SCHEMAS = ["public", "auth", "storage"]


def assert_same(a: dict, b: dict) -> None:
    diffs = diff_fingerprints(a, b)
    assert not diffs, f"{len(diffs)} difference(s):\n" + "\n".join(diffs[:40])


@pytest.fixture
def app_snapshot(supabase_project, tmp_path):
    """(source DSN, snapshot) of the app project, backed up as postgres (public, auth, storage)."""
    source = supabase_project.app_project()
    with psycopg.connect(source) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
    return source, backupkit.backup(source, tmp_path / "backups", schemas=APP_SCHEMAS)


def test_the_snapshot_records_what_lives_outside_the_schemas(app_snapshot):
    _, res = app_snapshot
    m = res.manifest
    ext = {e["name"]: e for e in m["extensions"]}
    assert ext["citext"]["schema"] == "extensions" and ext["citext"]["required"]
    assert ext["hstore"]["required"]
    pubs = {p["name"]: p for p in m["publications"]}
    assert {"schema": "public", "name": "messages", "columns": None, "row_filter": None} in pubs["supabase_realtime"][
        "tables"
    ]
    assert pubs["app_pub"]["tables"] == [
        {"schema": "public", "name": "profiles", "columns": ["id", "username"], "row_filter": "(full_name IS NOT NULL)"}
    ]
    assert any(d["schema"] is None and d["role"] == "postgres" for d in m["default_privileges"])
    assert len(m["large_objects"]) == 1
    roles = {r["name"]: r for r in m["roles"]}
    assert roles["postgres"]["superuser"] is False and "supabase_auth_admin" in roles
    assert "password" not in json.dumps(m["roles"]).lower()


def test_restore_into_a_new_project_as_postgres_gives_the_project_back(supabase_project, app_snapshot):
    source, res = app_snapshot
    target = supabase_project.new_project()
    plan = backupkit.restore(res.path, target, dry_run=True)
    assert any("supabase_realtime" in n for n in plan.plan.notes)
    with supautils_policy_grants(supabase_project, target):
        out = run_cli("restore", res.path, "--dsn", target, "-q")
    assert out.returncode == 0, out.stderr
    # Everything, platform and app alike: owners, grants, extensions, publications,
    # default privileges, the large object, auth and storage rows.
    assert_same(fingerprint(supabase_project.admin(source)), fingerprint(supabase_project.admin(target)))
    # The project's services still own their data, and the app's trigger fires on sign-up.
    with psycopg.connect(supabase_project.as_role(target, "supabase_auth_admin")) as conn:
        assert conn.execute("SELECT count(*) FROM auth.users").fetchone()[0] == 3
        conn.execute(
            "INSERT INTO auth.users (instance_id, id, aud, role, email, raw_user_meta_data) VALUES "
            "('00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', "
            "'authenticated', 'dave@example.com', '{\"username\": \"dave\"}')"
        )
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM public.profiles WHERE username = 'DAVE'").fetchone()[0] == 1
    with psycopg.connect(supabase_project.as_role(target, "supabase_storage_admin")) as conn:
        assert conn.execute("SELECT count(*) FROM storage.objects").fetchone()[0] == 2


_PRIVATE = """
CREATE TABLE public.secrets (id int PRIMARY KEY, note text);
REVOKE ALL ON public.secrets FROM anon, authenticated;
CREATE VIEW public.secret_notes AS SELECT note FROM public.secrets;
REVOKE ALL ON public.secret_notes FROM anon;
CREATE FUNCTION public.internal() RETURNS int LANGUAGE sql AS 'SELECT 1';
REVOKE EXECUTE ON FUNCTION public.internal() FROM anon, PUBLIC;
"""

_ACLS = """
SELECT c.relname, c.relacl::text FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
   AND c.relname IN ('secrets', 'secret_notes')
UNION ALL SELECT p.proname, p.proacl::text FROM pg_proc p WHERE p.oid = 'public.internal()'::regprocedure
ORDER BY 1
"""

_DEFAULTS = "SELECT defaclrole::regrole::text, defaclnamespace::regnamespace::text, defaclobjtype, defaclacl::text FROM pg_default_acl ORDER BY 1, 2, 3"


def test_privileges_revoked_in_the_source_stay_revoked_in_a_new_project(supabase_project, tmp_path):
    """A new project's default privileges grant anon, authenticated and service_role everything
    postgres creates in public.  pg_dump writes grants as changes from PostgreSQL's built-in
    default, so a table whose anon privileges were revoked came back readable by anon, through
    the project's API and its public key.  The restored objects get the source's grants, exactly,
    and the project keeps its default privileges."""
    source = supabase_project.app_project()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(_PRIVATE)
        assert conn.execute("SELECT has_table_privilege('anon', 'public.secrets', 'SELECT')").fetchone() == (False,)
        acls = conn.execute(_ACLS).fetchall()
    res = backupkit.backup(source, tmp_path / "backups", schemas=APP_SCHEMAS)
    target = supabase_project.new_project()
    with psycopg.connect(target) as conn:
        defaults = conn.execute(_DEFAULTS).fetchall()
    assert [d for d in defaults if d[:2] == ("postgres", "public") and "anon" in d[3]]  # the trap is there

    with supautils_policy_grants(supabase_project, target):
        out = run_cli("restore", res.path, "--dsn", target, "-q", "--jobs", "2")
    assert out.returncode == 0, out.stderr

    with psycopg.connect(target) as conn:
        assert conn.execute(_ACLS).fetchall() == acls
        assert conn.execute(
            "SELECT has_table_privilege('anon', 'public.secrets', 'SELECT'), "
            "has_table_privilege('anon', 'public.secret_notes', 'SELECT'), "
            "has_function_privilege('anon', 'public.internal()', 'EXECUTE')"
        ).fetchone() == (False, False, False)
        # The project's own default privileges are all still there (the snapshot's add theirs).
        assert set(defaults) <= set(conn.execute(_DEFAULTS).fetchall())


def test_a_project_that_already_has_users_is_refused_before_anything_changes(supabase_project, app_snapshot):
    _, res = app_snapshot
    target = supabase_project.app_project()  # a live project: auth.users has rows
    before = fingerprint(supabase_project.admin(target))
    with pytest.raises(RestoreError) as err:
        backupkit.restore(res.path, target, tables=["public.messages"], dry_run=True)
    assert "public.messages" in str(err.value)
    out = run_cli("restore", res.path, "--dsn", target, "--dry-run")
    assert out.returncode == 9
    assert "auth.users" in out.stderr and "nothing was changed" in out.stderr
    assert fingerprint(supabase_project.admin(target)) == before


def test_an_extension_the_server_lacks_is_a_problem_unless_nothing_uses_it(supabase_project, app_snapshot):
    """The decision is a pure function of the snapshot and the target's catalog: here the
    target is read from a real new project, then told it offers no citext/hstore."""
    from backupkit.pg.schema import toc
    from backupkit.recovery.database_scripts import plan_database, read_target
    from backupkit.snapshot.manifest import DATABASE_DUMP

    _, res = app_snapshot
    entries = toc(res.path / DATABASE_DUMP)
    with psycopg.connect(supabase_project.new_project()) as conn:
        target = read_target(conn, res.manifest)
    target.available -= {"citext", "hstore"}
    manifest = {
        **res.manifest,
        "extensions": [{**e, "required": e["name"] == "citext"} for e in res.manifest["extensions"]],
    }
    plan = plan_database(entries, manifest, target, tables=set(), full=True, clean=False)
    assert len(plan.problems) == 1 and "extension citext is not available" in plan.problems[0]
    assert any("skipped extension hstore" in n for n in plan.notes)


def _dev_database(pg_server) -> tuple[str, str]:
    """A database on plain PostgreSQL owned by a non-superuser with CREATEROLE, as a developer has."""
    with (
        psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn,
        contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation),
    ):
        conn.execute(sql.SQL("CREATE ROLE bk_dev LOGIN CREATEROLE PASSWORD {}").format(sql.Literal(pg_server.password)))
    dsn = pg_server.createdb("dev")
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO bk_dev").format(sql.Identifier(name)))
    return dsn, psycopg.conninfo.make_conninfo(dsn, user="bk_dev")


def test_default_privileges_of_a_role_the_restorer_only_administers_are_skipped_not_failed(
    supabase_project, pg_server, tmp_path
):
    """A developer's CREATEROLE role that created supabase_admin (a first restore with
    create_roles) is its ADMIN-only member: no INHERIT, no SET.  ALTER DEFAULT PRIVILEGES FOR
    ROLE supabase_admin is refused to it, and a second restore on that server failed there,
    after a dry run that passed."""
    source = supabase_project.app_project()
    res = backupkit.backup(source, tmp_path)
    admin_dsn, dev = _dev_database(pg_server)
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        with contextlib.suppress(psycopg.errors.DuplicateObject):
            conn.execute("CREATE ROLE supabase_admin NOLOGIN")
        conn.execute("GRANT supabase_admin TO bk_dev WITH ADMIN TRUE, INHERIT FALSE, SET FALSE")
    try:
        result = backupkit.restore(res.path, dev, create_roles=True)
        assert "skipped default privileges FOR ROLE supabase_admin (in schema public)" in "\n".join(result.plan.notes)
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            conn.execute("REVOKE supabase_admin FROM bk_dev")


def _as_one_role(fp: dict, role: str) -> str:
    """The fingerprint with ``role`` written as ROLE: owners and grantors differ by design
    when a non-superuser restores (everything becomes its own), nothing else may."""
    return re.sub(rf"\b{role}\b", "ROLE", json.dumps(fp, sort_keys=True))


def test_a_public_only_snapshot_restores_into_plain_postgres_with_an_auth_stand_in(
    supabase_project, pg_server, tmp_path
):
    source = supabase_project.app_project()
    res = backupkit.backup(source, tmp_path)  # the README's default: public only
    admin_dsn, dev = _dev_database(pg_server)
    with psycopg.connect(admin_dsn) as conn:  # roles are cluster-wide: other tests may have made some
        had = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    result = backupkit.restore(res.path, dev, create_roles=True)
    said = "\n".join(result.plan.notes)
    assert "stand-in auth schema" in said and "auth.uid()" in said and "auth.users (id)" in said
    assert "created extension citext, hstore" in said and "supabase_realtime" in said
    assert {"anon", "authenticated"} <= set(result.plan.created_roles) | had
    assert not set(result.plan.created_roles) & had
    # Default privileges FOR ROLE postgres / supabase_admin cannot be set by bk_dev: named, not run.
    assert "skipped default privileges FOR ROLE postgres (in schema public)" in said
    assert "skipped default privileges FOR ROLE supabase_admin (in schema public)" in said
    public_src = fingerprint(supabase_project.admin(source), schemas=["public"])
    public_dev = fingerprint(admin_dsn, schemas=["public"])
    public_src.pop("default_privileges"), public_dev.pop("default_privileges")
    # The public schema is not the restore's (it is the target's own), and its grants name
    # the role postgres itself, not the owner: compared as they are.
    assert public_src.pop("schemas") == public_dev.pop("schemas")
    one_src, one_dev = (
        json.loads(_as_one_role(public_src, "postgres")),
        json.loads(_as_one_role(public_dev, "bk_dev")),
    )
    assert_same(one_src, one_dev)
    with psycopg.connect(dev) as conn:
        # The foreign keys loaded against the stand-in's users, and auth.uid() reads the JWT claims.
        assert conn.execute("SELECT count(*) FROM auth.users").fetchone()[0] == 3
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, false)",
            ('{"sub": "11111111-1111-1111-1111-111111111111", "role": "authenticated"}',),
        )
        assert str(conn.execute("SELECT auth.uid()").fetchone()[0]) == "11111111-1111-1111-1111-111111111111"
        assert conn.execute("SELECT auth.role()").fetchone()[0] == "authenticated"
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'supabase_realtime' "
                "AND tablename = 'messages'"
            ).fetchone()[0]
            == 1
        )
        assert conn.execute("SELECT length(lo_get(oid)) > 0 FROM pg_largeobject_metadata").fetchall() == [(True,)]
        # Policies run as authenticated call auth.uid(): the API roles may use the schema, as on Supabase.
        assert conn.execute("SELECT has_schema_privilege('authenticated', 'auth', 'USAGE')").fetchone() == (True,)


def test_in_place_restore_of_one_table_keeps_everything_that_points_at_it(supabase_project, app_snapshot):
    """Roll back a bad data migration on the live project: only profiles' rows change back."""
    source, res = app_snapshot
    before = fingerprint(supabase_project.admin(source))
    with psycopg.connect(source) as conn:  # the bad migration
        conn.execute("UPDATE public.profiles SET full_name = 'oops', attrs = NULL")
    out = run_cli("restore", res.path, "--dsn", source, "--table", "public.profiles", "--clean", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "in place" in out.stdout + out.stderr
    out = run_cli("restore", res.path, "--dsn", source, "--table", "public.profiles", "--clean", "-q")
    assert out.returncode == 0, out.stderr
    # The view over profiles, messages' foreign key to it, app_pub's column list and row
    # filter, its policies, grants and comment: all as before the migration, rows too.
    assert_same(before, fingerprint(supabase_project.admin(source)))


def test_in_place_restore_that_would_break_a_foreign_key_changes_nothing(supabase_project, app_snapshot):
    source, res = app_snapshot
    with psycopg.connect(source) as conn:  # a profile and a message written after the snapshot
        conn.execute(
            "INSERT INTO auth.users (instance_id, id, aud, role, email, raw_user_meta_data) VALUES "
            "('00000000-0000-0000-0000-000000000000', '44444444-4444-4444-4444-444444444444', "
            "'authenticated', 'authenticated', 'erin@example.com', '{\"username\": \"erin\"}')"
        )
        conn.execute(
            "INSERT INTO public.messages (profile_id, body) VALUES "
            "('44444444-4444-4444-4444-444444444444', 'new since the snapshot')"
        )
    before = fingerprint(supabase_project.admin(source))
    with pytest.raises(RestoreError) as err:
        backupkit.restore(res.path, source, tables=["public.profiles"], clean=True)
    assert "messages_profile_id_fkey" in str(err.value) and "rolled back" in str(err.value)
    assert fingerprint(supabase_project.admin(source)) == before


def test_in_place_restore_of_a_realtime_table_keeps_its_publication_membership(supabase_project, app_snapshot):
    source, res = app_snapshot
    with psycopg.connect(source) as conn:
        conn.execute("DELETE FROM public.messages")
    backupkit.restore(res.path, source, tables=["public.messages"], clean=True)
    with psycopg.connect(source) as conn:
        assert conn.execute("SELECT count(*) FROM public.messages").fetchone()[0] == 4
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'supabase_realtime' "
                "AND schemaname = 'public' AND tablename = 'messages'"
            ).fetchone()[0]
            == 1
        )


def test_a_table_that_references_auth_users_restores_with_dependencies_into_the_live_project(
    supabase_project, app_snapshot
):
    """--with-dependencies follows profiles -> auth.users, which the live project has: it is
    left as it is, not loaded again or dropped."""
    source, res = app_snapshot
    before = fingerprint(supabase_project.admin(source))
    with psycopg.connect(source) as conn:
        conn.execute("UPDATE public.profiles SET full_name = NULL")
    result = backupkit.restore(res.path, source, tables=["public.profiles"], with_dependencies=True, clean=True)
    assert any("left the project's own auth.users" in n for n in result.plan.notes)
    assert [mf.table_key(t) for t in result.plan.tables] == ["public.profiles"]
    assert_same(before, fingerprint(supabase_project.admin(source)))


def test_with_dependencies_into_a_new_project_names_the_users_it_lacks_in_the_dry_run(supabase_project, app_snapshot):
    """The same restore into a new project: its auth.users is empty, so profiles' rows would
    point at nothing.  The dry run passed and the restore failed on the foreign key; now the
    dry run names the table and what to do."""
    _, res = app_snapshot
    target = supabase_project.new_project()
    with pytest.raises(RestoreError, match=r"need rows of auth\.users, which this project does not have") as caught:
        backupkit.restore(res.path, target, tables=["public.profiles"], with_dependencies=True, dry_run=True)
    assert "nothing was changed" in str(caught.value)
    # The schema alone needs no rows: that restore goes on as before.
    plan = backupkit.restore(
        res.path, target, tables=["public.profiles"], with_dependencies=True, schema_only=True, dry_run=True
    )
    assert any("left the project's own auth.users" in n for n in plan.plan.notes)


def test_a_whole_supabase_snapshot_restores_into_plain_postgres_as_a_superuser(app_snapshot, make_db):
    """The platform's event triggers call functions of schemas the snapshot does not hold
    (extensions): they are named and skipped, not a failure of the whole restore."""
    _, res = app_snapshot
    target = make_db("sb_plain")
    result = backupkit.restore(res.path, target, create_roles=True)
    assert any(n.startswith("skipped event trigger") for n in result.plan.notes)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM auth.users").fetchone() == (3,)
        assert conn.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'storage.objects'::regclass"
        ).fetchone() == ("postgres",)


_CLI_HISTORY = """
CREATE SCHEMA IF NOT EXISTS supabase_migrations;
CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (version text NOT NULL PRIMARY KEY);
ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS statements text[];
ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS name text;
INSERT INTO supabase_migrations.schema_migrations VALUES
    ('20260101000000', ARRAY['create table public.todos (id int)'], 'init'),
    ('20260201000000', ARRAY['alter table public.todos add column done bool'], 'done');
"""


def test_the_supabase_cli_migration_history_moves_with_the_project(supabase_project, tmp_path):
    """docs/recovery.md: a project deployed with `supabase db push` is moved with
    `--schema supabase_migrations` too, so the CLI finds its history in the new project
    (the schema is the CLI's, made as postgres) instead of pushing every migration again."""
    source = supabase_project.app_project()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(_CLI_HISTORY)
        history = conn.execute("SELECT * FROM supabase_migrations.schema_migrations ORDER BY 1").fetchall()
    res = backupkit.backup(source, tmp_path / "backups", schemas=[*APP_SCHEMAS, "supabase_migrations"])
    target = supabase_project.new_project()
    with supautils_policy_grants(supabase_project, target):
        out = run_cli("restore", res.path, "--dsn", target, "-q")
    assert out.returncode == 0, out.stderr
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT * FROM supabase_migrations.schema_migrations ORDER BY 1").fetchall() == history
        # As the CLI made it: postgres's, so the next `supabase db push` can record into it.
        assert conn.execute(
            "SELECT nspowner::regrole::text, has_table_privilege('supabase_migrations.schema_migrations', 'INSERT') "
            "FROM pg_namespace WHERE nspname = 'supabase_migrations'"
        ).fetchone() == ("postgres", True)


def test_a_public_only_backup_keeps_the_projects_objects_on_the_platform_tables(supabase_project, tmp_path):
    """The default backup is `public`: Supabase's sign-up trigger on auth.users (calling
    public.handle_new_user) and the avatar policies on storage.objects are not in its schemas,
    and a new project restored from it lost them without a word.  The backup now names them
    (the manifest's left_on_platform) and keeps them (schema/platform.dump); `backupkit check`
    says so."""
    source = supabase_project.app_project()
    with psycopg.connect(supabase_project.admin(source), autocommit=True) as conn:
        conn.execute(_WEBHOOK)  # a Database Webhook on sign-ups: the project's, though its function is Supabase's
        conn.execute(
            "CREATE TRIGGER signup_hook AFTER INSERT ON auth.users FOR EACH ROW "
            "EXECUTE FUNCTION supabase_functions.http_request('https://example.com/hook', 'POST', '{}', '{}', '1000')"
        )
    res = backupkit.backup(source, tmp_path / "backups")
    assert not [w for w in res.warnings if "platform's tables" in w], res.warnings
    left = [{k: i[k] for k in ("kind", "name", "schema", "table")} for i in res.manifest["left_on_platform"]]
    assert all(isinstance(i["oid"], int) for i in res.manifest["left_on_platform"])  # its entry in platform.dump
    assert {"kind": "trigger", "name": "on_auth_user_created", "schema": "auth", "table": "users"} in left
    assert {"kind": "trigger", "name": "signup_hook", "schema": "auth", "table": "users"} in left
    assert {"kind": "policy", "name": "Anyone can upload an avatar.", "schema": "storage", "table": "objects"} in left
    # The platform's own triggers (storage's, calling storage.*) are not the project's.
    assert not [i for i in left if i["name"] == "update_objects_updated_at"]
    assert mf.PLATFORM_DUMP in [f["path"] for f in res.manifest["schema_files"]]
    assert backupkit.verify(res.path).ok
    out = run_cli("check", env={"BACKUPKIT_DSN": source})
    said = out.stdout + out.stderr
    assert "keeping the project's own objects on the platform's tables" in said, said
    assert 'trigger "on_auth_user_created" on auth.users' in said, said
    seen: set[tuple[str, str]] = set()
    assert model_problems(res.manifest, model.Manifest, "manifest", seen) == []
    assert {("PlatformObject", f.name) for f in model.fields(model.PlatformObject)} <= seen
    plan = backupkit.restore(res.path, supabase_project.new_project(), dry_run=True).plan
    [note] = [n for n in plan.notes if n.startswith("making the source project's own objects")]
    assert 'trigger "on_auth_user_created" on auth.users' in note
    assert 'policy "Anyone can upload an avatar." on storage.objects' in note
    # ... and nothing to make where they all are (the live project has them all).
    from backupkit.recovery.left_out import plan_platform_objects
    from backupkit.storage.location import locate

    with psycopg.connect(source) as conn:
        assert plan_platform_objects(conn, locate(res.path), res.manifest).make == []
    # A backup of what a project move takes has them all in its schemas: nothing to keep apart.
    res = backupkit.backup(source, tmp_path / "backups", schemas=APP_SCHEMAS)
    assert "left_on_platform" not in res.manifest
    assert mf.PLATFORM_DUMP not in [f["path"] for f in res.manifest["schema_files"]]


_SIGN_UPS = """
CREATE TABLE public.profiles (id uuid PRIMARY KEY, username text);
CREATE FUNCTION public.handle_new_user() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$ BEGIN INSERT INTO public.profiles (id, username) VALUES (new.id, new.raw_user_meta_data ->> 'username');
RETURN new; END $$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_new_project_restored_from_a_public_only_backup_creates_profiles_on_sign_up(supabase_project, tmp_path, jobs):
    """What a user checks after moving a project: a sign-up makes its profile row, and uploads
    pass the bucket's policies.  The trigger on auth.users and the policies on storage.objects
    come back from a backup of `public` alone; the Database Webhook, whose function a project
    without Webhooks lacks, is named in a warning and costs the restore nothing else."""
    source = supabase_project.new_project()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(_SIGN_UPS)
    admin = supabase_project.admin(source)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(APP_POLICY_GRANTS_SQL)
        # pg_restore --list prints names unquoted and newlines as spaces: found by oid.
        conn.execute('CREATE POLICY "two\nlines " ON storage.objects FOR SELECT USING (false)')
        conn.execute(_WEBHOOK)
        conn.execute(
            "CREATE TRIGGER signup_hook AFTER INSERT ON auth.users FOR EACH ROW "
            "EXECUTE FUNCTION supabase_functions.http_request('https://example.com/hook', 'POST', '{}', '{}', '1000')"
        )
    res = backupkit.backup(source, tmp_path / "backups")
    target = supabase_project.new_project()
    with supautils_policy_grants(supabase_project, target):
        result = backupkit.restore(res.path, target, jobs=jobs)
    [warning] = [w for w in result.warnings if "signup_hook" in w]
    assert warning.startswith('could not make trigger "signup_hook" on auth.users again: ')
    assert "schema/platform.dump" in warning
    storage_policies = "SELECT policyname, cmd, qual, with_check FROM pg_policies WHERE schemaname = 'storage'"
    with psycopg.connect(target) as conn:
        policies = conn.execute(storage_policies + " ORDER BY 1").fetchall()
    with psycopg.connect(source) as conn:
        assert policies == conn.execute(storage_policies + " ORDER BY 1").fetchall()
    assert [p[0] for p in policies] == [
        "Anyone can upload an avatar.",
        "Avatar images are publicly accessible.",
        "two\nlines ",
    ]
    with psycopg.connect(supabase_project.admin(target), autocommit=True) as conn:
        user = conn.execute(
            'INSERT INTO auth.users (id, raw_user_meta_data) VALUES (gen_random_uuid(), \'{"username": "ann"}\') '
            "RETURNING id"
        ).fetchone()[0]
        assert conn.execute("SELECT id, username FROM public.profiles").fetchall() == [(user, "ann")]
    # Planned again, nothing is made twice: the target has them now, all but the refused one.
    from backupkit.recovery.left_out import plan_platform_objects
    from backupkit.storage.location import locate

    with psycopg.connect(target) as conn:
        again = plan_platform_objects(conn, locate(res.path), res.manifest)
    assert [r.item["name"] for r in again.make] == ["signup_hook"]


def test_pg_graphql_settings_on_the_public_schema_come_back(supabase_project, tmp_path):
    """pg_graphql reads its settings from the schema's comment (Supabase's GraphQL docs:
    ``comment on schema public is e'@graphql({"inflect_names": true})'``).  The comment on a
    schema the new project already has was dropped, and the API's names changed case."""
    source = supabase_project.app_project()
    directive = '@graphql({"inflect_names": true})'
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON SCHEMA public IS {}").format(sql.Literal(directive)))
    res = backupkit.backup(source, tmp_path / "backups", schemas=APP_SCHEMAS)
    target = supabase_project.new_project()
    with supautils_policy_grants(supabase_project, target):
        backupkit.restore(res.path, target)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT obj_description('public'::regnamespace, 'pg_namespace')").fetchone() == (directive,)


_WEBHOOK = """
CREATE SCHEMA supabase_functions AUTHORIZATION supabase_admin;
CREATE FUNCTION supabase_functions.http_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NEW; END $$;
GRANT USAGE ON SCHEMA supabase_functions TO postgres;
GRANT EXECUTE ON FUNCTION supabase_functions.http_request() TO postgres;
"""


def test_a_database_webhook_into_a_project_without_webhooks_is_refused_by_the_dry_run(supabase_project, tmp_path):
    """A Database Webhook is a trigger calling supabase_functions.http_request, a schema a
    project has once Webhooks are switched on (its name and function as Supabase's
    webhooks.sql makes them; the body here does nothing).  Into a new project without it,
    the dry run passed and the restore failed at the CREATE TRIGGER, rolled back."""
    source = supabase_project.app_project()
    admin = supabase_project.admin(source)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(_WEBHOOK)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "CREATE TRIGGER new_message_hook AFTER INSERT ON public.messages FOR EACH ROW "
            "EXECUTE FUNCTION supabase_functions.http_request('https://example.com/hook', 'POST', '{}', '{}', '1000')"
        )
    res = backupkit.backup(source, tmp_path / "backups", schemas=APP_SCHEMAS)
    target = supabase_project.new_project()
    out = run_cli("restore", res.path, "--dsn", target, "--dry-run")
    assert out.returncode == 9, out.stdout + out.stderr
    assert "trigger new_message_hook on public.messages calls supabase_functions.http_request()" in out.stderr
    assert "enable Database Webhooks" in out.stderr


def test_trigger_functions_in_schemas_the_restore_makes_are_not_missing():
    """The pure check behind the dry run's webhook problem: pg_dump's quoting and statement
    ends (``CREATE SCHEMA supabase_functions;``) read right; only the webhook schema nobody
    makes is named, once; a schema an extension may bring (made by CREATE EXTENSION, in no
    script) is not judged when the restore creates an extension."""
    from backupkit.recovery.checks import missing_trigger_functions

    post = (
        "CREATE TRIGGER t1 BEFORE UPDATE ON storage.objects FOR EACH ROW EXECUTE FUNCTION "
        "storage.update_updated_at_column();\n"
        'CREATE TRIGGER "t 2" AFTER INSERT ON public."a b" FOR EACH ROW WHEN ((new.id > 0)) EXECUTE FUNCTION '
        "supabase_functions.http_request('x');\n"
        "CREATE TRIGGER t4 BEFORE INSERT ON public.h FOR EACH ROW EXECUTE FUNCTION _timescaledb_functions.b();\n"
    )
    webhook = (
        'trigger t 2 on public."a b" calls supabase_functions.http_request(), and this database has no schema '
        "supabase_functions: enable Database Webhooks in the project (Database, Webhooks) first"
    )
    timescale = (
        "trigger t4 on public.h calls _timescaledb_functions.b(), and this database has no schema "
        "_timescaledb_functions: back up schema _timescaledb_functions too, or create it and the function here first"
    )
    assert missing_trigger_functions("", post + post, {"public", "storage"}) == [webhook, timescale]
    # An extension the restore creates may bring that schema: only Supabase's feature schemas are judged.
    assert missing_trigger_functions("", post, {"public", "storage"}, creates_extensions=True) == [webhook]
    assert (
        missing_trigger_functions("CREATE SCHEMA supabase_functions;\n", post, {"public"}, creates_extensions=True)
        == []
    )
    assert missing_trigger_functions("", post, {"public", "supabase_functions"}, creates_extensions=True) == []


def test_a_backup_role_that_may_not_dump_the_platform_tables_keeps_the_rest_and_says_so(supabase_project, tmp_path):
    """A backup role with rights on `public` alone cannot pg_dump auth.users: the backup is
    taken all the same, warns that the project's objects on those tables are left out (the
    manifest still names them), and a whole restore names those the new project lacks."""
    source = supabase_project.new_project()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(_SIGN_UPS)
    with psycopg.connect(supabase_project.admin(source), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE public_reader LOGIN PASSWORD {}").format(sql.Literal(supabase_project.password))
        )
        conn.execute("GRANT USAGE ON SCHEMA public TO public_reader")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO public_reader")
    try:
        reader = supabase_project.as_role(source, "public_reader")
        out = run_cli("check", env={"BACKUPKIT_DSN": reader})
        said = out.stdout + out.stderr
        assert "public_reader may not read auth.users" in said, said
        assert "back up as a role that may read those tables" in said, said
        res = backupkit.backup(reader, tmp_path / "backups")
        [warning] = [w for w in res.warnings if "platform's tables" in w]
        assert 'trigger "on_auth_user_created" on auth.users' in warning
        assert "pg_dump could not keep them: pg_dump failed: " in warning
        assert supabase_project.password not in warning
        [trigger] = [i for i in res.manifest["left_on_platform"] if i["kind"] == "trigger"]
        assert (trigger["name"], trigger["schema"], trigger["table"]) == ("on_auth_user_created", "auth", "users")
        assert mf.PLATFORM_DUMP not in [f["path"] for f in res.manifest["schema_files"]]
        plan = backupkit.restore(res.path, supabase_project.new_project(), dry_run=True).plan
        [note] = [n for n in plan.notes if "which this snapshot does not hold" in n]
        assert 'trigger "on_auth_user_created" on auth.users' in note
        assert "--schema public --schema auth" in note
    finally:
        with psycopg.connect(supabase_project.admin(source), autocommit=True) as conn:
            conn.execute("DROP OWNED BY public_reader")
            conn.execute("DROP ROLE public_reader")


def test_a_clean_restore_into_the_live_project_makes_its_storage_policies_again(supabase_project, tmp_path):
    """Rolling the live project back to last night's `public`-only snapshot (`--clean`, whole):
    a storage policy calls public.is_admin, which the restore drops and makes again.  The dry
    run did not see it (a policy depending on a function), and the real run failed on DROP
    FUNCTION, rolled back.  The policy is now set aside and made again as the project has it,
    in the restore's one transaction; a role that may not drop it is refused by the dry run."""
    project = supabase_project.new_project()
    with psycopg.connect(project, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO public.notes VALUES (1, 'kept')")
        conn.execute("CREATE FUNCTION public.is_admin() RETURNS boolean LANGUAGE sql STABLE AS 'SELECT false'")
    admin = supabase_project.admin(project)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            'CREATE POLICY "Admins upload anything" ON storage.objects FOR INSERT WITH CHECK (public.is_admin())'
        )
        conn.execute('CREATE POLICY "Anyone reads anything" ON storage.objects FOR SELECT USING (true)')
    res = backupkit.backup(project, tmp_path / "backups")
    assert mf.PLATFORM_DUMP in [f["path"] for f in res.manifest["schema_files"]]
    with psycopg.connect(project, autocommit=True) as conn:  # the day's change the rollback undoes
        conn.execute("INSERT INTO public.notes VALUES (2, 'after the snapshot')")
    with psycopg.connect(admin, autocommit=True) as conn:  # changed on purpose since the snapshot
        conn.execute('DROP POLICY "Anyone reads anything" ON storage.objects')
        conn.execute(
            'ALTER POLICY "Admins upload anything" ON storage.objects '
            "WITH CHECK (public.is_admin() AND bucket_id = 'uploads')"
        )
    # Without the right to drop a policy on storage.objects: refused before anything changes.
    out = run_cli("restore", res.path, "--dsn", project, "--clean", "--dry-run")
    assert out.returncode == 9, out.stdout + out.stderr
    assert (
        "`--clean` drops and makes again function public.is_admin(), but these depend on it and the restore "
        "would not drop and make them again: policy Admins upload anything on table storage.objects;"
    ) in out.stderr
    with supautils_policy_grants(supabase_project, project):
        plan = backupkit.restore(res.path, project, clean=True, dry_run=True).plan
        [note] = [n for n in plan.notes if n.startswith("setting aside ")]
        assert 'policy "Admins upload anything" on storage.objects' in note
        # A rollback does not bring back what the project dropped since: it is only named.
        [note] = [n for n in plan.notes if "which this database lacks now" in n]
        assert 'policy "Anyone reads anything" on storage.objects' in note
        assert not [n for n in plan.notes if n.startswith("making the source project's own objects")]
        result = backupkit.restore(res.path, project, clean=True)
    assert not [w for w in result.warnings if "could not make" in w], result.warnings
    with psycopg.connect(admin, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM public.notes").fetchall() == [(1, "kept")]
        assert conn.execute(
            "SELECT count(*) FROM pg_policies WHERE policyname = 'Anyone reads anything'"
        ).fetchone() == (0,)
        # As the project has it now, not as the snapshot had it: a rollback of public changes no policy.
        assert conn.execute(
            "SELECT cmd, with_check FROM pg_policies WHERE policyname = 'Admins upload anything'"
        ).fetchone() == ("INSERT", "(is_admin() AND (bucket_id = 'uploads'::text))")
        # The policy calls the function the restore made, not one left behind.
        assert conn.execute(
            "SELECT count(*) FROM pg_depend d JOIN pg_policy p ON p.oid = d.objid "
            "WHERE p.polname = 'Admins upload anything' AND d.refobjid = 'public.is_admin()'::regprocedure"
        ).fetchone() == (1,)
    # A data_only restore makes no schema: not the policy dropped since the snapshot either.
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute('DROP POLICY "Admins upload anything" ON storage.objects')
    backupkit.restore(res.path, admin, data_only=True, clean=True)
    with psycopg.connect(admin, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM public.notes").fetchall() == [(1, "kept")]
        assert conn.execute("SELECT count(*) FROM pg_policies WHERE schemaname = 'storage'").fetchone() == (0,)


def test_a_policy_that_cannot_be_put_back_rolls_the_clean_restore_back(supabase_project, tmp_path):
    """The policy set aside uses the function the snapshot replaces, whose snapshot version no
    longer fits it (it returned a boolean then, an integer now): making it again fails, and
    the whole restore is rolled back instead of committing without the policy.  A policy that
    uses only what was made after the backup is not in the way at all, and stays as it is."""
    project = supabase_project.new_project()
    with psycopg.connect(project, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION public.is_admin() RETURNS boolean LANGUAGE sql STABLE AS 'SELECT false'")
        conn.execute("CREATE TABLE public.notes (id int PRIMARY KEY)")
    res = backupkit.backup(project, tmp_path / "backups")
    admin = supabase_project.admin(project)
    with psycopg.connect(project, autocommit=True) as conn:
        conn.execute("DROP FUNCTION public.is_admin()")
        conn.execute("CREATE FUNCTION public.is_admin() RETURNS int LANGUAGE sql STABLE AS 'SELECT 0'")
        conn.execute("CREATE FUNCTION public.may_upload() RETURNS boolean LANGUAGE sql STABLE AS 'SELECT true'")
        conn.execute("INSERT INTO public.notes VALUES (1)")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute('CREATE POLICY "Admins" ON storage.objects FOR INSERT WITH CHECK (public.is_admin() = 1)')
        conn.execute('CREATE POLICY "Uploads" ON storage.objects FOR INSERT WITH CHECK (public.may_upload())')
    with supautils_policy_grants(supabase_project, project):
        plan = backupkit.restore(res.path, project, clean=True, dry_run=True).plan
        [note] = [n for n in plan.notes if n.startswith("setting aside ")]
        assert 'policy "Admins" on storage.objects' in note and "Uploads" not in note
        with pytest.raises(RestoreError, match='could not make policy "Admins" on storage.objects again as it was'):
            backupkit.restore(res.path, project, clean=True)
    with psycopg.connect(admin, autocommit=True) as conn:
        assert conn.execute(
            "SELECT policyname, with_check FROM pg_policies WHERE schemaname = 'storage' ORDER BY 1"
        ).fetchall() == [("Admins", "(is_admin() = 1)"), ("Uploads", "may_upload()")]
        assert conn.execute("SELECT * FROM public.notes").fetchall() == [(1,)]  # rolled back
