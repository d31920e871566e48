"""Faults around a backup's sessions (issue 13): kill -9 and SIGTERM of the backup, lock waits, time limits.

Every session of one backup carries the application_name ``backupkit backup PID TOKEN``
(PID: the backup's main process), which is how these tests find them in pg_stat_activity.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest
from helpers import load_small, snapshot_dirs, wait_for

import backupkit
import backupkit.capture.job
import backupkit.capture.readers
import backupkit.capture.sessions
from backupkit.cli import exit_code

#: A CLI run with worker processes forced on, small chunks (many items: a run lasting long
#: enough to be caught in the middle) and any library arguments given as JSON in argv[1].
CHILD = r"""
import functools, importlib, json, os, sys
os.dup2(1, 2)  # the test reads stderr from the stdout pipe
import backupkit.capture.readers
import backupkit.capture.sessions
backupkit.capture.readers.PROCESS_THRESHOLD = 0
mod = importlib.import_module("backupkit.capture.job")
mod.backup = functools.partial(mod.backup, chunk_bytes=128 * 1024, **json.loads(sys.argv[1]))
from backupkit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def backup_sessions(admin_dsn: str, pid: int, *, pg_dump: bool = True) -> list[tuple]:
    """(pid, state, wait_event_type) of every session of the backup run by process ``pid``
    (``pg_dump=False``: but its pg_dump's, whose name ends in `` pg_dump``)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE application_name LIKE %s"
            " AND (%s OR application_name NOT LIKE '%% pg_dump')",
            (f"backupkit backup {pid} %", pg_dump),
        ).fetchall()


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append((int(d.name), cmd))
    return out


def worker_processes(pid: int) -> list[int]:
    """The backup's copy workers: forked (the CLI runs no other thread), so a command line like
    its own; or spawned (``spawn_main``).  Not its pg_dumps, nor a spawn's resource tracker."""
    return [p for p, cmd in children(pid) if "pg_dump" not in cmd and "resource_tracker" not in cmd]


@pytest.fixture
def small_db(make_db):
    dsn = make_db("small")
    load_small(dsn)
    return dsn


@pytest.fixture
def big_db(make_db):
    """A database whose backup, in 128 kB chunks, takes a few hundred COPYs."""
    dsn = make_db("faults")
    load_small(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE big (id int PRIMARY KEY, pad text); "
            "INSERT INTO big SELECT i, md5(i::text) || md5((i * 7)::text) "
            "FROM generate_series(1, 400000) i"
        )
    return dsn


def start_backup(spawn, dsn: str, to: Path, **library_args):
    # The limits have CLI flags (which win over the patched defaults); the rest is patched in.
    flags = [
        f"--{name.replace('_', '-')}={library_args.pop(name)}"
        for name in ("timeout", "lock_wait_timeout")
        if name in library_args
    ]
    return spawn(
        CHILD, json.dumps(library_args), "backup", "--dsn", dsn, "--to", str(to), "--jobs", "2", "--quiet", *flags
    )


def pg_dumps(pid: int) -> list[int]:
    """The pg_dump processes the backup ``pid`` runs (its schema, beside the data copy)."""
    return [p for p, cmd in children(pid) if "pg_dump" in cmd]


def catch_mid_copy(pg_server, child) -> list[tuple]:
    """Wait until the backup's worker process is connected (main + stream + worker) and its
    schema's pg_dumps (whose sessions carry the run's name too) are done, then freeze the
    main process so the run cannot finish; return its sessions at that moment."""

    def copying() -> bool:
        return (
            len(backup_sessions(pg_server.admin_dsn, child.pid, pg_dump=False)) >= 3
            and bool(worker_processes(child.pid))
            and not pg_dumps(child.pid)
        )

    found = wait_for(lambda: copying() or child.poll() is not None, 60, every=0.005)
    if child.poll() is not None or not found:
        pytest.fail(f"the backup ended before its workers were seen: {child.communicate()[0]}")
    os.kill(child.pid, signal.SIGSTOP)
    return backup_sessions(pg_server.admin_dsn, child.pid, pg_dump=False)


def test_kill_9_of_the_backup_leaves_no_session(pg_server, big_db, tmp_path, spawn):
    child = start_backup(spawn, big_db, tmp_path / "bk")
    during = catch_mid_copy(pg_server, child)
    assert len(during) >= 3 and worker_processes(child.pid)
    workers = worker_processes(child.pid)
    # The command runs no other thread: its workers are forks (no interpreter spawned anew).
    assert not [cmd for _, cmd in children(child.pid) if "spawn_main" in cmd or "resource_tracker" in cmd]
    time.sleep(0.3)  # the worker finishes its item and idles in its transaction, as in the issue
    assert len(backup_sessions(pg_server.admin_dsn, child.pid, pg_dump=False)) >= 3

    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = wait_for(lambda: not backup_sessions(pg_server.admin_dsn, child.pid), 5)
    assert left, backup_sessions(pg_server.admin_dsn, child.pid)
    # The worker processes died with their parent (PR_SET_PDEATHSIG), not just their sessions.
    assert wait_for(lambda: not any(Path(f"/proc/{w}").exists() and "Z" not in _state(w) for w in workers), 5)
    # kill -9 cannot clean up: an unfinished .tmp folder stays, and is never a snapshot.
    assert snapshot_dirs(tmp_path / "bk") == []
    # (the staging folder, the schema's scratch folder if pg_dump's output was being split, and
    # the lock with its holder's last sign of life)
    left_over = [p.name for p in (tmp_path / "bk").iterdir() if p.name != ".lock"]
    assert all(name.startswith((".tmp-", ".lock.alive-")) for name in left_over), left_over
    # The source can be altered at once: no stranded lock.
    with psycopg.connect(big_db, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '2s'")
        conn.execute("ALTER TABLE big ADD COLUMN extra int")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_sigterm_of_the_backup_cleans_up_like_ctrl_c(pg_server, big_db, tmp_path, spawn):
    child = start_backup(spawn, big_db, tmp_path / "bk")
    catch_mid_copy(pg_server, child)
    assert list((tmp_path / "bk").glob(".tmp-*")) and (tmp_path / "bk" / ".lock").exists()
    os.kill(child.pid, signal.SIGTERM)
    os.kill(child.pid, signal.SIGCONT)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out, out
    assert wait_for(lambda: not backup_sessions(pg_server.admin_dsn, child.pid), 5), backup_sessions(
        pg_server.admin_dsn, child.pid
    )
    # No .tmp-*, no snapshot, no .lock: the folder this backup created is gone altogether.
    assert not (tmp_path / "bk").exists()


def _lock_holder(dsn: str, table: str, ready: threading.Event, release: threading.Event, got: dict):
    """Take ACCESS EXCLUSIVE on ``table`` (waiting as long as it must) and hold it until ``release``."""
    with psycopg.connect(dsn) as conn:
        got["pid"] = conn.info.backend_pid
        ready.set()
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        got["locked_at"] = time.monotonic()
        release.wait(60)
        conn.rollback()


def _waiting(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[
            0
        ]


def test_a_locked_table_fails_the_backup_within_the_lock_wait_limit(small_db_locked, tmp_path):
    dsn = small_db_locked
    started = time.monotonic()
    with pytest.raises(backupkit.SourceError) as err:
        backupkit.backup(dsn, tmp_path, lock_wait_timeout=1.5, progress=False)
    assert time.monotonic() - started < 15
    assert "public.orders" in str(err.value) and "lock" in str(err.value)
    assert "`lock_wait_timeout`" in err.value.hint  # the CLI shows its flag instead
    assert exit_code(err.value) == 5
    assert list(tmp_path.iterdir()) == []


def test_a_table_locked_after_it_was_measured_is_named_though_all_are_locked_at_once(make_db, tmp_path, monkeypatch):
    # The snapshot's session locks every table in one statement (one round trip to a remote
    # database, not one per table); a migration that took a table in between is still named.
    dsn = make_db("late_lock")
    load_small(dsn)
    ready, release, got = threading.Event(), threading.Event(), {}
    holder = threading.Thread(target=_lock_holder, args=(dsn, "orders", ready, release, got))
    fix_moment = backupkit.capture.job.BackupJob._fix_moment

    def locked_meanwhile(self, *args, **kwargs):
        holder.start()
        assert wait_for(lambda: "locked_at" in got, 10)
        return fix_moment(self, *args, **kwargs)

    monkeypatch.setattr(backupkit.capture.job.BackupJob, "_fix_moment", locked_meanwhile)
    try:
        with pytest.raises(backupkit.SourceError) as err:
            backupkit.backup(dsn, tmp_path, lock_wait_timeout=1, progress=False)
    finally:
        release.set()
        holder.join()
    assert str(err.value).startswith("table public.orders is locked by another session"), err.value
    assert exit_code(err.value) == 5
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_db_locked(make_db):
    """A small database whose ``orders`` another session holds in ACCESS EXCLUSIVE mode."""
    dsn = make_db("locked")
    load_small(dsn)
    ready, release, got = threading.Event(), threading.Event(), {}
    holder = threading.Thread(target=_lock_holder, args=(dsn, "orders", ready, release, got))
    holder.start()
    assert wait_for(lambda: "locked_at" in got, 10)
    yield dsn
    release.set()
    holder.join()


def test_a_table_locked_before_the_backup_without_a_lock_wait_limit_ends_at_the_time_limit(
    small_db_locked, tmp_path, pg_server
):
    """Measuring the tables (before the snapshot, before the watchdog starts) waits for the
    lock for ever; the run's time limit still ends it, on time and reported as such."""
    started = time.monotonic()
    with pytest.raises(backupkit.SourceError) as err:
        backupkit.backup(small_db_locked, tmp_path, lock_wait_timeout=0, timeout=2, progress=False)
    assert time.monotonic() - started < 6
    assert "time limit (2 s)" in str(err.value) and "`timeout`" in err.value.hint, err.value
    assert exit_code(err.value) == 5
    assert list(tmp_path.iterdir()) == []
    assert not backup_sessions(pg_server.admin_dsn, os.getpid())


def test_cli_exits_5_naming_the_locked_table(small_db_locked, tmp_path, spawn):
    child = spawn(
        CHILD,
        json.dumps({}),
        "backup",
        "--dsn",
        small_db_locked,
        "--to",
        str(tmp_path / "bk"),
        "--quiet",
        "--lock-wait-timeout",
        "1",
    )
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 5, out
    assert out.startswith("error: table public.orders is locked by another session") and "hint:" in out, out


def _migration_meanwhile(dsn: str, state: dict):
    """An on_snapshot hook: a migration asks for ACCESS EXCLUSIVE on orders after the backup
    locked it; it queues behind the backup, and the backup's next reads of orders behind it."""
    ready, release = threading.Event(), threading.Event()
    state["release"] = release

    def hook(_snapshot):
        th = threading.Thread(target=_lock_holder, args=(dsn, "orders", ready, release, state))
        th.start()
        state["thread"] = th
        ready.wait(10)
        assert wait_for(lambda: _waiting(dsn, state["pid"]), 10)

    return hook


def test_a_migration_started_mid_backup_fails_it_within_the_limit_and_goes_ahead(small_db, tmp_path, pg_server):
    state: dict = {}
    started = time.monotonic()
    try:
        with pytest.raises(backupkit.SourceError) as err:
            backupkit.backup(
                small_db,
                tmp_path,
                lock_wait_timeout=1.5,
                progress=False,
                on_snapshot=_migration_meanwhile(small_db, state),
            )
        assert time.monotonic() - started < 20
        assert "public.orders" in str(err.value) and "exclusive lock" in str(err.value), err.value
        assert exit_code(err.value) == 5
        assert wait_for(lambda: "locked_at" in state, 5)  # the migration got its lock once the backup gave up
        assert list(tmp_path.iterdir()) == []
        assert not backup_sessions(pg_server.admin_dsn, os.getpid())
    finally:
        state["release"].set()
        state["thread"].join()


def test_the_run_timeout_stops_a_stuck_backup(small_db, tmp_path, pg_server):
    """pg_dump waits for ever on a queued lock (no lock-wait limit): the run's timeout ends it all."""
    state: dict = {}
    started = time.monotonic()
    try:
        with pytest.raises(backupkit.SourceError) as err:
            backupkit.backup(
                small_db,
                tmp_path,
                lock_wait_timeout=0,
                timeout=3,
                progress=False,
                on_snapshot=_migration_meanwhile(small_db, state),
            )
        assert time.monotonic() - started < 20
        assert "time limit (3 s)" in str(err.value) and "`timeout`" in err.value.hint
        assert exit_code(err.value) == 5
        assert wait_for(lambda: "locked_at" in state, 5)
        assert list(tmp_path.iterdir()) == []
        assert not backup_sessions(pg_server.admin_dsn, os.getpid())
    finally:
        state["release"].set()
        state["thread"].join()


def test_the_run_timeout_kills_a_hung_worker_process(pg_server, big_db, tmp_path, spawn):
    # Long enough to reach the copy on a loaded machine; the test then waits it out.
    child = start_backup(spawn, big_db, tmp_path / "bk", timeout=12)
    catch_mid_copy(pg_server, child)
    for w in worker_processes(child.pid):
        os.kill(w, signal.SIGSTOP)  # a worker that hangs: the main process waits for it
    os.kill(child.pid, signal.SIGCONT)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 5, out
    assert "time limit (12 s)" in out and "Traceback" not in out, out
    assert wait_for(lambda: not backup_sessions(pg_server.admin_dsn, child.pid), 5)
    assert not (tmp_path / "bk").exists()  # created by this run: removed with everything in it


def test_idle_sessions_of_a_live_backup_are_kept_and_stranded_ones_end(small_db, tmp_path, pg_server, monkeypatch):
    """With a 1 s idle-in-transaction limit, a backup idle for 3 s (in on_snapshot) still
    completes: its keep-alive pings.  A session nobody pings ends by itself."""
    monkeypatch.setattr(backupkit.capture.sessions, "IDLE_TIMEOUT", 1)
    monkeypatch.setattr(backupkit.capture.sessions, "PING_EVERY", 0.2)
    res = backupkit.backup(small_db, tmp_path, progress=False, on_snapshot=lambda _s: time.sleep(3))
    assert res.rows > 0

    spec = backupkit.capture.sessions.SessionSpec(small_db, application=f"backupkit backup {os.getpid()} stranded")
    conn = spec.connect()
    conn.execute("SELECT 1")  # now idle in transaction, and nobody pings it
    assert backup_sessions(pg_server.admin_dsn, os.getpid())
    assert wait_for(lambda: not backup_sessions(pg_server.admin_dsn, os.getpid()), 5)
    conn.close()


def test_session_limits_are_set(small_db, tmp_path):
    seen = {}
    session = backupkit.capture.sessions.SessionSpec(
        small_db, lock_wait_timeout=2.5, deadline=time.time() + 100, server_version_num=180000
    )
    with session.connect() as conn:
        for name in ("lock_timeout", "idle_in_transaction_session_timeout", "statement_timeout"):
            seen[name] = conn.execute(f"SHOW {name}").fetchone()[0]
        version = conn.info.server_version
        if version >= 170000:
            seen["transaction_timeout"] = conn.execute("SHOW transaction_timeout").fetchone()[0]
    assert seen["lock_timeout"] == "2500ms"
    assert seen["idle_in_transaction_session_timeout"] == f"{backupkit.capture.sessions.IDLE_TIMEOUT}s"
    assert seen["statement_timeout"].endswith(("s", "min")) and seen["statement_timeout"] != "0"
    if "transaction_timeout" in seen:
        assert seen["transaction_timeout"] == seen["statement_timeout"]


@pytest.mark.parametrize("bad", [-1, float("nan"), "soon"])
def test_time_limits_are_checked(small_db, tmp_path, bad):
    for kw in ("timeout", "lock_wait_timeout"):
        with pytest.raises(backupkit.ConfigError):
            backupkit.backup(small_db, tmp_path, **{kw: bad})


_SCHEMA_WAITS = r"""
import sys, time
import backupkit

def exported(snapshot_id):
    print("exported", flush=True)
    time.sleep(1.5)  # the test queues its ACCESS EXCLUSIVE request meanwhile: pg_dump's LOCK waits behind it

try:
    backupkit.backup(sys.argv[1], sys.argv[2], on_snapshot=exported, progress=False)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigterm_while_pg_dump_waits_for_a_lock_ends_the_backup_at_once(make_db, tmp_path, spawn):
    """systemd, docker and `timeout` send SIGTERM to backupkit alone: its pg_dump of the schema,
    waiting for a table's lock, must not keep the backup (and its repository lock) alive."""
    dsn = make_db("src")
    load_small(dsn)
    child = spawn(_SCHEMA_WAITS, dsn, str(tmp_path))
    assert child.stdout.readline().strip() == "exported"
    blocker = psycopg.connect(dsn)
    waiting = threading.Thread(
        target=lambda: blocker.execute("LOCK TABLE public.customers IN ACCESS EXCLUSIVE MODE"), daemon=True
    )
    try:
        waiting.start()  # queued behind the backup's ACCESS SHARE; pg_dump's LOCK queues behind it
        time.sleep(3)
        child.send_signal(signal.SIGTERM)
        # Within the half of the lock-wait limit (60 s) pg_dump would otherwise wait.
        assert child.wait(timeout=30) == 130
    finally:
        blocker.cancel_safe()
        waiting.join(timeout=10)
        blocker.close()
    assert snapshot_dirs(tmp_path) == [] and not any(tmp_path.glob(".tmp-*"))
    assert not (tmp_path / ".lock").exists()
