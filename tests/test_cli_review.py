"""The command at 3 a.m. (review): empty and mistyped arguments, a snapshot where a backup
directory belongs, limits out of range, bytes that are not UTF-8.  Each case: one line and
its documented exit code, and nothing written where it would damage or mislead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from helpers import load_small, run_cli

import backupkit
from backupkit.snapshot.verify import verify


@pytest.fixture(scope="module")
def repo(pg_server, tmp_path_factory) -> tuple[Path, Path, str]:
    """A backup directory with one snapshot of a small database; (DIR, snapshot, source DSN)."""
    dsn = pg_server.createdb("review")
    load_small(dsn)
    d = tmp_path_factory.mktemp("review") / "backups"
    path = Path(backupkit.backup(dsn, d, progress=False).path)
    yield d, path, dsn
    pg_server.dropdb(dsn)


def one_line(out: subprocess.CompletedProcess, code: int) -> str:
    """Exit ``code``, one ``error:`` line (and a hint), no traceback; the error line."""
    assert out.returncode == code, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in out.stderr and "Exception" not in out.stderr, out.stderr
    assert [ln for ln in lines if not ln.startswith("hint: ")] == [lines[0]] and lines[0].startswith("error: "), lines
    return lines[0]


def test_backup_into_a_snapshot_folder_is_refused_and_the_snapshot_stays_intact(repo):
    """`backup --to backups/<id>` wrote a snapshot inside the snapshot: it then verified DAMAGED."""
    d, snap, dsn = repo
    for to in (snap, snap / "schema"):
        line = one_line(run_cli("backup", "--dsn", dsn, "--to", to), 2)
        assert str(snap) in line and "not a backup directory" in line
    assert verify(snap).ok and sorted(p.name for p in snap.iterdir()) == ["manifest.json", "schema"]


def test_backup_into_an_s3_snapshot_is_refused(repo, s3_bucket):
    """`backup --to s3://bucket/prod/<id>` nested a snapshot in one, which then verified DAMAGED."""
    _, _, dsn = repo
    snap = backupkit.backup(dsn, f"s3://{s3_bucket}/prod", progress=False).location
    out = run_cli("backup", "--dsn", dsn, "--to", f"s3://{s3_bucket}/prod/{snap.id}")
    assert "is a snapshot" in one_line(out, 2)
    assert f"hint: give the directory that holds the snapshots: s3://{s3_bucket}/prod" in out.stderr
    assert verify(snap).ok


def test_repository_commands_given_a_snapshot_say_so(repo, tmp_path):
    """`list`/`status`/`copy` of a snapshot folder listed its `schema` folder as an unreadable
    snapshot; `status` said DAMAGED (exit 6) to the monitor; `copy` made an empty target."""
    d, snap, _ = repo
    for args in (("list", snap), ("status", snap), ("prune", snap, "--dry-run"), ("copy", snap, tmp_path / "t")):
        line = one_line(run_cli(*args), 2)
        assert "is a snapshot, not a backup directory" in line
    assert not (tmp_path / "t").exists()


def test_an_empty_dsn_does_not_fall_back_to_the_environment(repo):
    """`restore --dsn "$TARGET"` with TARGET unset restored into $BACKUPKIT_DSN, the source."""
    _, snap, dsn = repo
    out = run_cli("restore", snap, "--dsn", "", "--clean", env={"BACKUPKIT_DSN": dsn})
    assert "--dsn is empty" in one_line(out, 2)
    for args in (("backup", "--to", "x"), ("check",), ("drill", snap)):
        assert "--dsn is empty" in one_line(run_cli(*args, "--dsn", "", env={"BACKUPKIT_DSN": dsn}), 2)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select count(*) from orders").fetchone() == (20000,)


@pytest.mark.parametrize(
    "args,what",
    [
        (("backup", "--to", ""), "--to"),
        (("check", "--to", ""), "--to"),
        (("list", ""), "REPO"),
        (("prune", "", "--dry-run"), "REPO"),
        (("verify", ""), "SNAPSHOT"),
        (("restore", "", "--dry-run"), "SNAPSHOT"),
        (("diff", "", ""), "OLD"),
        (("keygen", "--age-identity", ""), "--age-identity"),
    ],
)
def test_an_empty_place_is_refused_not_the_current_folder(repo, tmp_path, args, what):
    """An unset "$DIR" made `backup --to ""` write into the current folder, `verify ""` report
    an unrelated folder DAMAGED (exit 6) and `keygen` say ". already exists"."""
    _, _, dsn = repo
    out = subprocess.run(
        [sys.executable, "-m", "backupkit", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "BACKUPKIT_DSN": dsn},
        timeout=600,
    )
    assert one_line(out, 2) == f"error: {what} is empty"
    assert list(tmp_path.iterdir()) == []


def test_diff_html_empty_or_inside_a_snapshot_is_refused(repo):
    """`diff --html ""` wrote no report and said nothing; `--html backups/<id>/r.html` wrote
    into the snapshot, which then verified DAMAGED."""
    _, snap, _ = repo
    assert "--html is empty" in one_line(run_cli("diff", snap, snap, "--html", ""), 2)
    line = one_line(run_cli("diff", snap, snap, "--html", snap / "r.html"), 2)
    assert "would damage it" in line
    assert not (snap / "r.html").exists() and verify(snap).ok


def test_a_url_short_of_its_slashes_is_not_a_local_folder(repo, tmp_path):
    """`backup --to s3:/bucket/prod` made a local folder `s3:` and exited 0: nothing off-site."""
    _, _, dsn = repo
    for to in ("s3:/bucket/prod", "s3:bucket", "file:/tmp/x"):
        out = subprocess.run(
            [sys.executable, "-m", "backupkit", "backup", "--dsn", dsn, "--to", to],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=600,
        )
        assert "is neither a folder nor a URL" in one_line(out, 2)
    assert list(tmp_path.iterdir()) == []


def test_a_path_inside_a_snapshot_names_the_snapshot(repo):
    """`verify backups/<id>/schema` said "has only 0 complete snapshot(s); no latest"."""
    _, snap, _ = repo
    for inside in (snap / "schema", snap / "manifest.json", snap / "schema" / "schema.dump"):
        line = one_line(run_cli("verify", inside), 7)
        assert f"inside snapshot {snap}" in line
    assert f"give the snapshot's folder: {snap}" in run_cli("restore", snap / "schema", "--dry-run").stderr


@pytest.mark.parametrize(
    "args",
    [
        ("backup", "--to", "X", "--timeout", "1e300"),
        ("backup", "--to", "X", "--lock-wait-timeout", "1e12"),
        ("restore", "SNAP", "--timeout", "1e300", "--dry-run"),
        ("restore", "SNAP", "--lock-wait-timeout", "1e300", "--clean"),
    ],
)
def test_a_time_limit_beyond_postgresql_is_a_usage_error(repo, make_db, tmp_path, args):
    """`backup --timeout 1e300` failed on the server with two lines and exit 5; `restore
    --timeout 1e300` printed a thread's traceback and ran with no limit; `restore
    --lock-wait-timeout 1e300 --clean` dropped tables before failing (rolled back, exit 9)."""
    _, snap, dsn = repo
    target = make_db("review_limits")
    load_small(target)
    args = [str(tmp_path / "x") if a == "X" else str(snap) if a == "SNAP" else a for a in args]
    line = one_line(run_cli(*args, "--dsn", dsn if args[0] == "backup" else target), 2)
    assert "is out of range: use at most 2147483 seconds" in line
    assert not (tmp_path / "x").exists()


def test_a_dsn_with_bytes_that_are_not_utf8_is_one_line(tmp_path):
    """A DSN holding a byte that is not UTF-8 ended in a UnicodeEncodeError traceback (exit 1)."""
    dsn = os.fsdecode(b"postgresql://u:p\xff@127.0.0.1:1/x")
    for args in (("backup", "--to", tmp_path / "b"), ("check",)):
        line = one_line(run_cli(*args, "--dsn", dsn), 2)
        assert "not UTF-8" in line and "p\udcff" not in line
    assert not (tmp_path / "b").exists()


def test_a_snapshot_path_that_is_not_utf8_is_printed_after_the_backup(repo, tmp_path):
    """With a strict UTF-8 stdout, a backup to a folder named with a non-UTF-8 byte published its
    snapshot, then failed printing its path: a traceback and exit 1 for a good backup."""
    _, _, dsn = repo
    to = os.fsencode(tmp_path) + b"/r\xff"
    out = subprocess.run(
        [sys.executable, "-m", "backupkit", "backup", "--dsn", dsn, "--to", to, "-q"],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=600,
    )
    assert out.returncode == 0 and b"Traceback" not in out.stderr, out.stderr
    assert out.stdout.strip().startswith(to + b"/")


def test_status_with_a_runs_folder_that_is_not_there(repo, tmp_path):
    """`status --runs /wrong/path` said ok with no last run: a failed run went unseen."""
    d, _, _ = repo
    assert "is not a folder" in one_line(run_cli("status", d, "--runs", tmp_path / "nope"), 2)


def test_a_key_file_that_is_a_folder_is_one_line(repo, tmp_path):
    """`--sign-key DIR` said "cannot access 3: Is a directory" (a descriptor), exit 7, and told
    the user to check the backup directory's permissions."""
    d, snap, dsn = repo
    line = one_line(run_cli("backup", "--dsn", dsn, "--to", tmp_path / "b", "--sign-key", tmp_path), 2)
    assert "is a folder, not a key file" in line
    assert "is a folder" in one_line(run_cli("verify", snap, "--identity", tmp_path), 2)
    assert not (tmp_path / "b").exists()


def test_prune_of_a_bucket_root_does_not_take_a_repository_for_an_upload(repo, s3_bucket):
    """`prune s3://bucket` (the prefix forgotten) listed the repository `prod` as an interrupted
    upload and would remove it, every snapshot with it, as a stale temporary folder."""
    _, _, dsn = repo
    snap = backupkit.backup(dsn, f"s3://{s3_bucket}/prod", progress=False).location
    out = run_cli("prune", f"s3://{s3_bucket}", "--keep-last", "1", "--stale-after-hours", "0")
    assert f"backupkit prune s3://{s3_bucket}/prod" in out.stderr
    assert "holds another backup directory" in one_line(out, 2)
    assert verify(snap).ok
    # The library (a notebook, a script) does not take it for an upload either.
    result = backupkit.prune(
        f"s3://{s3_bucket}", backupkit.Policy(keep_last=1), now=datetime.now(UTC), stale_after_hours=0
    )
    assert verify(snap).ok, result


def test_sql_with_an_empty_query_or_a_bad_one_is_one_line(repo):
    """`sql SNAP "$QUERY"` with QUERY unset waited at an interactive prompt; a query naming a
    missing table gave DuckDB's "Did you mean" on a second line."""
    _, snap, _ = repo
    assert "the query is empty" in one_line(run_cli("sql", snap, "", input="select 1;\n"), 2)
    assert "Did you mean" in one_line(run_cli("sql", snap, "select * from nosuch"), 2)


def test_prune_with_an_empty_time_zone_is_refused(repo):
    """`prune --tz "$TZ"` with TZ unset counted days in UTC without a word."""
    d, _, _ = repo
    assert "--tz is empty" in one_line(run_cli("prune", d, "--tz", "", "--keep-daily", "1", "--json"), 2)
    assert json.loads(run_cli("list", d, "--json").stdout)["snapshots"]


def test_a_missing_database_or_ssl_gets_its_own_next_step(repo):
    """A DSN naming a database that does not exist, or asking for SSL of a server without it,
    got "check host, port, user and password": neither was wrong."""
    _, _, dsn = repo
    missing = psycopg.conninfo.make_conninfo(dsn, dbname="no_such_db")
    assert "database name" in run_cli("check", "--dsn", missing).stderr.splitlines()[-1]
    ssl = psycopg.conninfo.make_conninfo(dsn, sslmode="require")
    out = run_cli("backup", "--dsn", ssl, "--to", "unused")
    assert "server does not support SSL" in one_line(out, 3) and "remove sslmode=require" in out.stderr


def test_an_s3_endpoint_that_is_not_a_url_is_one_line(s3_bucket):
    """AWS_ENDPOINT_URL=not-a-url gave botocore's traceback (exit 1) ending in the value."""
    out = run_cli("list", f"s3://{s3_bucket}/prod", env={"AWS_ENDPOINT_URL": "not-a-url"})
    assert "the S3 endpoint is not a URL" in one_line(out, 2)
    assert "not-a-url" not in out.stderr


def test_recipients_set_to_nothing_is_not_a_plaintext_backup(repo, tmp_path):
    """BACKUPKIT_RECIPIENTS set but empty ("$KEYS" unset in a cron line) gave an unencrypted
    backup without a word, where the user meant every backup to be encrypted."""
    _, _, dsn = repo
    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "r", "-q", env={"BACKUPKIT_RECIPIENTS": " , "})
    assert "BACKUPKIT_RECIPIENTS is set but holds no age public key" in one_line(out, 2)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.mark.parametrize("variable", ["BACKUPKIT_SIGN_KEY", "BACKUPKIT_PUBLIC_KEY"])
def test_a_key_variable_set_to_nothing_is_refused_not_ignored(repo, tmp_path, variable):
    """BACKUPKIT_SIGN_KEY (or BACKUPKIT_PUBLIC_KEY) set but empty ("$KEY" unset in a cron line)
    gave an unsigned snapshot (or a verify that checked no signature) without a word."""
    _, snap, dsn = repo
    if variable == "BACKUPKIT_SIGN_KEY":
        out = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "r", "-q", env={variable: ""})
    else:
        out = run_cli("verify", snap, env={variable: " "})
    assert f"{variable} is set but empty" in one_line(out, 2)
