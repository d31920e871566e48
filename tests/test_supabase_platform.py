"""The ``supabase`` fixture really looks like a Supabase project (tests/supabase/README.md)."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from supabase_platform import SQL_DIR


def _one(dsn, query, params=None):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchone()


def _all(dsn, query, params=None):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def test_build_is_fast(supabase):
    assert sum(supabase.build_seconds.values()) < 20, supabase.build_seconds


def test_postgres_is_demoted(supabase_project):
    dsn = supabase_project.new_project()
    row = _one(
        dsn,
        "select rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
        "from pg_roles where rolname = current_user",
    )
    assert row == (False, True, True, True, True)
    assert _one(dsn, "select current_user")[0] == "postgres"
    # Since 2025 Supabase revokes the service admins from postgres (20250421084701).
    members = {
        r[0] for r in _all(dsn, "select roleid::regrole::text from pg_auth_members where member = 'postgres'::regrole")
    }
    assert {"anon", "authenticated", "service_role", "pg_read_all_data"} <= members
    assert not members & {"supabase_auth_admin", "supabase_storage_admin", "supabase_admin"}
    # supautils imitation: postgres may set session_replication_role.
    with psycopg.connect(dsn) as conn:
        conn.execute("set session_replication_role = replica")


def test_owners_like_supabase(supabase_project):
    dsn = supabase_project.new_project()
    owners = dict(
        _all(
            dsn,
            "select c.oid::regclass::text, c.relowner::regrole::text from pg_class c "
            "where c.oid in ('auth.users'::regclass, 'storage.objects'::regclass, "
            "'storage.buckets'::regclass, 'auth.schema_migrations'::regclass)",
        )
    )
    assert owners == {
        "auth.users": "supabase_auth_admin",
        "storage.objects": "supabase_storage_admin",
        "storage.buckets": "supabase_storage_admin",
        "auth.schema_migrations": "supabase_auth_admin",
    }
    schemas = dict(
        _all(
            dsn,
            "select nspname, nspowner::regrole::text from pg_namespace "
            "where nspname in ('auth', 'storage', 'extensions', 'realtime')",
        )
    )
    assert schemas == {
        "auth": "supabase_admin",
        "storage": "supabase_admin",
        "extensions": "postgres",
        "realtime": "supabase_admin",
    }
    assert _one(dsn, "select datdba::regrole::text from pg_database where datname = current_database()") == (
        "postgres",
    )
    acl = _one(dsn, "select datacl::text[] from pg_database where datname = current_database()")[0]
    assert "dashboard_user=CTc/postgres" in acl and "supabase_auth_admin=C/postgres" in acl


def test_new_project_bookkeeping(supabase_project):
    dsn = supabase_project.admin(supabase_project.new_project())
    assert _one(
        dsn, "select pubowner::regrole::text, puballtables from pg_publication where pubname = 'supabase_realtime'"
    ) == ("postgres", False)
    assert _one(dsn, "select count(*) from pg_publication_tables where pubname = 'supabase_realtime'") == (0,)
    assert _one(dsn, "select count(*) from auth.users") == (0,)
    n_auth = len(list((SQL_DIR / "auth").glob("*.up.sql")))
    assert _one(dsn, "select count(*) from auth.schema_migrations")[0] == 7 + n_auth
    # storage.migrations: id 0 plus one row per file, hashed like postgres-migrations does
    # (the hashes match those in real Supabase dumps).
    rows = dict(_all(dsn, "select id, hash from storage.migrations"))
    assert rows[0] == "e18db593bcde2aca2a408c4d1100f6abba2195df"
    assert (
        rows[1]
        == hashlib.sha1(
            ("0001-initialmigration.sql" + (SQL_DIR / "storage" / "0001-initialmigration.sql").read_text()).encode()
        ).hexdigest()
        == "6ab16121fbaa08bbd11b712d05f358f9b555d777"
    )
    assert len(rows) == 1 + len(list((SQL_DIR / "storage").glob("*.sql")))


def test_app_project(supabase_project):
    dsn = supabase_project.app_project()
    assert _one(dsn, "select count(*) from auth.users") == (3,)
    assert _all(dsn, "select u.email from auth.users u left join public.profiles p using (id) where p.id is null") == []
    assert _one(dsn, "select count(*) from public.profile_names where username = 'CAROL'") == (1,)
    assert _all(
        dsn, "select schemaname || '.' || tablename from pg_publication_tables where pubname = 'supabase_realtime'"
    ) == [("public.messages",)]
    assert _one(dsn, "select extnamespace::regnamespace::text from pg_extension where extname = 'citext'") == (
        "extensions",
    )
    assert _one(dsn, "select attnames, rowfilter is not null from pg_publication_tables where pubname = 'app_pub'") == (
        ["id", "username"],
        True,
    )
    assert _one(dsn, "select tgname from pg_trigger where tgrelid = 'auth.users'::regclass and not tgisinternal") == (
        "on_auth_user_created",
    )
    assert _one(dsn, "select count(*) from pg_policies where schemaname = 'storage'") == (2,)
    assert _one(dsn, "select count(*) from storage.objects where bucket_id = 'avatars'") == (2,)
    assert _one(dsn, "select obj_description(oid, 'pg_largeobject') from pg_largeobject_metadata") == (
        "avatar placeholder blob",
    )
    assert _one(dsn, "select defaclrole::regrole::text from pg_default_acl where defaclnamespace = 0") == ("postgres",)


def test_auth_admin_reads_users(supabase_project):
    dsn = supabase_project.as_role(supabase_project.app_project(), "supabase_auth_admin")
    assert _one(dsn, "select count(*) from users") == (3,)  # search_path = auth


def test_projects_are_isolated_and_dropped(supabase, supabase_project):
    a, b = supabase_project.app_project(), supabase_project.app_project()
    with psycopg.connect(a) as conn:
        conn.execute("delete from auth.users")
    assert _one(a, "select count(*) from public.profiles") == (0,)  # on delete cascade
    assert _one(b, "select count(*) from public.profiles") == (3,)
    with pytest.raises(psycopg.Error):
        _one(supabase_project.as_role(a, "anon"), "select 1")  # nologin, as on Supabase
