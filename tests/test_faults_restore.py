"""A restore stopped from outside: SIGTERM, kill -9, a server restart, a lost connection.

After any of them the target is unchanged, fully restored, or visibly marked as an
unfinished restore (schema ``_backupkit``), and the message says which.  The restore
runs in a child process, as a scheduled job would; the child's loads pause after
their first table so the signal always lands mid-load (only the timing is changed).
"""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from fingerprint import fingerprint
from helpers import load_small, run_cli

import backupkit
from backupkit.errors import RestoreError
from backupkit.pg.embedded import temporary_server

# The child restores with --jobs 2 and, after each table's load, says so and waits in the server.
_CHILD = r"""
import sys, time, threading
import importlib
r = importlib.import_module("backupkit.recovery.job")  # the module: backupkit.recovery.job is the function
real = r.copy_in
said = threading.Lock()  # parallel loads finish together: one whole line each ("loadedloaded" otherwise)
def paused(conn, *args, **kw):
    n = real(conn, *args, **kw)
    with said:
        print("loaded", flush=True)
    conn.execute("SELECT pg_sleep(60)")  # server-side, like a long COPY: a cancel ends it
    return n
r.copy_in = paused
try:
    r.restore(sys.argv[1], sys.argv[2], jobs=2)
except KeyboardInterrupt:
    sys.exit(130)
"""


def _marked(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT to_regnamespace('_backupkit') IS NOT NULL").fetchone()[0]


@pytest.fixture
def small_snapshot(make_db, tmp_path):
    source = make_db("src")
    load_small(source)
    return source, backupkit.backup(source, tmp_path)


def _start_and_wait_for_load(spawn, snapshot, target) -> subprocess.Popen:
    child = spawn(_CHILD, str(snapshot), target)
    assert child.stdout.readline().strip() == "loaded", "the child restore never reached its load"
    assert _marked(target), "a parallel restore must mark the target while it runs"
    return child


def test_sigterm_mid_parallel_restore_undoes_it_and_exits_130(small_snapshot, make_db, spawn):
    _, res = small_snapshot
    target = make_db("tgt")
    before = fingerprint(target)
    child = _start_and_wait_for_load(spawn, res.path, target)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 130
    assert fingerprint(target) == before  # the objects it created are gone, the mark too
    assert not _marked(target)


def test_kill_9_mid_parallel_restore_leaves_a_mark_that_the_next_restore_reports(small_snapshot, make_db, spawn):
    source, res = small_snapshot
    target = make_db("tgt")
    child = _start_and_wait_for_load(spawn, res.path, target)
    child.kill()
    child.wait(timeout=30)
    assert _marked(target)  # nothing could undo it: visibly marked
    out = run_cli("restore", res.path, "--dsn", target, "--dry-run")
    assert out.returncode == 9 and "Traceback" not in out.stderr
    assert f"a restore of snapshot {res.id}" in out.stderr and "did not finish" in out.stderr
    assert "--clean" in out.stderr
    # One table with --clean would clear the mark and leave the others half-loaded, unflagged.
    one = run_cli("restore", res.path, "--dsn", target, "--clean", "--table", "public.customers", "--dry-run")
    assert one.returncode == 9 and "this restore would not replace public." in one.stderr, one.stderr
    assert _marked(target)
    out = run_cli("restore", res.path, "--dsn", target, "--clean", "-q")
    assert out.returncode == 0, out.stderr
    assert "replacing what an unfinished restore left" in out.stdout
    assert not _marked(target)
    assert fingerprint(target) == fingerprint(source)


def test_server_restart_mid_parallel_restore_keeps_the_cause_and_says_what_is_left(tmp_path, spawn):
    server = temporary_server().start()  # its own server: this test restarts it
    try:
        source, target = server.createdb("src"), server.createdb("tgt")
        load_small(source)
        res = backupkit.backup(source, tmp_path)
        before = fingerprint(target)
        child = spawn(
            _CHILD.replace(
                "except KeyboardInterrupt",
                "except Exception as e:\n    print(e, flush=True)\n    sys.exit(9)\nexcept KeyboardInterrupt",
            ),
            str(res.path),
            target,
        )
        assert child.stdout.readline().strip() == "loaded"
        restarted = server._pg(
            "pg_ctl",
            "restart",
            "-m",
            "fast",
            "-w",
            "-D",
            str(server.datadir),
            "-l",
            str(server.datadir / "server.log"),
            stdin=subprocess.DEVNULL,
        )
        assert restarted.returncode == 0, restarted.stderr
        assert child.wait(timeout=120) == 9
        message = child.stdout.read()
        assert "terminat" in message or "shutting down" in message or "connection" in message, message
        if _marked(target):
            assert "stays marked as an unfinished restore" in message
        else:
            assert "were dropped again" in message and fingerprint(target) == before
    finally:
        server.stop()


def _after_losing_the_session(real, target: str):
    """``real`` (called with a connection first), run after the server has ended that
    connection's session, as a restarted pooler or a killed backend would."""

    def lose_connection(conn, *args, **kw):
        with psycopg.connect(target, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return real(conn, *args, **kw)

    return lose_connection


def test_a_lost_connection_in_a_one_transaction_restore_is_one_clear_error(small_snapshot, make_db, monkeypatch):
    _, res = small_snapshot
    target = make_db("tgt")
    before = fingerprint(target)
    restore_module = importlib.import_module("backupkit.recovery.job")
    monkeypatch.setattr(restore_module, "copy_in", _after_losing_the_session(restore_module.copy_in, target))
    with pytest.raises(RestoreError) as err:
        backupkit.restore(res.path, target)
    assert "rolled back, the target is unchanged" in str(err.value)
    assert fingerprint(target) == before


def test_the_cli_reports_a_lost_connection_without_a_traceback(small_snapshot, make_db):
    _, res = small_snapshot
    target = make_db("tgt")
    code = (
        _CHILD.replace('conn.execute("SELECT pg_sleep(60)")', "pass")
        .replace(
            "n = real(conn, *args, **kw)",
            "import psycopg\n    psycopg.connect(sys.argv[2], autocommit=True)"
            ".execute('SELECT pg_terminate_backend(%s)', (conn.info.backend_pid,))\n"
            "    n = real(conn, *args, **kw)",
        )
        .replace(
            "r.restore(sys.argv[1], sys.argv[2], jobs=2)",
            "from backupkit.cli import main\n    sys.exit(main(['restore', sys.argv[1], '--dsn', sys.argv[2], '-q']))",
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(res.path), target], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 9, out.stderr
    assert "Traceback" not in out.stderr and "the target is unchanged" in out.stderr


def test_a_restore_that_outlives_its_timeout_is_rolled_back_and_says_so(small_snapshot, make_db, monkeypatch):
    _, res = small_snapshot
    target = make_db("tgt")
    before = fingerprint(target)
    restore_module = importlib.import_module("backupkit.recovery.job")
    real = restore_module.copy_in

    def slow(conn, *args, **kw):
        conn.execute("SELECT pg_sleep(30)")  # stands for a load that takes too long
        return real(conn, *args, **kw)

    monkeypatch.setattr(restore_module, "copy_in", slow)
    for jobs in (1, 2):
        with pytest.raises(RestoreError) as err:
            backupkit.restore(res.path, target, jobs=jobs, timeout=1.5)
        assert "did not finish within its time limit (1.5 s)" in str(err.value)
        assert fingerprint(target) == before


def test_a_restore_waiting_for_a_lock_gives_up_after_the_lock_wait_timeout(small_snapshot, make_db):
    """In place into a live database: a long transaction holds the table; the restore must
    not wait forever (queueing the application's queries behind its own lock request)."""
    source, res = small_snapshot
    with psycopg.connect(source) as holder:
        holder.execute("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE")
        out = run_cli(
            "restore",
            res.path,
            "--dsn",
            source,
            "--table",
            "public.orders",
            "--clean",
            "--lock-wait-timeout",
            "1",
            "-q",
        )
    assert out.returncode == 9, out.stderr
    assert "lock timeout" in out.stderr and "Traceback" not in out.stderr


# -- the undo of a failed parallel restore ---------------------------------------------------------


@pytest.fixture
def extension_snapshot(make_db, tmp_path):
    """A snapshot whose tables need an extension (citext, in its own schema) a new database lacks."""
    source = make_db("src")
    with psycopg.connect(source) as conn:
        conn.execute(
            "CREATE SCHEMA ext; CREATE EXTENSION citext WITH SCHEMA ext;"
            "CREATE TABLE people (id int PRIMARY KEY, name ext.citext);"
            "INSERT INTO people SELECT i, 'Name ' || i FROM generate_series(1, 500) i;"
            "CREATE TABLE notes (id int PRIMARY KEY, body text);"
            "INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 500) i"
        )
    return backupkit.backup(source, tmp_path, progress=False)


def _extensions_and_schemas(dsn: str) -> tuple[list, list]:
    with psycopg.connect(dsn) as conn:
        extensions = conn.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall()
        schemas = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' ORDER BY 1").fetchall()
    return extensions, schemas


def test_a_failed_parallel_restore_drops_the_extensions_it_created(extension_snapshot, make_db, monkeypatch):
    target = make_db("tgt")
    before = _extensions_and_schemas(target)
    restore_module = importlib.import_module("backupkit.recovery.job")

    def fail(conn, *args, **kw):
        raise OSError("the disk holding the snapshot went away")

    monkeypatch.setattr(restore_module, "copy_in", fail)

    with pytest.raises(RestoreError) as err:
        backupkit.restore(extension_snapshot.path, target, jobs=2, progress=False)

    assert "were dropped again" in str(err.value)
    assert _extensions_and_schemas(target) == before  # no citext, no schema ext, no mark
    assert not _marked(target)


def test_an_undo_that_cannot_take_its_locks_gives_up_and_says_the_target_stays_marked(
    extension_snapshot, make_db, monkeypatch
):
    """Another session reading a table the restore created: the undo's DROP waits for its lock
    no longer than the restore's lock-wait limit, then says what is left, instead of hanging."""
    target = make_db("tgt")
    restore_module = importlib.import_module("backupkit.recovery.job")
    reader = psycopg.connect(target)

    def fail(conn, *args, **kw):
        reader.execute("SELECT count(*) FROM _backupkit.restore_in_progress")  # holds ACCESS SHARE
        raise OSError("the disk holding the snapshot went away")

    monkeypatch.setattr(restore_module, "copy_in", fail)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            backupkit.restore(extension_snapshot.path, target, jobs=2, lock_wait_timeout=1, progress=False)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    try:
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "the undo waited for its lock without limit"
    finally:
        reader.close()  # lets a hung undo go on, so the test ends either way
        worker.join()
    [err] = outcome
    assert isinstance(err, RestoreError) and "could NOT all be dropped" in str(err)
    assert "_backupkit" in str(err) and "`clean`" in str(err)
    assert _marked(target)
    monkeypatch.undo()
    backupkit.restore(extension_snapshot.path, target, clean=True, progress=False)
    assert not _marked(target)


_UNDO_CHILD = r"""
import sys, importlib, logging, psycopg
from backupkit.errors import RestoreError
logging.basicConfig(stream=sys.stdout, format="%(levelname)s: %(message)s")
r = importlib.import_module("backupkit.recovery.job")
reader = psycopg.connect(sys.argv[2])
def fail(conn, *args, **kw):
    reader.execute("SELECT count(*) FROM _backupkit.restore_in_progress")  # holds ACCESS SHARE
    print("failing", flush=True)
    raise OSError("the disk holding the snapshot went away")
r.copy_in = fail
try:
    r.restore(sys.argv[1], sys.argv[2], jobs=2, lock_wait_timeout=3)
except RestoreError as exc:
    print(exc, flush=True)
    sys.exit(9)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_during_the_undo_does_not_cut_it_short(extension_snapshot, make_db, spawn):
    target = make_db("tgt")
    child = spawn(_UNDO_CHILD, str(extension_snapshot.path), target)
    assert child.stdout.readline().strip() == "failing"
    time.sleep(0.5)  # the undo is waiting for the reader's lock now
    child.send_signal(signal.SIGINT)
    child.send_signal(signal.SIGINT)

    assert child.wait(timeout=60) == 9  # the restore's own error, after the undo ran its course
    err = child.stdout.read()
    assert "undoing the restore first" in err
    assert "could NOT all be dropped" in err and "_backupkit" in err
    assert _marked(target)


def test_a_connection_lost_while_planning_is_one_clear_error_and_changes_nothing(small_snapshot, make_db, monkeypatch):
    """Planning only reads the target: a connection lost there (a restarted pooler, a killed
    session) says so in one line, without waiting for the snapshot's hash to finish."""
    _, res = small_snapshot
    target = make_db("tgt")
    before = fingerprint(target)
    plan_module = importlib.import_module("backupkit.recovery.plan")
    monkeypatch.setattr(plan_module, "read_target", _after_losing_the_session(plan_module.read_target, target))
    with pytest.raises(RestoreError) as err:
        backupkit.restore(res.path, target, jobs=2, progress=False)

    assert str(err.value).startswith("cannot read what the target database has, nothing was changed: ")
    assert fingerprint(target) == before


def _sequence(dsn: str, name: str) -> tuple:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT last_value, is_called FROM {name}").fetchone()


def test_a_failed_in_place_restore_leaves_the_targets_sequences_as_they_were(make_db, tmp_path):
    """setval is not undone by a rollback.  An in-place restore that the foreign-key check stops
    said "the target is unchanged" but had rewound orders_id_seq to the snapshot's value: the
    app's next INSERT took an id that exists."""
    dsn = make_db("seqs")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE orders (id serial PRIMARY KEY, x int);
            CREATE TABLE line_items (id serial PRIMARY KEY, order_id int REFERENCES orders);
            INSERT INTO orders (x) SELECT g FROM generate_series(1, 5) g""")
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    with psycopg.connect(dsn, autocommit=True) as conn:  # later: orders 6-8, and an item of order 7
        conn.execute("INSERT INTO orders (x) SELECT g FROM generate_series(6, 8) g")
        conn.execute("INSERT INTO line_items (order_id) VALUES (7)")
    before = _sequence(dsn, "orders_id_seq")
    assert before == (8, True)

    with pytest.raises(RestoreError, match="break foreign keys.*rolled back, the target is unchanged"):
        backupkit.restore(snap, dsn, tables=["public.orders"], clean=True, progress=False)

    assert _sequence(dsn, "orders_id_seq") == before
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("INSERT INTO orders (x) VALUES (99) RETURNING id").fetchone() == (9,)


def test_a_data_only_restore_whose_view_refresh_fails_leaves_the_sequences_as_they_were(make_db, tmp_path):
    """The same after a materialized view's refresh gave up on a lock an app's report held."""
    dsn = make_db("seqmv")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE t (id serial PRIMARY KEY, x int);
            INSERT INTO t (x) SELECT g FROM generate_series(1, 5) g;
            CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM t""")
    snap = backupkit.backup(dsn, tmp_path, progress=False).path
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t (x) SELECT g FROM generate_series(6, 50) g")
    before = _sequence(dsn, "t_id_seq")
    with psycopg.connect(dsn) as report:
        report.execute("SELECT * FROM mv").fetchall()  # a report reading mv in a long transaction
        with pytest.raises(RestoreError, match="rolled back, the target is unchanged"):
            backupkit.restore(snap, dsn, data_only=True, clean=True, lock_wait_timeout=1, progress=False)
    assert _sequence(dsn, "t_id_seq") == before
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (50,)
