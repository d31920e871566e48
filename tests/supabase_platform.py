"""A Supabase-shaped PostgreSQL for tests, built from Supabase's own public SQL.

Fixtures (imported into ``tests/conftest.py``, so every test module can use them):

``supabase`` (session scope)
    A :class:`SupabasePlatform` on a dedicated embedded PostgreSQL 18 whose
    bootstrap superuser is ``supabase_admin``.  Roles are cluster-wide, so this
    server is separate from the suite's ``pg_server``.  The first use builds two
    template databases (a few seconds, once per session):

    * the *platform* template: the vendored SQL of supabase/postgres (init
      scripts as ``postgres``, then migrations as ``supabase_admin``), GoTrue's
      migrations as ``supabase_auth_admin`` and storage-api's tenant migrations
      as ``supabase_storage_admin``, applied the way those tools apply them
      (see ``tests/supabase/README.md``);
    * the *app* template: a clone of the platform plus :data:`APP_SQL` run as
      ``postgres`` (profiles, the ``on_auth_user_created`` trigger, RLS,
      publications, citext/hstore columns, a storage bucket, a large object,
      default privileges) and :data:`APP_DATA_SQL` (users, messages, objects).

    ``supabase.new_project()`` returns the DSN, as role ``postgres``, of a fresh
    database that looks like a NEW Supabase project (platform only);
    ``supabase.app_project()`` one with the app and its data;
    ``supabase.admin(dsn)`` the same database as ``supabase_admin``;
    ``supabase.as_role(dsn, role)`` as any other login role (all share
    ``supabase.password``).  Databases made through the session object are
    dropped at the end of the session; prefer ``supabase_project`` in tests.

``supabase_project`` (function scope)
    The same ``new_project()`` / ``app_project()`` / ``admin()`` / ``as_role()``,
    but the databases it made are dropped when the test ends.

Each project database is ``CREATE DATABASE ... TEMPLATE ... OWNER postgres``
(Supabase's ``postgres`` database is owned by ``postgres``: migrate.sh), and the
database-level GRANTs from Supabase's SQL are replayed on it, since PostgreSQL
does not copy a template's database ACL.

Everything skipped or rewritten from Supabase's SQL is listed in
:data:`REWRITES` (and in the README); :func:`_apply_rewrites` fails if one of
them no longer matches, so nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backupkit.pg.embedded import temporary_server

SQL_DIR = Path(__file__).resolve().parent / "supabase" / "sql"
PLATFORM_TEMPLATE = "supabase_platform_template"
APP_TEMPLATE = "supabase_app_template"
#: Login roles the fixture gives the server's password (Supabase's postinit sets theirs).
LOGIN_ROLES = (
    "postgres",
    "supabase_auth_admin",
    "supabase_storage_admin",
    "authenticator",
    "supabase_replication_admin",
    "supabase_read_only_user",
    "supabase_realtime_admin",
)


@dataclass(frozen=True)
class Rewrite:
    """One literal edit of a vendored file before it is run."""

    file: str  # relative to SQL_DIR
    old: str
    new: str
    why: str


_UUID_OSSP_STANDIN = (
    "-- [backupkit fixture] uuid-ossp is not in the embedded server: minimal stand-in\n"
    "create or replace function extensions.uuid_generate_v4() returns uuid\n"
    "  language sql volatile parallel safe as 'select pg_catalog.gen_random_uuid()';"
)

#: Every statement of Supabase's SQL that the loader skips or rewrites, and why.
REWRITES: tuple[Rewrite, ...] = (
    Rewrite(
        "postgres/init-scripts/00000000000000-initial-schema.sql",
        'create extension if not exists "uuid-ossp"      with schema extensions;',
        _UUID_OSSP_STANDIN,
        "uuid-ossp is not shipped with the embedded server; storage's init script uses "
        "extensions.uuid_generate_v4() as the default of storage.objects.id (storage "
        "migration 0019 later switches it to gen_random_uuid()), so a SQL stand-in "
        "function with the same name is created instead of the extension",
    ),
    Rewrite(
        "postgres/init-scripts/00000000000000-initial-schema.sql",
        "create extension if not exists pgcrypto         with schema extensions;",
        "-- [backupkit fixture] skipped: create extension pgcrypto (not in the embedded server)",
        "pgcrypto is not shipped with the embedded server and nothing in the vendored "
        "SQL calls it (GoTrue and storage use core gen_random_uuid())",
    ),
    Rewrite(
        "postgres/init-scripts/00000000000000-initial-schema.sql",
        "create extension if not exists pgjwt            with schema extensions;",
        "-- [backupkit fixture] skipped: create extension pgjwt (not in the embedded server)",
        "pgjwt is not shipped with the embedded server (newer supabase/postgres no longer creates it either)",
    ),
    Rewrite(
        "postgres/migrations/20230529180330_alter_api_roles_for_inherit.sql",
        "GRANT pgsodium_keyholder to service_role;",
        "-- [backupkit fixture] skipped: GRANT pgsodium_keyholder to service_role;",
        "the role pgsodium_keyholder comes from the pgsodium extension, which the "
        "embedded server lacks (migration 20221207154255 creates pgsodium only if "
        "available, this one assumes it)",
    ),
)

#: ``... ON DATABASE postgres ...``: rewritten to the database being built and replayed
#: on every project database (a template's database ACL is not copied).
_DB_STATEMENT = re.compile(
    r"^[ \t]*(grant|revoke)\b[^;]*\bon\s+database\s+postgres\b[^;]*;", re.IGNORECASE | re.MULTILINE
)
_GOTRUE_NAMESPACE = re.compile(r'\{\{\s*index\s+\.Options\s+"Namespace"\s*\}\}')
_STORAGE_FILE = re.compile(r"^(-?\d+)[-_]?(.*)\.(sql)$", re.IGNORECASE)
#: postgres-migrations' own bootstrap migration (id 0), hashed as it hashes it.
_PGMIG_INITIAL = """CREATE TABLE IF NOT EXISTS migrations (
  id integer PRIMARY KEY,
  name varchar(100) UNIQUE NOT NULL,
  hash varchar(40) NOT NULL, -- sha1 hex encoded hash of the file name and contents, to ensure it hasn't been altered since applying the migration
  executed_at timestamp DEFAULT current_timestamp
);
"""


def _apply_rewrites(rel: str, text: str) -> str:
    for rw in REWRITES:
        if rw.file != rel:
            continue
        if text.count(rw.old) != 1:
            raise AssertionError(f"rewrite for {rel} no longer matches exactly once: {rw.old!r}")
        text = text.replace(rw.old, rw.new)
    return text


def _dbmate_up(text: str) -> str:
    """The ``-- migrate:up`` part of a dbmate file."""
    return text.split("-- migrate:down", 1)[0]


def _only_comments(text: str) -> bool:
    return not re.sub(r"--[^\n]*", "", text).strip()


# ----------------------------------------------------------------------------------------
# The "app on top": what a Supabase user runs as postgres (SQL editor / migrations).
# ----------------------------------------------------------------------------------------
APP_SQL = r"""
create extension if not exists citext with schema extensions;
create extension if not exists hstore with schema extensions;

create table public.profiles (
  id uuid not null primary key references auth.users on delete cascade,
  username extensions.citext unique,
  full_name text,
  avatar_url text,
  attrs extensions.hstore,
  updated_at timestamptz default now(),
  constraint username_length check (char_length(username) >= 3)
);
comment on table public.profiles is 'Public profile for each auth user.';
alter table public.profiles enable row level security;

create policy "Public profiles are viewable by everyone." on public.profiles
  for select to anon, authenticated using (true);
create policy "Users can insert their own profile." on public.profiles
  for insert to authenticated with check ((select auth.uid()) = id);
create policy "Users can update own profile." on public.profiles
  for update to authenticated using ((select auth.uid()) = id);

create function public.handle_new_user()
returns trigger
language plpgsql
security definer set search_path = ''
as $$
begin
  insert into public.profiles (id, username, full_name, avatar_url)
  values (new.id,
          new.raw_user_meta_data ->> 'username',
          new.raw_user_meta_data ->> 'full_name',
          new.raw_user_meta_data ->> 'avatar_url');
  return new;
end;
$$;

create trigger on_auth_user_created
  after insert on auth.users
  for each row execute procedure public.handle_new_user();

create view public.profile_names with (security_invoker = on) as
  select id, username from public.profiles;

create table public.messages (
  id bigint generated by default as identity primary key,
  profile_id uuid not null references public.profiles (id) on delete cascade,
  body text not null,
  tags extensions.hstore,
  inserted_at timestamptz not null default now()
);
alter table public.messages enable row level security;
create policy "Authenticated users read messages." on public.messages
  for select to authenticated using (true);
create policy "Users post as themselves." on public.messages
  for insert to authenticated with check ((select auth.uid()) = profile_id);

alter publication supabase_realtime add table public.messages;
create publication app_pub for table public.profiles (id, username)
  where (full_name is not null) with (publish = 'insert');

-- database-wide default privilege (no IN SCHEMA), granted by postgres
alter default privileges grant select on sequences to authenticated;

-- a large object with a comment (COMMENT ON LARGE OBJECT needs the oid: see _build_app)
select lo_from_bytea(0, convert_to('backupkit fixture large object', 'UTF8'));
"""

#: supautils' ``policy_grants`` lets ``postgres`` create policies on storage.objects, which
#: it does not own; without supautils we run these as supabase_admin (policies have no owner).
APP_POLICY_GRANTS_SQL = r"""
create policy "Avatar images are publicly accessible." on storage.objects
  for select using (bucket_id = 'avatars');
create policy "Anyone can upload an avatar." on storage.objects
  for insert with check (bucket_id = 'avatars');
"""

APP_DATA_SQL = r"""
insert into storage.buckets (id, name, public) values ('avatars', 'avatars', true);

insert into auth.users (instance_id, id, aud, role, email, encrypted_password,
                        email_confirmed_at, raw_app_meta_data, raw_user_meta_data,
                        created_at, updated_at)
select '00000000-0000-0000-0000-000000000000', u.id, 'authenticated', 'authenticated',
       u.email, '$2a$10$abcdefghijklmnopqrstuu5Qx1vKqFzZ3Y3m7oR3Jq5Cz3T6d9ZKa', now(),
       '{"provider": "email", "providers": ["email"]}',
       jsonb_build_object('username', u.username, 'full_name', u.full_name), now(), now()
from (values ('11111111-1111-1111-1111-111111111111'::uuid, 'alice@example.com', 'alice', 'Alice A.'),
             ('22222222-2222-2222-2222-222222222222'::uuid, 'bob@example.com', 'bob', 'Bob B.'),
             ('33333333-3333-3333-3333-333333333333'::uuid, 'carol@example.com', 'Carol', 'Carol C.'))
     as u(id, email, username, full_name);

insert into auth.identities (provider_id, user_id, identity_data, provider,
                             last_sign_in_at, created_at, updated_at)
select u.id::text, u.id, jsonb_build_object('sub', u.id::text, 'email', u.email), 'email',
       now(), now(), now()
from auth.users u;

update public.profiles set attrs = 'theme=>dark, lang=>en' where username = 'alice';

insert into public.messages (profile_id, body, tags)
select p.id, 'hello from ' || p.username, hstore('lang', 'en')
from public.profiles p;
insert into public.messages (profile_id, body)
values ('11111111-1111-1111-1111-111111111111', 'second message');

insert into storage.objects (bucket_id, name, owner, owner_id, metadata)
values ('avatars', 'alice/avatar.png', '11111111-1111-1111-1111-111111111111',
        '11111111-1111-1111-1111-111111111111', '{"size": 1024, "mimetype": "image/png"}'),
       ('avatars', 'bob/avatar.jpg', '22222222-2222-2222-2222-222222222222',
        '22222222-2222-2222-2222-222222222222', '{"size": 2048, "mimetype": "image/jpeg"}');
"""


def _run(dsn: str, text: str, *, autocommit: bool = True) -> None:
    if _only_comments(text):
        return
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        conn.execute(text)


class SupabasePlatform:
    """A dedicated server holding the Supabase platform and app templates."""

    def __init__(self) -> None:
        self.server = temporary_server(superuser="supabase_admin")
        #: Database-level statements (``{db}`` for the name) replayed on each project.
        self.database_statements: list[str] = []
        self.created: list[str] = []
        self._n = itertools.count()
        self.build_seconds: dict[str, float] = {}

    # -- connection strings ------------------------------------------------------------
    @property
    def password(self) -> str:
        return self.server.password

    def admin(self, dsn: str) -> str:
        """The same database, as supabase_admin (the cluster's superuser)."""
        return self.as_role(dsn, "supabase_admin")

    def as_role(self, dsn: str, role: str) -> str:
        return make_conninfo(dsn, user=role, password=self.password)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> SupabasePlatform:
        t0 = time.monotonic()
        self.server.start()
        self._build_platform()
        t1 = time.monotonic()
        self._build_app()
        self.build_seconds = {"platform": t1 - t0, "app": time.monotonic() - t1}
        return self

    def stop(self) -> None:
        self.server.stop()

    # -- project databases -------------------------------------------------------------
    def new_project(self) -> str:
        """DSN (as postgres) of a fresh database that looks like a new Supabase project."""
        return self._clone(PLATFORM_TEMPLATE, "sb_new")

    def app_project(self) -> str:
        """DSN (as postgres) of a fresh project with the app schema and its data."""
        return self._clone(APP_TEMPLATE, "sb_app")

    def drop(self, dsn: str) -> None:
        name = conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _clone(self, template: str, prefix: str, *, track: bool = True, name: str | None = None) -> str:
        name = name or f"{prefix}_{next(self._n)}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER postgres").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        self._replay_database_statements(name)
        if track:
            self.created.append(name)
        return self.server.dsn(name, user="postgres")

    def _replay_database_statements(self, name: str) -> None:
        with psycopg.connect(self.server.dsn(name), autocommit=True) as conn:
            for stmt in self.database_statements:
                conn.execute(stmt.replace("{db}", sql.Identifier(name).as_string(conn)))

    # -- building ------------------------------------------------------------------------
    def _prepare(self, rel: str, db: str) -> str:
        """File text with REWRITES applied and database-level statements retargeted."""
        text = _apply_rewrites(rel, (SQL_DIR / rel).read_text())

        def retarget(m: re.Match) -> str:
            stmt = re.sub(r"(\bon\s+database\s+)postgres\b", r"\g<1>{db}", m.group(0), flags=re.I)
            self.database_statements.append(stmt.strip())
            return stmt.replace("{db}", db)

        return _DB_STATEMENT.sub(retarget, text)

    def _build_platform(self) -> None:
        srv, db, pw = self.server, PLATFORM_TEMPLATE, self.server.password
        with psycopg.connect(srv.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
            # migrate.sh: "create role postgres superuser login password ...;
            #              alter database postgres owner to postgres"
            conn.execute(sql.SQL("CREATE ROLE postgres SUPERUSER LOGIN PASSWORD {}").format(sql.Literal(pw)))
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(sql.Identifier(db)))
        # migrate.sh: init scripts as postgres (still a superuser), in file-name order.
        for path in sorted((SQL_DIR / "postgres" / "init-scripts").glob("*.sql")):
            rel = path.relative_to(SQL_DIR).as_posix()
            _run(srv.dsn(db, user="postgres"), _dbmate_up(self._prepare(rel, db)))
        # migrate.sh then sets supabase_admin's password; the post-migration
        # /etc/postgresql.schema.sql sets the other roles'.  One password for all here.
        with psycopg.connect(srv.dsn(db), autocommit=True) as conn:
            for role in LOGIN_ROLES:
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(pw)))
        # migrate.sh: migrations as supabase_admin (this demotes postgres).
        for path in sorted((SQL_DIR / "postgres" / "migrations").glob("*.sql")):
            rel = path.relative_to(SQL_DIR).as_posix()
            _run(srv.dsn(db), _dbmate_up(self._prepare(rel, db)))
        # supautils lets the non-superuser postgres set session_replication_role.
        _run(srv.dsn(db), "GRANT SET ON PARAMETER session_replication_role TO postgres")
        self._run_gotrue(srv.dsn(db, user="supabase_auth_admin"))
        self._run_storage(srv.dsn(db, user="supabase_storage_admin"))

    def _run_gotrue(self, dsn: str) -> None:
        """GoTrue's ``migrate``: pop runs each *.up.sql (templated) in a transaction and
        records its version in schema_migrations (auth, via the role's search_path)."""
        files = sorted((SQL_DIR / "auth").glob("*.up.sql"))
        with psycopg.connect(dsn, application_name="auth_migrations") as conn:
            applied = {r[0] for r in conn.execute("select version from schema_migrations")}
            conn.commit()
            for path in files:
                version = path.name.split("_", 1)[0]
                if version in applied:
                    continue
                text = _GOTRUE_NAMESPACE.sub("auth", path.read_text())
                with conn.transaction():
                    if not _only_comments(text):
                        conn.execute(text)
                    conn.execute("insert into schema_migrations (version) values (%s)", (version,))

    def _run_storage(self, dsn: str) -> None:
        """storage-api's runMigrationsOnTenant: postgres-migrations over migrations/tenant,
        search_path storage,public,extensions, the storage.* settings storage-api sets."""
        migrations = [(0, "create-migrations-table", "0_create-migrations-table.sql", _PGMIG_INITIAL)]
        for path in (SQL_DIR / "storage").glob("*.sql"):
            m = _STORAGE_FILE.match(path.name)
            migrations.append((int(m.group(1)), m.group(2) or path.name, path.name, path.read_text()))
        migrations.sort(key=lambda m: m[0])
        search_path = "storage,public,extensions"
        with psycopg.connect(dsn, autocommit=True, options=f"-c search_path={search_path}") as conn:
            conn.execute("SET statement_timeout TO '12h'")
            conn.execute(f"SET search_path TO {search_path}")
            # Defaults of storage-api's config (DB_INSTALL_ROLES unset, single tenant, ...).
            conn.execute("""SELECT
              set_config('storage.install_roles', 'false', false),
              set_config('storage.multitenant', 'false', false),
              set_config('storage.anon_role', 'anon', false),
              set_config('storage.authenticated_role', 'authenticated', false),
              set_config('storage.service_role', 'service_role', false),
              set_config('storage.super_user', 'postgres', false),
              set_config('storage.iceberg_default_shard', '', false),
              set_config('storage.iceberg_shards', '{}', false),
              set_config('storage.vector_bucket_provider', 's3', false)""")
            done = {r[0] for r in conn.execute("select id from migrations")}
            for mid, name, filename, text in migrations:
                if mid in done:
                    continue
                digest = hashlib.sha1((filename + text).encode()).hexdigest()
                run = "SELECT 1;" if "-- postgres-migrations ignore" in text else text
                record = ("INSERT INTO migrations (id, name, hash) VALUES (%s, %s, %s)", (mid, name, digest))
                if "-- postgres-migrations disable-transaction" in run:
                    conn.execute(run)
                    conn.execute(*record)
                else:
                    with conn.transaction():
                        conn.execute(run)
                        conn.execute(*record)

    def _build_app(self) -> None:
        dsn = self._clone(PLATFORM_TEMPLATE, APP_TEMPLATE, track=False, name=APP_TEMPLATE)
        with psycopg.connect(dsn, autocommit=True) as conn:  # as postgres
            conn.execute(APP_SQL)
            loid = conn.execute("select max(oid) from pg_largeobject_metadata").fetchone()[0]
            conn.execute(
                sql.SQL("COMMENT ON LARGE OBJECT {} IS {}").format(
                    sql.Literal(loid), sql.Literal("avatar placeholder blob")
                )
            )
        _run(self.admin(dsn), APP_POLICY_GRANTS_SQL)
        _run(dsn, APP_DATA_SQL)


@contextlib.contextmanager
def supautils_policy_grants(project, dsn: str):
    """What supautils' ``policy_grants`` gives ``postgres`` on Supabase: creating policies on
    ``storage.objects``, which it does not own.  Plain PostgreSQL has no such setting, so for
    the restore's duration ``postgres`` inherits the table owner's rights instead."""
    with psycopg.connect(project.admin(dsn), autocommit=True) as conn:
        conn.execute("GRANT supabase_storage_admin TO postgres WITH INHERIT TRUE, SET FALSE")
    try:
        yield
    finally:
        with psycopg.connect(project.admin(dsn), autocommit=True) as conn:
            conn.execute("REVOKE supabase_storage_admin FROM postgres")


@pytest.fixture(scope="session")
def supabase():
    """Session-wide Supabase-shaped server; see the module docstring."""
    platform = SupabasePlatform().start()
    try:
        yield platform
    finally:
        for name in platform.created:
            platform.drop(platform.server.dsn(name))
        platform.stop()


class ProjectFactory:
    """``new_project()`` / ``app_project()`` whose databases are dropped after the test."""

    def __init__(self, platform: SupabasePlatform):
        self.platform = platform
        self.made: list[str] = []

    def new_project(self) -> str:
        dsn = self.platform.new_project()
        self.made.append(dsn)
        return dsn

    def app_project(self) -> str:
        dsn = self.platform.app_project()
        self.made.append(dsn)
        return dsn

    def admin(self, dsn: str) -> str:
        return self.platform.admin(dsn)

    def as_role(self, dsn: str, role: str) -> str:
        return self.platform.as_role(dsn, role)

    @property
    def password(self) -> str:
        return self.platform.password


@pytest.fixture
def supabase_project(supabase):
    """Per-test factory over ``supabase``: its databases are dropped when the test ends."""
    factory = ProjectFactory(supabase)
    yield factory
    for dsn in factory.made:
        supabase.drop(dsn)
        name = conninfo_to_dict(dsn)["dbname"]
        if name in supabase.created:
            supabase.created.remove(name)
