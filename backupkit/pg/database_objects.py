"""What a database holds outside its schemas, which a schema-filtered pg_dump leaves out.

``pg_dump --schema=...`` dumps no extensions, publications, database-wide
default privileges, large objects or event triggers.  A second pg_dump run in
the same exported snapshot, with every schema excluded, dumps exactly those
(``schema/database.dump``): their DDL comes from pg_dump, and the large objects'
data streams through it.  The catalog queries here only describe the same
objects in the manifest, for people, ``diff`` and the restore's checks: which
extensions the snapshot's own objects depend on, publication members, and the
roles a restore must find or make, with their own settings (``ALTER ROLE ... SET``), and
the database's own (``ALTER DATABASE ... SET``), which nothing a restore runs carries: a
role's settings for every database are global objects (``pg_dumpall --globals-only``), and
the database's, like a role's in this database only, are in the archives' ``DATABASE
PROPERTIES`` entry, which pg_restore renders only with ``--create``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from ..runtime.lifeline import dies_with_us
from .schema import unquote_ident
from .tools import find_tool, run_tool

_EXTENSIONS = """
SELECT e.extname AS name, e.extversion AS version, n.nspname AS schema
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname <> 'plpgsql' ORDER BY 1
"""

# Extensions that an object in the backed-up schemas depends on: a column of an
# extension type, a default calling an extension function, an index using its
# operator class, a view using its operators.  pg_identify_object names the
# dependent object's schema whatever catalog it lives in.
_REQUIRED = """
SELECT DISTINCT e.extname
  FROM pg_depend d
  JOIN pg_depend m ON m.classid = d.refclassid AND m.objid = d.refobjid AND m.deptype = 'e'
  JOIN pg_extension e ON e.oid = m.refobjid
  CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) o
 WHERE d.deptype IN ('n', 'a') AND o.schema = ANY(%(schemas)s)
   AND NOT EXISTS (SELECT 1 FROM pg_depend x
                    WHERE x.classid = d.classid AND x.objid = d.objid AND x.deptype = 'e')
UNION
SELECT e.extname
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_type t ON t.oid = a.atttypid AND t.typelem <> 0
  JOIN pg_depend m ON m.classid = 'pg_type'::regclass AND m.objid = t.typelem AND m.deptype = 'e'
  JOIN pg_extension e ON e.oid = m.refobjid
 WHERE n.nspname = ANY(%(schemas)s) AND a.attnum > 0 AND NOT a.attisdropped
"""

_PUBLICATIONS = """
SELECT p.pubname AS name, pg_get_userbyid(p.pubowner) AS owner, p.puballtables AS all_tables,
       array_remove(ARRAY[CASE WHEN p.pubinsert THEN 'insert' END, CASE WHEN p.pubupdate THEN 'update' END,
                          CASE WHEN p.pubdelete THEN 'delete' END, CASE WHEN p.pubtruncate THEN 'truncate' END],
                    NULL) AS publish,
       p.pubviaroot AS via_root,
       COALESCE((SELECT json_agg(json_build_object(
                    'schema', n.nspname, 'name', c.relname,
                    'columns', (SELECT json_agg(a.attname ORDER BY k.ord)
                                  FROM unnest(pr.prattrs) WITH ORDINALITY k(attnum, ord)
                                  JOIN pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = k.attnum),
                    'row_filter', pg_get_expr(pr.prqual, pr.prrelid)) ORDER BY n.nspname, c.relname)
                   FROM pg_publication_rel pr JOIN pg_class c ON c.oid = pr.prrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE pr.prpubid = p.oid), '[]') AS tables,
       COALESCE((SELECT json_agg(n.nspname ORDER BY n.nspname) FROM pg_publication_namespace pn
                   JOIN pg_namespace n ON n.oid = pn.pnnspid WHERE pn.pnpubid = p.oid), '[]') AS schemas
  FROM pg_publication p ORDER BY 1
"""

_DEFAULT_PRIVILEGES = """
SELECT pg_get_userbyid(d.defaclrole) AS role, n.nspname AS schema,
       CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
            WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas' ELSE d.defaclobjtype::text END AS object_type,
       d.defaclacl::text[] AS acl
  FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
 ORDER BY 1, 2 NULLS FIRST, 3
"""

_LARGE_OBJECTS = """
SELECT m.oid::bigint AS oid, pg_get_userbyid(m.lomowner) AS owner, m.lomacl::text[] AS acl
  FROM pg_largeobject_metadata m ORDER BY m.oid
"""

_ROLES = """
SELECT rolname AS name, rolsuper AS superuser, rolinherit AS inherit, rolcreaterole AS createrole,
       rolcreatedb AS createdb, rolcanlogin AS login, rolreplication AS replication,
       rolbypassrls AS bypassrls
  FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1
"""


def describe(conn: psycopg.Connection, schemas: list[str]) -> dict:
    """Manifest entries for the database-level objects, read in the backup's snapshot."""
    cur = conn.cursor(row_factory=dict_row)
    required = {r["extname"] for r in cur.execute(_REQUIRED, {"schemas": schemas}).fetchall()}
    extensions = [{**e, "required": e["name"] in required} for e in cur.execute(_EXTENSIONS).fetchall()]
    return {
        "extensions": extensions,
        "publications": cur.execute(_PUBLICATIONS).fetchall(),
        "default_privileges": cur.execute(_DEFAULT_PRIVILEGES).fetchall(),
        "large_objects": cur.execute(_LARGE_OBJECTS).fetchall(),
    }


_OWNER = re.compile(r"\bOWNER TO (\"(?:[^\"]|\"\")+\"|[^\s;]+);")
_FOR_ROLE = re.compile(r"^ALTER DEFAULT PRIVILEGES FOR ROLE (\"(?:[^\"]|\"\")+\"|[^\s;]+)", re.M)


def referenced_roles(script: str) -> set[str]:
    """Every role the SQL names as an owner, grantee, policy role or default-privilege role."""
    from ..recovery.scripts import referenced_roles as policy_and_grant_roles

    policies, grants = policy_and_grant_roles(script)
    owners = {unquote_ident(m) for m in _OWNER.findall(script)} | {unquote_ident(m) for m in _FOR_ROLE.findall(script)}
    return (policies | grants | owners) - {"PUBLIC", "public"}


def acl_roles(acls: list[list[str] | None]) -> set[str]:
    """Grantees and grantors named in aclitem texts (``grantee=privs/grantor``; "" is PUBLIC)."""
    names = set()
    for acl in acls:
        for item in acl or []:
            grantee, _, rest = item.rpartition("=")
            names |= {unquote_ident(n) for n in (grantee, rest.rpartition("/")[2]) if n}
    return names


def role_attributes(conn: psycopg.Connection, names: set[str]) -> list[dict]:
    """Name and attributes (never a password) of the given roles that exist; built-in pg_* roles left out."""
    names = {n for n in names if not n.startswith("pg_")}
    return conn.cursor(row_factory=dict_row).execute(_ROLES, (sorted(names),)).fetchall()


_ROLE_SETTINGS = """
SELECT r.rolname, s.setdatabase <> 0 AS this_database, c.setting
  FROM pg_catalog.pg_db_role_setting s
  JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
 CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
 WHERE r.rolname = ANY(%s)
   AND s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))
 ORDER BY 1, 2
"""

#: Supabase's API roles: PostgREST logs in as ``authenticator`` and switches to one of the
#: others.  Their settings are recorded even when the snapshot names none of them: Supabase's
#: docs raise the API's time limit with ``ALTER ROLE authenticator SET statement_timeout``.
API_ROLES = ("authenticator", "anon", "authenticated", "service_role")

#: What the manifest holds instead of a setting's value when the value may be a secret.
WITHHELD = "(not recorded: may be a secret)"

# A setting is withheld when its name says it holds a secret (PostgREST's pgrst.jwt_secret,
# app.settings.service_key, app.db_pass, a webhook, an API token), or its value looks like one:
# a JWT, a PEM block, a password in a connection string or URL, user:password, a URL with a
# long token in its path (a Slack webhook), a provider's token (Slack xoxb-, Stripe sk_live_,
# GitHub ghp_, AWS AKIA...), or a long random-looking string.  Withholding a harmless value
# costs only its note's value; recording a secret puts it in a manifest no key encrypts.
_SECRET_NAME = re.compile(r"pass|pwd|secret|key|token|credential|private|salt|jwt|auth|hook|dsn|conninfo|signing", re.I)
_SECRET_VALUE = re.compile(
    r"eyJ[\w-]+\.[\w-]+\.|-----BEGIN|(?i:password)\s*=|://[^/@\s]*:[^/@\s]*@"
    r"|^[^\s:/@]+:[^\s:/@]{6,}$"
    r"|://\S*[/?=]\S*[\w-]{16,}"
    r"|\b(?:xox[a-z]-|(?:sk|rk|pk)_(?:live|test)_|gh[pousr]_|github_pat_|glpat-"
    r"|AKIA[0-9A-Z]{12}|AIza[\w-]{20}|SG\.[\w-]{16})"
    r"|^(?=[\w+/=.-]{32,}$)(?=.*\d)(?=.*[a-z])(?=.*[A-Z])|^[0-9a-fA-F]{32,}$"
    r"|^(?=[\w+/=.-]{24,}$)(?=.*\d)(?=.*[a-z])"
    r"|^(?=\S{12,}$)(?=.*\d)(?=.*[a-z])(?=.*[A-Z])(?=.*[^\w])"
)


def may_be_secret(name: str, value: str) -> bool:
    """Whether a setting's name or value looks like it holds a secret (then its value is never recorded)."""
    return bool(_SECRET_NAME.search(name) or _SECRET_VALUE.search(value))


def role_settings(
    conn: psycopg.Connection, names: list[str] | set[str], *, always: Sequence[str] = ()
) -> dict[str, dict[str, dict[str, str]]]:
    """The given roles' own settings (``pg_db_role_setting``), as the manifest's ``role_settings``:
    ``{"all_databases": {role: {name: value}}, "this_database": {...}}``; a value that may be a
    secret (``may_be_secret``) is ``WITHHELD``.  The roles of ``always`` that exist are listed
    (``all_databases``) even with no settings: that they had none is worth saying too (a new
    Supabase project's ``authenticator`` has a ``statement_timeout``)."""
    out: dict[str, dict[str, dict[str, str]]] = {"all_databases": {}, "this_database": {}}
    if always:
        present = conn.execute("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)", (list(always),))
        for (role,) in present.fetchall():
            out["all_databases"][role] = {}
    for role, this_database, setting in conn.execute(_ROLE_SETTINGS, (sorted(names),)).fetchall():
        name, value = _setting(setting)
        out["this_database" if this_database else "all_databases"].setdefault(role, {})[name] = value
    return out


_DATABASE_SETTINGS = """
SELECT c.setting
  FROM pg_catalog.pg_db_role_setting s
 CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
 WHERE s.setrole = 0
   AND s.setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
"""


def database_settings(conn: psycopg.Connection) -> dict[str, str]:
    """The connected database's own settings (``ALTER DATABASE ... SET``: Supabase's documented
    way to change the project's ``timezone`` or ``statement_timeout``), as the manifest's
    ``database_settings``: ``{name: value}``, a value that may be a secret ``WITHHELD``."""
    return dict(_setting(setting) for (setting,) in conn.execute(_DATABASE_SETTINGS).fetchall())


def _setting(setting: str) -> tuple[str, str]:
    """``name=value`` as ``pg_db_role_setting`` holds it: (name, value, or ``WITHHELD``)."""
    name, _, value = setting.partition("=")
    return name, WITHHELD if may_be_secret(name, value) else value


def dump_database_objects(dsn: str, path: Path, *, snapshot: str) -> None:
    """pg_dump every schema excluded: extensions, publications, database-wide default
    privileges, large objects (with their data), event triggers; into the new file ``path``
    (``schema/database.dump`` of a snapshot being written, in scratch space)."""
    run_tool(
        find_tool("pg_dump"),
        ["--format=custom", f"--snapshot={snapshot}", "--no-sync", "--exclude-schema=*", "-b", f"--file={path}"],
        dsn,
        preexec_fn=dies_with_us(),
    )  # ends with this process, like the schema's pg_dump
