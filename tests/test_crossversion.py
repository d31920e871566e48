"""A snapshot taken from PostgreSQL 15 restores exactly into PostgreSQL 18.

Needs Debian's postgresql-15 server (``/usr/lib/postgresql/15/bin``, or
``$BACKUPKIT_PG15_BIN``); ``.ci/run`` installs it and runs ``pytest -m crossversion``.
Deselected from the default run because a fresh machine has no PostgreSQL 15.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
import pytest

import backupkit
from backupkit.demo_data import create_demo, mutate_demo
from backupkit.embedded import EmbeddedServer
from backupkit.restore import restore

from fingerprint import diff_fingerprints, fingerprint

pytestmark = pytest.mark.crossversion

PG15 = Path(os.environ.get("BACKUPKIT_PG15_BIN", "/usr/lib/postgresql/15/bin"))

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
        f"PostgreSQL 15 server binaries not found in {PG15}: apt-get install postgresql-15 "
        "(or set BACKUPKIT_PG15_BIN)")
    root = Path(tempfile.mkdtemp(prefix="backupkit-pg15-"))
    os.chmod(root, 0o755)
    server = EmbeddedServer(root / "data", bindir=PG15, remove_parent=True).start()
    yield server
    server.stop()


def comparable(fp: dict) -> dict:
    """The parts of a fingerprint that must not depend on the server's major version.

    Catalog text (constraint and index definitions) is printed differently by
    15 and 18 — e.g. 18 keeps NOT NULL as named constraints — so data,
    sequences, column types and enum labels are compared, which is what a
    cross-version restore promises.
    """
    columns = {name: [(c, rel["columns"][c]["type"]) for c in rel["column_order"]]
               if "column_order" in rel else rel.get("columns")
               for name, rel in fp["relations"].items()}
    return {"data": fp["data"], "sequences": fp["sequences"], "columns": columns,
            "enums": {k: v["labels"] for k, v in fp["types"].items() if v["kind"] == "e"}}


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
    a, b = comparable(fingerprint(source)), comparable(fingerprint(target))
    assert len(a["data"]) >= 10 and a["enums"] and a["sequences"]
    assert a == b, "\n".join(diff_fingerprints(a, b)[:40])
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT amount::text, tags FROM docs WHERE id = 1").fetchone() == ("$12.34", ["a", "b c", None])


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
