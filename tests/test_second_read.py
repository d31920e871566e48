"""Second read of the day's changes outside the restore: faults found by trying them for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_small, wait_for

import backupkit

LONG_QUERY = "select sum(hash(a.range * b.range)) from range(2000000) a, range(1000000) b"


@pytest.fixture(scope="module")
def snap(pg_server, tmp_path_factory) -> Path:
    """One real snapshot of the small database."""
    dsn = pg_server.createdb("secondread")
    try:
        load_small(dsn)
        root = tmp_path_factory.mktemp("repo")
        return backupkit.backup(dsn, root, progress=False).path
    finally:
        pg_server.dropdb(dsn)


def _cli(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("BACKUPKIT_DSN", "DATABASE_URL", "SUPABASE_DB_URL")}
    return subprocess.Popen(
        [sys.executable, "-m", "backupkit", *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigterm_stops_a_long_sql_query_at_once(snap):
    """`timeout 600 backupkit sql …`, systemd's stop: every command now turns SIGTERM into
    Ctrl-C, but the Python handler runs only when DuckDB returns, so a big query went on
    to its end (before, SIGTERM killed it at once).  It must stop the query now: exit 130."""
    child = _cli("sql", str(snap), LONG_QUERY)
    try:
        # Seconds of CPU the start-up never takes: DuckDB's threads are running the query.
        assert wait_for(lambda: _cpu_seconds(child.pid) > 5, 120)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=120)  # the query alone runs for many minutes
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
