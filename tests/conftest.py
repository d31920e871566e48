"""Shared fixtures: a real PostgreSQL for every test that needs one.

With ``BACKUPKIT_TEST_DSN`` set, tests use that server (its user must be able
to CREATE DATABASE and CREATE ROLE); otherwise one embedded PostgreSQL 18 is
started for the session.  Each test gets fresh databases from ``make_db``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backupkit.demo.run import stop_demo_server
from backupkit.pg.dsn import DSN_ENV_VARS
from backupkit.pg.embedded import EmbeddedServer, temporary_server


class Server:
    """A PostgreSQL server the tests may create and drop databases on."""

    def __init__(self, admin_dsn: str, embedded=None):
        self.admin_dsn = admin_dsn
        self.embedded = embedded
        self._n = itertools.count()
        self.created: list[str] = []

    def dsn(self, dbname: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname)

    @property
    def password(self) -> str | None:
        return conninfo_to_dict(self.admin_dsn).get("password")

    def createdb(self, prefix: str = "t") -> str:
        name = f"bk_{prefix}_{next(self._n)}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return self.dsn(name)

    def dropdb(self, dsn: str) -> None:
        name = conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server (embedded unless BACKUPKIT_TEST_DSN is set)."""
    dsn = os.environ.get("BACKUPKIT_TEST_DSN")
    if dsn:
        yield Server(dsn)
        return
    server = temporary_server().start()
    try:
        yield Server(server.dsn(), embedded=server)
    finally:
        server.stop()


@pytest.fixture
def make_db(pg_server):
    """Factory: ``make_db()`` returns the DSN of a new empty database, dropped after the test."""
    made = []

    def make(prefix: str = "t") -> str:
        dsn = pg_server.createdb(prefix)
        made.append(dsn)
        return dsn

    yield make
    for dsn in made:
        pg_server.dropdb(dsn)


@pytest.fixture
def spawn():
    """Start python children (with this repo importable) that are killed at teardown."""
    children: list[subprocess.Popen] = []
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))

    def start(code: str, *args: str) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


# A Supabase-shaped server built from Supabase's own SQL (tests/supabase/README.md), and a real
# S3-compatible server (moto in server mode on 127.0.0.1) with a bucket per test (tests/s3server.py).
@pytest.fixture
def home(monkeypatch):
    """A private BACKUPKIT_HOME and no DSN in the environment; any demo server there is stopped after.

    It is a mkdtemp folder opened to 0755 (as ``temporary_server`` does) rather than under
    ``tmp_path``: run as root, the server's processes keep group root, and pytest's 0700
    folders (which embedded.py opens only to "other") would stay closed to them.
    """
    path = Path(tempfile.mkdtemp(prefix="backupkit-home-"))
    os.chmod(path, 0o755)
    monkeypatch.setenv("BACKUPKIT_HOME", str(path))
    for name in DSN_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    yield path
    try:
        stop_demo_server(path)  # only running if a notebook started one
        assert not EmbeddedServer(path / "demo-pg" / "data", persistent=True)._running()
    finally:
        shutil.rmtree(path, ignore_errors=True)


from s3server import s3_bucket, s3_client, s3_server  # noqa: E402,F401
from supabase_platform import supabase, supabase_project  # noqa: E402,F401
