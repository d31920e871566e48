"""--notify: Healthchecks-style pings and JSON webhooks to an HTTP server the test starts on 127.0.0.1."""

from __future__ import annotations

import json
import socket

import pytest
from helpers import run_cli
from monitor import Monitor


@pytest.fixture
def monitor():
    m = Monitor()
    yield m
    m.close()


def dead_url() -> str:
    """A URL nothing listens on (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ping"


def test_a_backup_pings_start_then_success(make_db, tmp_path, monitor):
    dsn = make_db("notify")

    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "bk", "-q", "--notify", f"{monitor.url}/ping/abc")

    assert out.returncode == 0, out.stderr
    assert [path for path, _ in monitor.requests] == ["/ping/abc/start", "/ping/abc"]


def test_a_failed_backup_pings_fail_with_the_one_line_reason_and_no_secret(pg_server, tmp_path, monitor):
    password = "n0t-th1s-one-" + tmp_path.name
    dsn = f"postgresql://nobody:{password}@127.0.0.1:1/none"

    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "bk", "--notify", f"{monitor.url}/ping/abc")

    assert out.returncode == 3, out.stderr
    assert [path for path, _ in monitor.requests] == ["/ping/abc/start", "/ping/abc/fail"]
    reason = monitor.requests[1][1]
    assert reason and "\n" not in reason and reason in out.stderr  # the error line the user sees
    assert password not in reason and password not in out.stderr


def test_json_webhooks_carry_the_job_the_outcome_and_the_snapshot(make_db, tmp_path, monitor, monkeypatch):
    dsn = make_db("notify")
    monkeypatch.setenv("BACKUPKIT_NOTIFY", f"json+{monitor.url}/hook")  # the variable, no option

    backed_up = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "bk", "-q")
    pruned = run_cli("prune", tmp_path / "bk", "--keep-last", "-2")

    assert backed_up.returncode == 0, backed_up.stderr
    assert pruned.returncode == 11, pruned.stderr  # a policy that makes no sense
    events = [json.loads(body) for path, body in monitor.requests]
    assert {path for path, _ in monitor.requests} == {"/hook"}
    assert [(e["job"], e["event"], e["ok"]) for e in events] == [
        ("backup", "start", True),
        ("backup", "success", True),
        ("prune", "start", True),
        ("prune", "fail", False),
    ]
    snapshot = backed_up.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
    assert events[1]["snapshot"] == snapshot and events[1]["seconds"] > 0
    assert events[3]["reason"] in pruned.stderr
    assert set(events[0]) == {"event", "job", "ok", "snapshot", "reason", "seconds", "host"}
    assert all(dsn not in body for _, body in monitor.requests)


def test_an_unreachable_monitor_warns_and_the_backup_still_succeeds(make_db, tmp_path):
    dsn = make_db("notify")

    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "bk", "-q", "--notify", dead_url())

    assert out.returncode == 0, out.stderr
    assert "could not notify http://127.0.0.1 of backup start" in out.stderr
    assert "could not notify http://127.0.0.1 of backup success" in out.stderr
    assert "/ping" not in out.stderr  # a ping URL's path is its secret: messages show the host only
    assert run_cli("list", tmp_path / "bk", "--json").returncode == 0


def test_a_monitor_answering_an_error_is_retried_then_a_warning():
    from backupkit.monitor.notify import ATTEMPTS, Notifier

    failing = Monitor(status=500)
    try:
        assert Notifier(f"{failing.url}/ping", "drill").success("x", 1.0) is False
        assert [p for p, _ in failing.requests] == ["/ping"] * ATTEMPTS
    finally:
        failing.close()


def test_notify_must_be_an_http_url(make_db, tmp_path):
    out = run_cli("backup", "--dsn", make_db("notify"), "--to", tmp_path / "bk", "--notify", "ftp://example.com/x")
    assert out.returncode == 2
    assert out.stderr.startswith("error: `--notify` is not an http(s) URL")
    assert not (tmp_path / "bk").exists()


@pytest.mark.parametrize("password", ["Xk9/Q2w+Zr", "Xk9@Q2wZr"], ids=["slash", "at"])
def test_a_password_a_uri_must_encode_is_refused_without_showing_any_of_it(tmp_path, monitor, password):
    """libpq ends a URI's user information at the first "/" or "@": the rest of such a password
    became the port or part of the host, and was shown wherever those are.  Refused, in one line."""
    dsn = f"postgresql://postgres:{password}@127.0.0.1:5432/postgres"

    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "bk", "--notify", f"{monitor.url}/ping/abc")

    assert out.returncode == 2, out.stderr
    assert "must percent-encode (@ as %40, / as %2F)" in out.stderr
    shown = out.stdout + out.stderr + " ".join(body for _, body in monitor.requests)
    assert not [piece for piece in ("Xk9", "Q2w", "Zr") if piece in shown]
    assert not (tmp_path / "bk").exists()


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:pw@db.invalid/app?application_name=backup@nightly",
        "postgresql://u:pw@db.invalid/app?sslrootcert=/home/a@corp/root.crt",
        "postgresql://db.invalid:5432/app?application_name=a@b",
        "postgresql://[::1]:5432/app?application_name=y@z",
        "postgresql://@db.invalid/app?user=bob",
        "postgresql://bob:pw@db.invalid/app?user=alice",
        "postgresql://bob:@db.invalid/app",
        "postgresql://u%40x:p%2Fw@db.invalid:5432/d",
    ],
)
def test_dsns_libpq_reads_as_written_are_not_refused(dsn):
    """The check for a password a URI must encode looks only at the user information, before
    the query: an @ in a query value, or a user set in the query, is not a mistake."""
    from backupkit.pg.dsn import describe

    assert describe(dsn)["host"] in ("db.invalid", "::1")
