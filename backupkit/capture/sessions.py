"""The backup's database sessions: how each is opened, kept alive, and cut short.

Sessions end with their process: worker processes ask Linux to SIGKILL them
when the backup's process ends (``runtime.lifeline``; elsewhere a watchdog
thread notices the new parent), and every session sets
``idle_in_transaction_session_timeout`` to ``IDLE_TIMEOUT`` while a keep-alive
thread runs ``SELECT 1`` on it each ``PING_EVERY`` seconds it sits idle.  So
an idle session of a live backup never reaches the limit, however long it
waits (the main session waits through the whole copy), and one whose process
is gone, frozen or cut off ends within ``IDLE_TIMEOUT``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psycopg
from psycopg import pq, sql

from ..errors import SourceError
from ..pg.dsn import connect

#: Server-side idle-in-transaction limit of every backup session, in seconds.  Live sessions
#: are kept busy (``KeepAlive``), so only a session whose process stopped reaches it.
IDLE_TIMEOUT = 10
#: How often an idle backup session is kept busy: a tenth of ``IDLE_TIMEOUT``, so a backup
#: survives a process stalled for several seconds (swap, a paused VM) without losing a session.
PING_EVERY = 1.0


@dataclass(frozen=True)
class SessionSpec:
    """How every connection of one backup is opened: DSN, ``application_name`` and limits.

    ``deadline`` (``time.time()`` seconds) is the run's end: each session gets
    ``statement_timeout`` (and ``transaction_timeout`` from PostgreSQL 17) a little past
    it, so the server ends the backup's work by itself even if backupkit cannot.
    """

    dsn: str
    application: str = "backupkit"
    lock_wait_timeout: float | None = None
    deadline: float | None = None
    server_version_num: int = 0

    #: How far past the deadline the server-side limits lie: the watchdog acts first.
    MARGIN = 5.0

    def settings(self, margin: float = MARGIN) -> dict[str, str]:
        out = {
            "lock_timeout": str(int((self.lock_wait_timeout or 0) * 1000)),
            "idle_in_transaction_session_timeout": str(IDLE_TIMEOUT * 1000),
        }
        if self.deadline is not None:
            left = max(1, int((self.deadline - time.time() + margin) * 1000))
            out["statement_timeout"] = str(left)
            if self.server_version_num >= 170000:
                out["transaction_timeout"] = str(left)
        return out

    @property
    def tool_application(self) -> str:
        """The ``application_name`` of the run's pg_dump sessions: the run's, marked as pg_dump's."""
        return f"{self.application} pg_dump"

    def connect(self, *, margin: float = MARGIN, **kw) -> psycopg.Connection:
        """A session of the run; its server-side limits lie ``margin`` s past the deadline
        (0 where no watchdog runs yet to act first)."""
        return connect(self.dsn, application=self.application, settings=self.settings(margin), **kw)


def _spec(session: SessionSpec | str) -> SessionSpec:
    return session if isinstance(session, SessionSpec) else SessionSpec(session)


def open_worker(session: SessionSpec | str, snapshot: str) -> psycopg.Connection:
    """A connection inside the exported snapshot, with row security off (as pg_dump does).

    BEGIN, SET TRANSACTION SNAPSHOT and the setting go out in one pipeline: one round
    trip before the worker's first COPY instead of three.
    """
    conn = _spec(session).connect()
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.pipeline():
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            conn.execute("SELECT pg_catalog.set_config('row_security', 'off', false)")
    except BaseException:
        conn.close()
        raise
    return conn


def lock_wait_error(table: str, seconds: float | None, *, by_backup: bool) -> SourceError:
    """The error for a table whose lock did not come within the lock-wait limit."""
    limit = f"the lock-wait limit ({seconds:g} s)" if seconds else "the lock-wait limit"
    if by_backup:
        # The backup already holds ACCESS SHARE; someone queued an exclusive request behind it,
        # and the second ACCESS SHARE (pg_dump's, a worker's) queues behind that request.
        why = (
            f"table {table} could not be read within {limit}: another session asked for an "
            "exclusive lock on it (a migration, ALTER TABLE, TRUNCATE, VACUUM FULL, REINDEX) "
            "while the backup was running, and waits for the backup, which waits for it"
        )
    else:
        why = (
            f"table {table} is locked by another session (a migration, ALTER TABLE, TRUNCATE, "
            f"VACUUM FULL, REINDEX) and was not free within {limit}"
        )
    return SourceError(
        why,
        hint="nothing was written; run the backup again once that session is done "
        "(pg_stat_activity shows it), raise `lock_wait_timeout`, or give "
        "migrations a lock_timeout so they give way to a backup",
    )


class KeepAlive:
    """Runs ``SELECT 1`` every ``PING_EVERY`` s on each registered session that sits idle in
    its transaction, so ``IDLE_TIMEOUT`` never ends a live backup's session.

    A session busy with a statement or a COPY holds its connection's lock and is skipped.
    With ``parent_pid`` (a worker process) it also ends this process as soon as the
    parent is gone, where ``PR_SET_PDEATHSIG`` is not available.
    """

    def __init__(self, parent_pid: int | None = None):
        self._conns: set[psycopg.Connection] = set()
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._parent = parent_pid
        self._thread = threading.Thread(target=self._run, name="backupkit-keepalive", daemon=True)
        self._thread.start()

    def add(self, conn: psycopg.Connection) -> None:
        with self._mu:
            self._conns.add(conn)

    def discard(self, conn: psycopg.Connection) -> None:
        """Stop pinging ``conn``; returns only once no ping of it is under way (safe to close)."""
        with self._mu:
            self._conns.discard(conn)

    def close(self) -> None:
        self._stop.set()
        with self._mu:
            self._conns.clear()

    def _run(self) -> None:
        while not self._stop.wait(PING_EVERY):
            if self._parent is not None and os.getppid() != self._parent:
                os._exit(1)  # orphaned worker: end, and its session with it
            with self._mu:
                for conn in list(self._conns):
                    _ping(conn)


def _ping(conn: psycopg.Connection) -> None:
    if conn.closed or not conn.lock.acquire(blocking=False):
        return  # closed, or running a statement: not idle
    try:
        pg = conn.pgconn
        if pg.transaction_status == pq.TransactionStatus.INTRANS:
            pg.exec_(b"SELECT 1")  # PQexec blocks even on a non-blocking connection
    except Exception:
        pass
    finally:
        conn.lock.release()


class Stopper:
    """Cuts a running backup short from any thread: on Ctrl-C/SIGTERM and at the run's timeout.

    Parts of the backup register what stops them (kill worker processes, cancel a
    query); ``stop`` runs all of them, and any registered later, once.
    """

    def __init__(self):
        self._mu = threading.Lock()
        self._hooks: dict[int, object] = {}
        self._n = 0
        self.stopped = False

    def add(self, hook) -> int:
        with self._mu:
            self._n += 1
            self._hooks[self._n] = hook
            stopped = self.stopped
        if stopped:
            _quietly(hook)
        return self._n

    def remove(self, key: int) -> None:
        with self._mu:
            self._hooks.pop(key, None)

    def stop(self) -> None:
        with self._mu:
            self.stopped = True
            hooks = list(self._hooks.values())
        for hook in hooks:
            _quietly(hook)


def _quietly(hook) -> None:
    try:
        hook()
    except Exception:
        pass


def _cancel(conns: list) -> None:
    for conn in list(conns):
        if not conn.closed:
            _quietly(lambda c=conn: c.cancel_safe(timeout=5))


def _kill_processes(pool) -> None:
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        _quietly(proc.kill)
