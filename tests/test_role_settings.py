"""The roles' own settings (``ALTER ROLE ... SET``): recorded by backup, compared after a restore.

Supabase's platform sets ``statement_timeout`` for ``anon`` and ``authenticated``; users raise
it, or add their own settings for RLS functions.  No dump carries them into a new project
(``snapshot/format_doc``), so the manifest records them (never a secret's value) and
``recovery.settings`` names what the target lacks, with the statement that brings it back.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import backupkit
from backupkit.pg.database_objects import WITHHELD
from backupkit.recovery.settings import differences, target_settings
from backupkit.snapshot import manifest as mf

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters"
ODD_VALUE = """it's "quoted" \\ and; done"""


@pytest.fixture
def project(pg_server):
    """A source and a target database and Supabase-like roles (unique names: roles are cluster-wide),
    dropped after the test: the databases first (their settings and grants go with them), then the roles."""
    tag = uuid.uuid4().hex[:6]
    roles = {
        "anon": f"bk_rs_anon_{tag}",
        "authenticated": f"bk_rs_authenticated_{tag}",
        "authenticator": f"bk_rs_authenticator_{tag}",
        "odd": f"bk rs Odd Role {tag}",  # needs quoting
        "quoted": f'bk rs "quoted", Role {tag}',
    }
    source, target = pg_server.createdb("rs_src"), pg_server.createdb("rs_tgt")
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        for name in roles.values():
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    try:
        yield source, target, roles
    finally:
        pg_server.dropdb(source)
        pg_server.dropdb(target)
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            for name in roles.values():
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _run(dsn: str, query: str, *args: object) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(query).format(*args))


def _setup_source(source: str, roles: dict[str, str]) -> None:
    """Supabase's platform settings, a user's changes, secrets, and a table that names the roles."""
    r = {k: sql.Identifier(v) for k, v in roles.items()}
    db = sql.Identifier(conninfo_to_dict(source)["dbname"])
    # The platform's (tests/supabase/sql: initial-schema and the authenticator migrations).
    _run(source, "ALTER ROLE {} SET statement_timeout = '3s'", r["anon"])
    _run(source, "ALTER ROLE {} SET statement_timeout = '8s'", r["authenticated"])
    _run(source, "ALTER ROLE {} SET lock_timeout TO '8s'", r["authenticator"])
    # The user's: a longer timeout for heavy queries, a setting read by RLS functions (this
    # database only), a search_path (a list setting), and secrets (by name, and by value).
    _run(source, "ALTER ROLE {} SET statement_timeout = '60s'", r["authenticated"])
    _run(source, "ALTER ROLE {} IN DATABASE {} SET app.tenant = 'acme'", r["authenticated"], db)
    _run(source, """ALTER ROLE {} SET search_path = "$user", public, extensions""", r["authenticated"])
    _run(source, "ALTER ROLE {} SET pgrst.jwt_secret = {}", r["anon"], sql.Literal(JWT_SECRET))
    _run(source, "ALTER ROLE {} SET app.service_jwt = {}", r["anon"], sql.Literal(JWT))
    _run(source, "ALTER ROLE {} SET app.greeting = {}", r["odd"], sql.Literal(ODD_VALUE))
    _run(
        source,
        "CREATE TABLE public.notes (id int PRIMARY KEY, body text); GRANT SELECT ON public.notes TO {}, {}, {}",
        r["anon"],
        r["authenticated"],
        r["odd"],
    )


def _backup(source: str, tmp_path) -> dict:
    res = backupkit.backup(source, tmp_path / "backups")
    raw = (res.path / mf.MANIFEST).read_text()
    assert JWT_SECRET not in raw and JWT not in raw  # nowhere in the manifest
    return json.loads(raw)


def test_backup_records_the_roles_settings_but_no_secret(project, tmp_path):
    source, _, roles = project
    _setup_source(source, roles)
    manifest = _backup(source, tmp_path)
    settings = manifest["role_settings"]
    assert settings["all_databases"][roles["authenticated"]] == {
        "statement_timeout": "60s",
        "search_path": '"$user", public, extensions',
    }
    assert settings["all_databases"][roles["anon"]] == {
        "statement_timeout": "3s",
        "pgrst.jwt_secret": WITHHELD,  # by its name
        "app.service_jwt": WITHHELD,  # by its value: a JWT
    }
    assert settings["all_databases"][roles["odd"]] == {"app.greeting": ODD_VALUE}
    assert settings["this_database"] == {roles["authenticated"]: {"app.tenant": "acme"}}
    # Only the roles the snapshot names: the authenticator has no grant here.
    assert roles["authenticator"] not in settings["all_databases"]
    assert {r["name"] for r in manifest["roles"]} >= {roles["anon"], roles["authenticated"], roles["odd"]}
    # The snapshot reads back, and one written before role_settings existed still does.
    assert mf.read(tmp_path / "backups" / manifest["id"])["role_settings"] == settings
    older = {k: v for k, v in manifest.items() if k != "role_settings"}
    assert mf.validate(older) == [] and differences(older, {}, "postgres") == []
    assert mf.validate({**manifest, "role_settings": {"all_databases": {"anon": {"x": 1}}}})


def test_restore_target_that_differs_gets_notes_with_the_statements(project, tmp_path):
    """A restore into a new project: the roles have the platform's settings there, and the
    database-only setting is not carried; the notes say what differs and how to bring it back."""
    source, target, roles = project
    _setup_source(source, roles)
    manifest = _backup(source, tmp_path)
    target_db = conninfo_to_dict(target)["dbname"]
    # The restore itself does not carry them: the target database gets none of this database's.
    backupkit.restore(tmp_path / "backups" / manifest["id"], target)
    with psycopg.connect(target) as conn:
        assert target_settings(conn, manifest)["this_database"] == {}
    # The new project's platform defaults: authenticated back at 8s, no search_path, no secret;
    # and a database-only timeout for anon there that the source never had.
    r = {k: sql.Identifier(v) for k, v in roles.items()}
    _run(target, "ALTER ROLE {} SET statement_timeout = '8s'", r["authenticated"])
    _run(target, "ALTER ROLE {} RESET search_path", r["authenticated"])
    _run(target, "ALTER ROLE {} RESET pgrst.jwt_secret", r["anon"])
    _run(target, "ALTER ROLE {} IN DATABASE {} SET statement_timeout = '1s'", r["anon"], sql.Identifier(target_db))
    _run(target, "ALTER ROLE {} SET app.greeting = 'hello'", r["odd"])

    with psycopg.connect(target) as conn:
        notes = differences(manifest, target_settings(conn, manifest), conn.info.dbname)
    auth, anon, odd = (sql.Identifier(roles[k]).as_string() for k in ("authenticated", "anon", "odd"))
    tdb = sql.Identifier(target_db).as_string()
    assert notes == [  # by role ('bk rs Odd...' sorts first), then all databases, this database, by name
        f"role {roles['odd']}: setting app.greeting for every database is {json.dumps(ODD_VALUE)} in the snapshot, "
        f'"hello" here; to bring it back: ALTER ROLE {odd} SET "app.greeting" TO '
        + sql.Literal(ODD_VALUE).as_string()
        + ";",
        f"role {roles['anon']}: setting pgrst.jwt_secret for every database is set in the snapshot (its value "
        f"{WITHHELD}), not set here; to bring it back, with its value filled in: "
        f"ALTER ROLE {anon} SET \"pgrst.jwt_secret\" TO '...';",
        f'role {roles["anon"]}: setting statement_timeout in this database is not set in the snapshot, "1s" here; '
        f'to bring it back: ALTER ROLE {anon} IN DATABASE {tdb} RESET "statement_timeout";',
        f'role {roles["authenticated"]}: setting search_path for every database is "\\"$user\\", public, '
        f'extensions" in the snapshot, not set here; to bring it back: '
        f"ALTER ROLE {auth} SET \"search_path\" TO '$user', 'public', 'extensions';",
        f'role {roles["authenticated"]}: setting statement_timeout for every database is "60s" in the snapshot, '
        f'"8s" here; to bring it back: ALTER ROLE {auth} SET "statement_timeout" TO \'60s\';',
        f'role {roles["authenticated"]}: setting app.tenant in this database is "acme" in the snapshot, not set '
        f"here; to bring it back: ALTER ROLE {auth} IN DATABASE {tdb} SET \"app.tenant\" TO 'acme';",
    ]
    assert not any(JWT_SECRET in n or JWT in n for n in notes)
    # Nothing was applied; the statements (all but the secret's, whose value is the user's to
    # give) are exact: run as they are, they leave nothing to say but the secret.
    with psycopg.connect(target, autocommit=True) as conn:
        assert target_settings(conn, manifest)["this_database"] == {roles["anon"]: {"statement_timeout": "1s"}}
        for note in notes:
            if WITHHELD not in note:
                conn.execute(note.split("to bring it back: ", 1)[1].encode())
        assert differences(manifest, target_settings(conn, manifest), conn.info.dbname) == notes[1:2]


@pytest.mark.parametrize(
    ("name", "value", "stored"),
    [
        ("app.greeting", sql.Literal(ODD_VALUE), ODD_VALUE),
        ("app.MixedCase", sql.Literal("line one\nline 'two'"), "line one\nline 'two'"),
        (
            "search_path",
            sql.SQL('"$user", public, "We""ird Schema", extensions'),
            '"$user", public, "We""ird Schema", extensions',
        ),
        ("local_preload_libraries", sql.SQL('"odd, lib", other'), '"odd, lib", other'),
    ],
)
def test_statements_quote_odd_roles_names_and_values(project, name, value, stored):
    """Run against a real server, a note's statement gives the role back exactly the setting it had."""
    source, _, roles = project
    role = roles["quoted"]
    db = conninfo_to_dict(source)["dbname"]
    _run(source, "ALTER ROLE {} IN DATABASE {} SET {} TO {}", *map(sql.Identifier, (role, db, name)), value)
    settings = "SELECT setconfig FROM pg_db_role_setting WHERE setrole = %s::regrole"
    with psycopg.connect(source, autocommit=True) as conn:
        manifest = {"roles": [{"name": role}]}
        manifest["role_settings"] = target_settings(conn, manifest)
        assert manifest["role_settings"]["this_database"] == {role: {name: stored}}
        before = conn.execute(settings, (sql.Identifier(role).as_string(),)).fetchall()
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(*map(sql.Identifier, (role, db))))
        notes = differences(manifest, target_settings(conn, manifest), db)
        assert len(notes) == 1 and f"setting {name} in this database is {json.dumps(stored)}" in notes[0]
        conn.execute(notes[0].split("to bring it back: ", 1)[1].encode())
        assert conn.execute(settings, (sql.Identifier(role).as_string(),)).fetchall() == before
        assert differences(manifest, target_settings(conn, manifest), db) == []


def test_supabase_project_raised_timeout_and_own_setting_come_back_as_notes(supabase_project, tmp_path):
    """Supabase's own roles: the user raised authenticated's statement_timeout and set an app
    setting for RLS functions in the database; a new project has the platform's 8s and no setting."""
    source = supabase_project.app_project()
    db = conninfo_to_dict(source)["dbname"]
    admin = supabase_project.admin(source)
    try:  # roles are cluster-wide: the session's other projects must get the platform's back
        _run(admin, "ALTER ROLE authenticated SET statement_timeout = '60s'")
        _run(admin, "ALTER ROLE authenticated IN DATABASE {} SET app.tenant = 'acme'", sql.Identifier(db))
        manifest = backupkit.backup(source, tmp_path / "backups", schemas=["public"]).manifest  # as postgres
    finally:
        _run(admin, "ALTER ROLE authenticated SET statement_timeout = '8s'")
    assert manifest["role_settings"]["all_databases"]["anon"] == {"statement_timeout": "3s"}
    assert manifest["role_settings"]["all_databases"]["authenticated"] == {"statement_timeout": "60s"}
    assert manifest["role_settings"]["this_database"] == {"authenticated": {"app.tenant": "acme"}}

    target = supabase_project.new_project()
    with psycopg.connect(target) as conn:  # as postgres, not a superuser
        notes = differences(manifest, target_settings(conn, manifest), conn.info.dbname)
    tdb = sql.Identifier(conninfo_to_dict(target)["dbname"]).as_string()
    assert notes == [
        'role authenticated: setting statement_timeout for every database is "60s" in the snapshot, "8s" here; '
        """to bring it back: ALTER ROLE "authenticated" SET "statement_timeout" TO '60s';""",
        'role authenticated: setting app.tenant in this database is "acme" in the snapshot, not set here; '
        f"""to bring it back: ALTER ROLE "authenticated" IN DATABASE {tdb} SET "app.tenant" TO 'acme';""",
    ]


def test_a_whole_restore_names_the_settings_it_does_not_bring_back(project, tmp_path):
    """What a user sees: `backupkit restore` (dry run and real run) of a whole snapshot says which
    role settings differ in the target and how to bring them back; a table restore does not."""
    from helpers import run_cli

    source, target, roles = project
    _setup_source(source, roles)
    manifest = _backup(source, tmp_path)
    _run(target, "ALTER ROLE {} SET statement_timeout = '8s'", sql.Identifier(roles["authenticated"]))
    snapshot = tmp_path / "backups" / manifest["id"]
    wanted = (
        f'note: role {roles["authenticated"]}: setting statement_timeout for every database is "60s" in the '
        f'snapshot, "8s" here; to bring it back: ALTER ROLE {sql.Identifier(roles["authenticated"]).as_string()} '
        "SET \"statement_timeout\" TO '60s';"
    )

    dry = run_cli("restore", snapshot, "--dsn", target, "--dry-run")
    one_table = run_cli("restore", snapshot, "--dsn", target, "--table", "public.notes", "--dry-run")
    real = run_cli("restore", snapshot, "--dsn", target)

    assert dry.returncode == 0 and wanted in dry.stdout, dry.stdout + dry.stderr
    assert one_table.returncode == 0 and "ALTER ROLE" not in one_table.stdout, one_table.stdout
    assert real.returncode == 0 and wanted in real.stdout, real.stdout + real.stderr
    assert JWT_SECRET not in dry.stdout + real.stdout


def test_a_role_whose_name_holds_quotes_and_a_comma_keeps_its_grants(project, tmp_path):
    """Grantee names were split on every comma and stripped of their quotes: a role named
    `bk rs "quoted", Role` was not in the snapshot's roles, and its GRANT was dropped on restore
    as one "the target lacks", though the target had the role."""
    source, target, roles = project
    odd = sql.Identifier(roles["quoted"])
    _run(source, "CREATE TABLE public.notes (id int PRIMARY KEY); GRANT SELECT, INSERT ON public.notes TO {}", odd)
    manifest = _backup(source, tmp_path)
    assert roles["quoted"] in {r["name"] for r in manifest["roles"]}

    backupkit.restore(tmp_path / "backups" / manifest["id"], target)

    with psycopg.connect(target) as conn:
        granted = conn.execute(
            "SELECT has_table_privilege(%s, 'public.notes', 'SELECT'), has_table_privilege(%s, 'public.notes', 'INSERT')",
            (roles["quoted"], roles["quoted"]),
        ).fetchone()
    assert granted == (True, True)


def test_the_database_settings_are_recorded_and_named_after_a_whole_restore(project, tmp_path):
    """Supabase's docs set the project's time zone and time limit with ``ALTER DATABASE postgres
    SET``: nothing a restore runs carries them, so a restored project silently ran with the platform's UTC and
    limits.  The manifest records them (no secret's value); a whole restore names what differs
    in the target with the ``ALTER DATABASE`` that brings it back, and those statements are exact."""
    from helpers import run_cli

    source, target, _ = project
    src, tgt = (sql.Identifier(conninfo_to_dict(d)["dbname"]) for d in (source, target))
    _run(source, "ALTER DATABASE {} SET timezone TO 'America/New_York'", src)
    _run(source, "ALTER DATABASE {} SET statement_timeout = '60s'", src)
    _run(source, """ALTER DATABASE {} SET search_path = "$user", public, extensions""", src)
    _run(source, "ALTER DATABASE {} SET app.greeting = {}", src, sql.Literal(ODD_VALUE))
    _run(source, "ALTER DATABASE {} SET app.settings.jwt_secret = {}", src, sql.Literal(JWT_SECRET))
    _run(source, "CREATE TABLE public.events (id int PRIMARY KEY, at timestamptz)")
    _run(target, "ALTER DATABASE {} SET statement_timeout = '8s'", tgt)
    _run(target, "ALTER DATABASE {} SET app.only_here = 'x'", tgt)

    manifest = _backup(source, tmp_path)
    assert manifest["database_settings"] == {
        "TimeZone": "America/New_York",
        "statement_timeout": "60s",
        "search_path": '"$user", public, extensions',
        "app.greeting": ODD_VALUE,
        "app.settings.jwt_secret": WITHHELD,
    }
    assert mf.validate({**manifest, "database_settings": {"TimeZone": 1}})
    snapshot = tmp_path / "backups" / manifest["id"]

    dry = run_cli("restore", snapshot, "--dsn", target, "--dry-run")
    one_table = run_cli("restore", snapshot, "--dsn", target, "--table", "public.events", "--dry-run")
    real = run_cli("restore", snapshot, "--dsn", target)
    t = tgt.as_string()
    wanted = [
        f'note: database setting TimeZone is "America/New_York" in the snapshot, not set here; to bring it back: '
        f"ALTER DATABASE {t} SET \"TimeZone\" TO 'America/New_York';",
        f"note: database setting app.greeting is {json.dumps(ODD_VALUE)} in the snapshot, not set here; to bring "
        f'it back: ALTER DATABASE {t} SET "app.greeting" TO {sql.Literal(ODD_VALUE).as_string()};',
        f'note: database setting app.only_here is not set in the snapshot, "x" here; to bring it back: '
        f'ALTER DATABASE {t} RESET "app.only_here";',
        f"note: database setting app.settings.jwt_secret is set in the snapshot (its value {WITHHELD}), not set "
        f'here; to bring it back, with its value filled in: ALTER DATABASE {t} SET "app.settings.jwt_secret" '
        "TO '...';",
        f'note: database setting search_path is "\\"$user\\", public, extensions" in the snapshot, not set here; '
        f"to bring it back: ALTER DATABASE {t} SET \"search_path\" TO '$user', 'public', 'extensions';",
        f'note: database setting statement_timeout is "60s" in the snapshot, "8s" here; to bring it back: '
        f"ALTER DATABASE {t} SET \"statement_timeout\" TO '60s';",
    ]
    for run in (dry, real):
        assert run.returncode == 0, run.stdout + run.stderr
        assert [line.strip() for line in run.stdout.splitlines() if "database setting" in line] == wanted
        assert JWT_SECRET not in run.stdout + run.stderr
    assert one_table.returncode == 0 and "ALTER DATABASE" not in one_table.stdout, one_table.stdout

    # Nothing was applied; run as they are, the statements (all but the secret's, whose value
    # is the user's to give) give the target the source's settings: a new session sees its zone.
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SHOW timezone").fetchone()[0] != "America/New_York"
        for note in wanted:
            if WITHHELD not in note:
                conn.execute(note.split("to bring it back: ", 1)[1].encode())
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SHOW timezone").fetchone()[0] == "America/New_York"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "1min"
    again = run_cli("restore", snapshot, "--dsn", target, "--clean", "--dry-run")
    assert [line.strip() for line in again.stdout.splitlines() if "database setting" in line] == [wanted[3]]


def test_supabase_authenticator_timeout_and_project_time_zone_come_back_as_notes(supabase_project, tmp_path):
    """What Supabase's docs tell a user to run: ``alter role authenticator set statement_timeout``
    (the API's limit; no table names the authenticator) and ``alter database postgres set
    timezone``.  A backup as postgres records both; a new project is named each difference."""
    source = supabase_project.app_project()
    db = sql.Identifier(conninfo_to_dict(source)["dbname"])
    admin = supabase_project.admin(source)
    try:  # roles are cluster-wide: the session's other projects must get the platform's back
        _run(admin, "ALTER ROLE authenticator SET statement_timeout = '15s'")
        _run(admin, "ALTER DATABASE {} SET timezone TO 'America/New_York'", db)
        manifest = backupkit.backup(source, tmp_path / "backups", schemas=["public"]).manifest  # as postgres
    finally:  # the platform's (tests/supabase/sql: 20221028101028_set_authenticator_timeout)
        _run(admin, "ALTER ROLE authenticator SET statement_timeout = '8s'")
    assert manifest["role_settings"]["all_databases"]["authenticator"]["statement_timeout"] == "15s"
    assert "authenticator" not in {r["name"] for r in manifest["roles"]}  # recorded though no object names it
    assert manifest["database_settings"] == {"TimeZone": "America/New_York"}

    target = supabase_project.new_project()
    result = backupkit.restore(tmp_path / "backups" / manifest["id"], target, dry_run=True)  # as postgres
    tdb = sql.Identifier(conninfo_to_dict(target)["dbname"]).as_string()
    ours = [n for n in result.plan.notes if "authenticator" in n or "database setting" in n]
    assert ours == [
        'role authenticator: setting statement_timeout for every database is "15s" in the snapshot, "8s" here; '
        """to bring it back: ALTER ROLE "authenticator" SET "statement_timeout" TO '15s';""",
        'database setting TimeZone is "America/New_York" in the snapshot, not set here; to bring it back: '
        f"""ALTER DATABASE {tdb} SET "TimeZone" TO 'America/New_York';""",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("app.db_pass", "Xk9#mP2$vL5@nQ8!"),  # by its name (pass), and its value (a strong password)
        ("app.notify", "https://hooks.slack.com/services/T0000000/B0000000/XXXXXXXXXXXXXXXXXXXXXXXX"),
        ("app.slack", "xoxb-1234567890-abcdefghijkl"),
        ("app.settings.jwt", "my-shared-hmac-signing-string"),
        ("app.basic_auth", "admin:correcthorse"),
        ("app.upstream", "admin:correcthorse"),  # user:password, by its value
        ("app.stripe", "sk_live_51Habcdefghijklmnop"),
        ("app.github", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
        ("app.aws", "AKIAIOSFODNN7EXAMPLE"),
        ("app.random", "k3j4h5g6f7d8s9a0q1w2e3r4t5y6"),  # lower case and digits, 28 characters
    ],
)
def test_values_that_may_be_secrets_are_withheld(name, value):
    """Values Supabase users keep in `ALTER DATABASE ... SET app.*`: the manifest (never
    encrypted) and the restore's notes must not show them."""
    from backupkit.pg.database_objects import may_be_secret

    assert may_be_secret(name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TimeZone", "America/New_York"),
        ("TimeZone", "UTC+05:30"),
        ("statement_timeout", "60s"),
        ("search_path", '"$user", public, extensions'),
        ("session_preload_libraries", "supautils, safeupdate"),
        ("app.tenant", "acme"),
        ("app.api_url", "https://api.example.com"),
        ("log_min_duration_statement", "1000"),
    ],
)
def test_ordinary_settings_are_recorded(name, value):
    from backupkit.pg.database_objects import may_be_secret

    assert not may_be_secret(name, value)


def test_an_api_role_setting_the_source_did_not_have_is_named_too(supabase_project, tmp_path):
    """The authenticator is named by no object, so before, a source authenticator without
    settings was not recorded at all, and a new project's platform settings on it (its 8s
    timeout) went unnamed: the API then cut requests the old project let run."""
    source = supabase_project.app_project()
    admin = supabase_project.admin(source)
    with psycopg.connect(admin) as conn:
        platform = conn.execute(
            "SELECT unnest(setconfig) FROM pg_db_role_setting "
            "WHERE setrole = 'authenticator'::regrole AND setdatabase = 0 ORDER BY 1"
        ).fetchall()
    assert ("statement_timeout=8s",) in platform
    try:  # roles are cluster-wide: the session's other projects must get the platform's back
        _run(admin, "ALTER ROLE authenticator RESET ALL")
        manifest = backupkit.backup(source, tmp_path / "backups", schemas=["public"]).manifest  # as postgres
    finally:
        for (setting,) in platform:
            name, _, value = setting.partition("=")
            _run(admin, "ALTER ROLE authenticator SET {} TO {}", sql.Identifier(name), sql.Literal(value))
    assert manifest["role_settings"]["all_databases"]["authenticator"] == {}
    result = backupkit.restore(tmp_path / "backups" / manifest["id"], supabase_project.new_project(), dry_run=True)
    ours = [n for n in result.plan.notes if "authenticator" in n]
    assert len(ours) == len(platform)
    assert (
        'role authenticator: setting statement_timeout for every database is not set in the snapshot, "8s" here; '
        'to bring it back: ALTER ROLE "authenticator" RESET "statement_timeout";'
    ) in ours
