"""A snapshot taken from PostgreSQL 15 restores exactly into PostgreSQL 18.

Two sources: the Supabase-shaped demo, and the fidelity fixture (tests/fidelity.sql)
with what lives outside the tables (extensions, publications, large objects, default
privileges) and owners and grants other than the superuser's.  Both are compared through
``comparable``, which leaves out only what 15 and 18 legitimately record differently.

Needs Debian's postgresql-15 server (``/usr/lib/postgresql/15/bin``, or
``$BACKUPKIT_PG15_BIN``); ``.ci/run`` installs it and runs ``pytest -m crossversion``.
Deselected from the default run because a fresh machine has no PostgreSQL 15.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import psycopg
import pytest
from fingerprint import diff_fingerprints, fingerprint

import backupkit
from backupkit.demo.data import create_demo, mutate_demo
from backupkit.pg.embedded import EmbeddedServer
from backupkit.recovery.job import restore

pytestmark = pytest.mark.crossversion

PG15 = Path(os.environ.get("BACKUPKIT_PG15_BIN", "/usr/lib/postgresql/15/bin"))
FIDELITY_SQL = (Path(__file__).parent / "fidelity.sql").read_text()
# fidelity.sql's idempotent CREATE ROLE block (roles are cluster-wide: the 18 target needs them too)
FIDELITY_ROLES = re.search(r"^DO \$do\$\nDECLARE\n    r text;.*?^\$do\$;\n", FIDELITY_SQL, re.M | re.S).group(0)
assert "bk_fid_owner" in FIDELITY_ROLES and "bk fid Reader" in FIDELITY_ROLES

# The fidelity fixture's relations, functions and schemas all belong to the loading
# superuser.  Owners and grants other than that go in a schema of their own, created by
# bk_fid_owner so its default privileges (set by fidelity.sql) apply: an ALL grant
# (MAINTAIN on 18), a column grant, a function whose EXECUTE the default privileges
# revoke from PUBLIC and which is then granted explicitly, a sequence.
OWNED_15 = """
CREATE SCHEMA "bk owned" AUTHORIZATION bk_fid_owner;
GRANT USAGE ON SCHEMA "bk owned" TO "bk fid Reader";
COMMENT ON SCHEMA "bk owned" IS 'owned by bk_fid_owner';
SET ROLE bk_fid_owner;
CREATE TABLE "bk owned".ledger (id int PRIMARY KEY, note text, secret text);
INSERT INTO "bk owned".ledger VALUES (1, 'a', 's1'), (2, NULL, 's2');
GRANT ALL ON "bk owned".ledger TO "bk fid Reader" WITH GRANT OPTION;
GRANT UPDATE (note) ON "bk owned".ledger TO PUBLIC;
CREATE SEQUENCE "bk owned".counter;
GRANT USAGE ON SEQUENCE "bk owned".counter TO "bk fid Reader";
CREATE VIEW "bk owned".ledger_notes AS SELECT id, note FROM "bk owned".ledger;
CREATE FUNCTION "bk owned".double(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 2 * x';
GRANT EXECUTE ON FUNCTION "bk owned".double(int) TO "bk fid Reader";
RESET ROLE;
ALTER TABLE public.products OWNER TO bk_fid_owner;
"""

# Types whose text output changed little across versions, plus an xml column (NULL only:
# the embedded 18 has no libxml, so xml values could not be loaded there).
EXTRA_15 = """
CREATE TABLE docs (id int PRIMARY KEY, body xml, tags text[], amount money, span tstzrange);
INSERT INTO docs VALUES (1, NULL, '{a,"b c",NULL}', 12.34, '[2020-01-01,2021-01-01)'),
                        (2, NULL, '{}', -0.01, 'empty');
"""


@pytest.fixture(scope="module")
def pg15():
    assert (PG15 / "postgres").exists(), (
        f"PostgreSQL 15 server binaries not found in {PG15}: apt-get install postgresql-15 (or set BACKUPKIT_PG15_BIN)"
    )
    root = Path(tempfile.mkdtemp(prefix="backupkit-pg15-"))
    os.chmod(root, 0o755)
    server = EmbeddedServer(root / "data", bindir=PG15, remove_parent=True).start()
    yield server
    server.stop()


# ALL privileges on a table: PostgreSQL 17 added MAINTAIN ("m"), so 15 prints ALL as
# arwdDxt and 18 as arwdDxtm (each letter may carry "*", WITH GRANT OPTION).
_ALL_ON_TABLE_18 = re.compile(r"=(a\*?r\*?w\*?d\*?D\*?x\*?t\*?)m\*?/")


def _acl_all_as_15(acl: str | None) -> str | None:
    """A table ACL with 18's ALL (MAINTAIN included) printed as 15's ALL.

    Only a complete ALL is folded: a lone MAINTAIN cannot come from a 15 source,
    so one in a restore stays visible as a difference.
    """
    return _ALL_ON_TABLE_18.sub(r"=\1/", acl) if acl else acl


def all_schemas(dsn: str) -> list[str]:
    """Every non-system schema (as tests/test_restore.py backs up the fidelity fixture)."""
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                "AND nspname <> 'information_schema' ORDER BY 1"
            ).fetchall()
        ]


def comparable(fp: dict, extension_members: frozenset[str] | set[str] = frozenset()) -> dict:
    """The parts of a fingerprint that must not depend on the server's major version.

    Everything in the fingerprint is compared except what PostgreSQL 15 and 18
    legitimately record or print differently:

    * Objects that belong to an extension (``extension_members``: keys from
      :func:`extension_members`). pg_dump writes ``CREATE EXTENSION`` without a
      version, so the restore installs the target's default version, built by
      that version's script. For example, citext 1.6 on 15 and 1.8 on 18 define
      their regexp functions differently (SQL-standard bodies, named arguments).
      Extensions are compared by name and schema only. The test checks
      separately that each one is at the target's default version.
    * NOT NULL constraints (contype ``n``) and domains' ``NOT NULL``
      constraints: 18 records them in pg_constraint, while 15 keeps only
      attnotnull/typnotnull. Columns' ``not_null`` and domains' ``notnull``
      carry the same fact in both versions and are compared.
    * View and materialized-view definitions: since 16, pg_get_viewdef stops
      qualifying columns of a single-relation query (``products.id`` is
      printed as ``id``). The views' columns, types, owners and ACLs are
      still compared.
    * MAINTAIN: 17 added it to ALL on tables. A table's (or table default
      privilege's) ALL is printed the 15 way on both sides (:func:`_acl_all_as_15`).
    * publish_generated_columns: it does not exist before 18, where the fingerprint
      records None. 15 never publishes generated columns, which is 18's ``n``,
      so None is read as ``n``.

    ``columns`` and ``enums`` repeat column types and enum labels compactly (the
    original cross-version promise); ``relations`` and ``types`` hold them too.
    """
    members = set(extension_members)
    columns = {
        name: [(c, rel["columns"][c]["type"]) for c in rel["column_order"]]
        if "column_order" in rel
        else rel.get("columns")
        for name, rel in fp["relations"].items()
    }
    relations = {}
    for name, rel in fp["relations"].items():
        if name in members:
            continue
        rel = dict(rel, acl=_acl_all_as_15(rel["acl"]), view_definition=None)
        rel["constraints"] = {k: c for k, c in rel["constraints"].items() if c["type"] != "n"}
        relations[name] = rel
    types = {}
    for name, typ in fp["types"].items():
        if name in members:
            continue
        if "constraints" in typ:
            typ = dict(typ, constraints={k: c for k, c in typ["constraints"].items() if c["def"] != "NOT NULL"})
        types[name] = typ
    default_privileges = {
        key: dict(d, acl=_acl_all_as_15(d["acl"])) if d["object_type"] == "r" else d
        for key, d in fp["default_privileges"].items()
    }
    publications = {
        name: dict(p, generated_columns=p["generated_columns"] or "n") for name, p in fp["publications"].items()
    }
    return {
        "data": {k: v for k, v in fp["data"].items() if k not in members},
        "sequences": {k: v for k, v in fp["sequences"].items() if k not in members},
        "columns": columns,
        "enums": {k: v["labels"] for k, v in fp["types"].items() if v["kind"] == "e"},
        "relations": relations,
        "types": types,
        "functions": {k: v for k, v in fp["functions"].items() if k not in members},
        "schemas": fp["schemas"],
        "extensions": {name: e["schema"] for name, e in fp["extensions"].items()},
        "publications": publications,
        "large_objects": fp["large_objects"],
        "default_privileges": default_privileges,
        "event_triggers": fp["event_triggers"],
    }


def extension_members(dsn: str) -> frozenset[str]:
    """Fingerprint keys of the functions, types and relations that belong to an extension."""
    with psycopg.connect(dsn) as conn:
        return frozenset(
            r[0]
            for r in conn.execute("""
            SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname)
                       || '(' || pg_get_function_identity_arguments(p.oid) || ')'
            FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
            JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
            UNION ALL
            SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname)
            FROM pg_depend d JOIN pg_type t ON t.oid = d.objid
            JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE d.classid = 'pg_type'::regclass AND d.deptype = 'e'
            UNION ALL
            SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
            FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'""")
        )


def test_snapshot_from_15_restores_exactly_into_18(pg15, make_db, tmp_path):
    with psycopg.connect(pg15.dsn()) as conn:
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("15")
    source = pg15.createdb("app15")
    create_demo(source, scale=0.02)
    mutate_demo(source)
    with psycopg.connect(source) as conn:
        conn.execute(EXTRA_15)
    res = backupkit.backup(source, tmp_path, schemas=["public", "auth", "storage"], jobs=2)
    assert res.manifest["source"]["server_version_num"] // 10000 == 15
    target = make_db("from15")
    restore(res.path, target, create_roles=True)  # a plain 18 has no Supabase roles
    a = comparable(fingerprint(source), extension_members(source))
    b = comparable(fingerprint(target), extension_members(target))
    assert len(a["data"]) >= 10 and a["enums"] and a["sequences"]
    assert a == b, "\n".join(diff_fingerprints(a, b)[:40])
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT amount::text, tags FROM docs WHERE id = 1").fetchone() == (
            "$12.34",
            ["a", "b c", None],
        )


def test_fidelity_snapshot_from_15_restores_into_18_with_database_objects(pg15, make_db, tmp_path):
    """Extensions, publications, large objects, default privileges, owners and grants: 15 → 18."""
    source = pg15.createdb("fid15")  # the module's own 15 server: roles made here stay here
    with psycopg.connect(source) as conn:
        conn.execute(FIDELITY_SQL)
        conn.execute(OWNED_15)
    schemas = all_schemas(source)
    assert {"public", "ext", "Odd Schema.v1", "bk owned"} <= set(schemas)
    res = backupkit.backup(source, tmp_path, schemas=schemas, jobs=2)
    assert res.manifest["source"]["server_version_num"] // 10000 == 15
    a = comparable(fingerprint(source), extension_members(source))

    target = make_db("fid_from15")
    with psycopg.connect(target) as conn:
        # The same idempotent way fidelity.sql makes them.  (restore's create_roles does not
        # create the roles that only large objects or default privileges name.)
        conn.execute(FIDELITY_ROLES)
    result = restore(res.path, target, owner=True)
    assert result.plan.skipped_grants == []
    b = comparable(fingerprint(target), extension_members(target))

    # Not vacuous: the source has what the comparison is about.
    assert a["extensions"]["citext"] == a["extensions"]["hstore"] == "ext"
    assert len(a["publications"]) == 5 and a["publications"]["fid_pub_filtered"]["tables"]
    assert a["large_objects"]["4242001"]["owner"] == "bk_fid_owner" and a["large_objects"]["4242001"]["acl"]
    assert {d["schema"] for d in a["default_privileges"].values()} == {None, "public", "Odd Schema.v1"}
    assert a["schemas"]["bk owned"]["owner"] == "bk_fid_owner"
    ledger = a["relations"]['"bk owned".ledger']
    assert '"bk fid Reader\\"=a*r*w*d*D*x*t*/' in ledger["acl"]  # ALL WITH GRANT OPTION, as 15 prints it
    assert ledger["columns"]["note"]["acl"] == "{=w/bk_fid_owner}"
    assert a["relations"]["public.products"]["owner"] == "bk_fid_owner"
    assert a["functions"]['"bk owned".double(x integer)']["acl"]
    assert len(a["data"]) >= 30 and a["enums"] and a["sequences"]
    assert a == b, "\n".join(diff_fingerprints(a, b)[:40])

    # Extension versions may differ (CREATE EXTENSION installs the target's default): they must
    # be exactly the 18 server's default versions.
    with psycopg.connect(target) as conn:
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("18")
        behind = conn.execute("""
            SELECT e.extname, e.extversion, a.default_version FROM pg_extension e
            JOIN pg_available_extensions a ON a.name = e.extname
            WHERE e.extversion IS DISTINCT FROM a.default_version""").fetchall()
        assert behind == []
        # The large object's content reads back as written on 15.
        assert conn.execute("SELECT convert_from(lo_get(4242001, 0, 17), 'UTF8')").fetchone()[0] == "large object ✓ "


@pytest.mark.parametrize("jobs", [1, 2])
def test_snapshot_from_15_restores_exactly_into_15(pg15, tmp_path, jobs):
    """Back into the version it came from (a Supabase project on PostgreSQL 15): the scripts
    pg_restore 18 renders set transaction_timeout, which 15 does not have."""
    source = pg15.createdb(f"same15_{jobs}")
    create_demo(source, scale=0.02)
    mutate_demo(source)
    with psycopg.connect(source) as conn:
        conn.execute(EXTRA_15)
    res = backupkit.backup(source, tmp_path, schemas=["public", "auth", "storage"], jobs=2)
    assert res.manifest["source"]["pg_dump_version"].startswith("18")  # the scripts are 18's
    target = pg15.createdb(f"into15_{jobs}")
    result = restore(res.path, target, jobs=jobs)
    assert not [w for w in result.warnings if "`jobs` is ignored" in w]  # -j2 did load in parallel
    a, b = fingerprint(source), fingerprint(target)  # the same version: everything, nothing left out
    assert len(a["data"]) >= 10 and a["sequences"] and any(t["kind"] == "e" for t in a["types"].values())
    assert a == b, "\n".join(diff_fingerprints(a, b)[:40])


def test_a_snapshot_from_18_into_15_is_warned_about_and_a_plain_schema_still_comes_back(pg15, make_db, tmp_path):
    """Older than the source: pg_dump's schema is meant for the same or a newer version, so
    the dry run says so; a schema that uses nothing 18 added still restores."""
    source = make_db("from18")
    with psycopg.connect(source) as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 50) i"
        )
    res = backupkit.backup(source, tmp_path, progress=False)
    target = pg15.createdb("into15_from18")
    dry = restore(res.path, target, dry_run=True)
    assert [w for w in dry.warnings if "the snapshot is from PostgreSQL 18 and the target runs 15" in w]
    assert restore(res.path, target).rows == 50
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*), max(v) FROM t").fetchone() == (50, "v9")


def test_too_old_pg_dump_is_refused_clearly(make_db, tmp_path):
    """Debian's pg_dump 15 cannot dump PostgreSQL 18: one clear line, exit 4, no snapshot."""
    from helpers import run_cli, snapshot_dirs

    dsn = make_db("old_dump")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE t (x int)")
    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path, env={"BACKUPKIT_PG_DUMP": str(PG15 / "pg_dump")})
    assert out.returncode == 4, out.stderr
    assert "is version 15." in out.stderr and "older than the server (PostgreSQL 18)" in out.stderr
    assert "BACKUPKIT_PG_DUMP" in out.stderr and "Traceback" not in out.stderr
    assert snapshot_dirs(tmp_path) == []
