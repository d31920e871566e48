"""Restore drills and ``--notify`` as an operator meets them: a drill stopped by systemd
(SIGTERM), a snapshot whose data changed in place after a passing drill, and monitor URLs
with a query (Healthchecks' ``?create=1``) or with credentials.

Drills run against the real embedded PostgreSQL (or the test server through ``--dsn``);
monitors are real HTTP servers on 127.0.0.1.  The snapshot and the helpers are
tests/test_drill.py's.
"""

from __future__ import annotations

import base64
import http.server
import signal
import socket
import threading

import psycopg
import pytest
import test_drill
from helpers import run_cli, stored_file, wait_for
from monitor import Monitor
from test_drill import drill_databases, file_entry, postmasters_of, start_paused_drill, status_cli

from backupkit.drills import record, target
from backupkit.drills.job import drill
from backupkit.errors import SnapshotDamaged
from backupkit.snapshot import manifest as mf
from backupkit.storage.location import open_storage

# The fixtures of tests/test_drill.py, shared.
source_snapshot = test_drill.source_snapshot
snap = test_drill.snap
drill_tmp = test_drill.drill_tmp


class RecordingMonitor:
    """An HTTP server on 127.0.0.1 recording each request's path and Authorization header."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def dead_dsn() -> str:
    """A DSN of a port nothing listens on: the drill fails at once (exit 3)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


# -- SIGTERM: systemd's stop, Airflow's timeout, `timeout` ----------------------------------


def _terminated(child) -> str:
    """SIGTERM the paused drill ``child``; its stderr once it ended."""
    child.send_signal(signal.SIGTERM)
    try:
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=30)
    return err


def test_a_drill_stopped_with_sigterm_stops_its_throwaway_server_and_removes_its_folder(snap, drill_tmp):
    """The README: the throwaway database is dropped however the drill ends.  A SIGTERM during
    the comparison ended the process at once: the server kept running, holding the snapshot's
    rows in the temporary folder, until some later drill."""
    child = start_paused_drill(snap.parent)
    [folder] = list(drill_tmp.glob(f"{target.PREFIX}{child.pid}_*"))
    assert postmasters_of(folder)
    err = _terminated(child)
    assert child.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not folder.exists()
    assert wait_for(lambda: not postmasters_of(folder), 10), "the throwaway server still runs"


def test_a_dsn_drill_stopped_with_sigterm_drops_its_throwaway_database(snap, pg_server):
    child = start_paused_drill(snap.parent, "--dsn", pg_server.admin_dsn)
    assert len(drill_databases(pg_server, child.pid)) == 1
    err = _terminated(child)
    left = drill_databases(pg_server, child.pid)
    try:
        assert child.returncode == 130, err
        assert "Traceback" not in err
        assert left == [], "the throwaway database, a copy of the snapshot's rows, was left on the server"
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            for name in left:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- a snapshot changed in place after a drill passed ----------------------------------------


def test_a_drill_that_finds_the_snapshot_damaged_is_recorded_so_status_stops_saying_ok(snap, pg_server):
    """A data file changed in place (same size): the drill refuses it (exit 6), but recorded
    nothing, so `status`, which only checks sizes, went on reporting the earlier drill's pass
    and exit 0 for a snapshot that no longer restores."""
    assert run_cli("drill", snap.parent, "--dsn", pg_server.admin_dsn, "-q").returncode == 0
    entry = file_entry(mf.read(snap), "customers", 1)
    path = stored_file(snap, entry)
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))

    out = run_cli("drill", snap.parent, "--dsn", pg_server.admin_dsn, "-q")
    assert out.returncode == 6, out.stderr
    assert f"is damaged: {entry['path']}" in out.stderr and "Traceback" not in out.stderr
    last = record.latest(open_storage(snap.parent))
    assert last is not None and last.ok is False and last.snapshot == snap.name
    assert any(entry["path"] in d for d in last.differences)

    code, data_ = status_cli(snap.parent)
    assert (code, data_["state"]) == (14, "drill_failed")
    assert entry["path"] in data_["reasons"][0]

    # The library raises the same error, and records it too.
    with pytest.raises(SnapshotDamaged):
        drill(snap, dsn=pg_server.admin_dsn, progress=False)
    assert len([r for r in record.history(open_storage(snap.parent)) if not r.ok]) == 2


# -- --notify URLs ------------------------------------------------------------------------


def test_a_ping_url_with_a_query_pings_start_and_fail_not_success(snap, pg_server):
    """Healthchecks' slug URLs (`…/<ping key>/<slug>?create=1`): /start and /fail were appended
    after the query, so the monitor got three success pings, the failure among them."""
    monitor = Monitor()
    try:
        url = f"{monitor.url}/ping/key/nightly-drill?create=1"
        ok = run_cli("drill", snap.parent, "--dsn", pg_server.admin_dsn, "-q", "--notify", url)
        failed = run_cli("drill", snap.parent, "--dsn", dead_dsn(), "-q", "--notify", url)
    finally:
        monitor.close()
    assert ok.returncode == 0, ok.stderr
    assert failed.returncode == 3, failed.stderr
    assert [path for path, _ in monitor.requests] == [
        "/ping/key/nightly-drill/start?create=1",
        "/ping/key/nightly-drill?create=1",
        "/ping/key/nightly-drill/start?create=1",
        "/ping/key/nightly-drill/fail?create=1",
    ]
    assert monitor.requests[3][1] in failed.stderr  # the one-line reason


def test_a_monitor_url_with_credentials_reaches_the_monitor_and_never_shows_them(snap, pg_server):
    """`https://user:pass@host/…` (a webhook behind basic auth): urllib took `user:pass@host`
    for the host, so no ping ever arrived, and without a port the command died with a
    traceback whose last line held the password."""
    password = "hc-s3cret-Pw"
    monitor = RecordingMonitor()
    try:
        out = run_cli(
            "drill",
            snap.parent,
            "--dsn",
            pg_server.admin_dsn,
            "-q",
            "--notify",
            f"http://hc-user:{password}@127.0.0.1:{monitor.port}/ping/abc",
        )
    finally:
        monitor.close()
    assert out.returncode == 0, out.stderr
    basic = "Basic " + base64.b64encode(f"hc-user:{password}".encode()).decode()
    assert monitor.requests == [("/ping/abc/start", basic), ("/ping/abc", basic)]
    assert password not in out.stdout + out.stderr

    # No port (80): whatever answers there, the job's outcome stands and the password is not shown.
    out = run_cli(
        "drill", snap.parent, "--dsn", pg_server.admin_dsn, "-q", "--notify", f"http://hc-user:{password}@127.0.0.1/p"
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and password not in out.stdout + out.stderr

    # A port that is no number is refused before anything runs, without repeating it.
    out = run_cli("drill", snap.parent, "-q", "--notify", f"http://127.0.0.1:{password}/p")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: `--notify` is not an http(s) URL")
    assert "Traceback" not in out.stderr and password not in out.stdout + out.stderr
