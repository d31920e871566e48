"""The embedded server's lifetime: it ends with the process that started it, unless kept running.

``stop_demo_server()`` returns what it did, each time it is called.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from backupkit.notebook import stop_demo_server
from backupkit.pg.embedded import EmbeddedServer

_START = """
import sys
from backupkit.pg.embedded import EmbeddedServer
server = EmbeddedServer(sys.argv[1], persistent=True).start(keep_running=sys.argv[2] == "keep")
print(server.dsn())
"""


@pytest.fixture
def home():
    # Not pytest's tmp_path: its 0700 parents would shut out the server's own OS user under root.
    root = Path(tempfile.mkdtemp(prefix="backupkit-home-"))
    os.chmod(root, 0o755)
    yield root
    stop_demo_server(root)
    shutil.rmtree(root, ignore_errors=True)


def _start_in_child(datadir: Path, mode: str) -> str:
    res = subprocess.run(
        [sys.executable, "-c", _START, str(datadir), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    return res.stdout.strip()


def test_a_kept_server_outlives_its_starter_until_stopped(home, capsys):
    datadir = home / "demo-pg" / "data"
    dsn = _start_in_child(datadir, "keep")
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    stopped = stop_demo_server(home)
    assert stopped.stopped is True
    assert str(stopped).startswith(f"stopped the demo server at {datadir} (127.0.0.1:")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5)
    again = stop_demo_server(home)
    assert again.stopped is False
    assert str(again) == f"no demo server is running (its cluster is at {datadir})"
    assert capsys.readouterr().out == ""  # said in the result; printing is the caller's


def test_a_server_stops_with_the_process_that_started_it(home, capsys):
    dsn = _start_in_child(home / "demo-pg" / "data", "stop")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5)
    stopped = stop_demo_server(home)
    assert stopped.stopped is False
    assert "no demo server is running" in str(stopped)


def test_remove_stops_the_server_and_deletes_its_files(home, capsys):
    datadir = home / "demo-pg" / "data"
    dsn = _start_in_child(datadir, "keep")
    server = EmbeddedServer(datadir, persistent=True)
    assert all(p.exists() for p in server.paths)
    removed = stop_demo_server(home, remove=True)
    assert removed.stopped is True
    out = str(removed) + "\n"
    assert f"stopped the demo server at {datadir}" in out
    for p in [*server.paths, datadir.parent]:
        assert not p.exists()
        assert f"removed {p}\n" in out
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5)
    again = stop_demo_server(home, remove=True)
    assert again.stopped is False
    assert "nothing to remove" in str(again)
