"""Copying a snapshot's tables in parallel, every worker inside the one exported snapshot.

Large tables are split into ctid ranges so ``--jobs`` can share one big table.
With ``jobs > 1`` and enough data, ``jobs - 1`` workers are processes and one
stream runs in this process: receiving COPY costs Python work per row, and
threads would serialise it on the GIL.  Small backups use threads, which
start instantly.  Chunk boundaries sit at fixed page multiples, so an unmoved
row keeps its chunk number from one snapshot to the next (``diff`` relies on it).

Sessions end with their process: worker processes ask Linux to SIGKILL them
when the backup's process ends (``PR_SET_PDEATHSIG``; elsewhere a watchdog
thread notices the new parent), and every session sets
``idle_in_transaction_session_timeout`` to ``IDLE_TIMEOUT`` while a keep-alive
thread runs ``SELECT 1`` on it each ``PING_EVERY`` seconds it sits idle.  So
an idle session of a live backup never reaches the limit, however long it
waits (the main session waits through the whole copy), and one whose process
is gone, frozen or cut off ends within ``IDLE_TIMEOUT``.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import psycopg
import psycopg.errors
from psycopg import pq, sql
from tqdm.auto import tqdm

from ..errors import SourceError
from ..pg import copyio
from ..pg.copyio import FileResult, copy_out, copy_source
from ..pg.dsn import connect
from ..snapshot import manifest as mf

#: Tables larger than this on disk are split into ctid ranges.
CHUNK_BYTES = 64 << 20
#: Below this much data, worker processes cost more to start than they save.
PROCESS_THRESHOLD = 64 << 20
_PAGE = 8192

#: Server-side idle-in-transaction limit of every backup session, in seconds.  Live sessions
#: are kept busy (``KeepAlive``), so only a session whose process stopped reaches it.
IDLE_TIMEOUT = 10
#: How often an idle backup session is kept busy: a tenth of ``IDLE_TIMEOUT``, so a backup
#: survives a process stalled for several seconds (swap, a paused VM) without losing a session.
PING_EVERY = 1.0


@dataclass(frozen=True)
class Item:
    """One COPY: a table (or one ctid range of it) into one data file."""

    table: dict
    n: int
    pages: tuple[int, int | None] | None
    dest: Path

    @property
    def key(self) -> str:
        return mf.table_key(self.table)


def page_ranges(relation_bytes: int, chunk_bytes: int, server_version_num: int) -> list[tuple[int, int | None] | None]:
    """[lo, hi) page ranges covering a table; ``[None]`` when it is not split.

    TID range scans need PostgreSQL 14+.  The last range is open-ended, so no
    row is lost if the table grew after it was measured.  Boundaries fall on
    multiples of ``chunk_bytes`` worth of pages, so they stay put as a table
    grows: a row that was not moved is in the same-numbered chunk in the next
    snapshot, which is what lets ``diff`` compare chunk by chunk.
    """
    if server_version_num < 140000 or relation_bytes <= chunk_bytes:
        return [None]
    bounds = list(range(0, relation_bytes // _PAGE, max(1, chunk_bytes // _PAGE)))
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:])] + [(bounds[-1], None)]


def plan(tables: list[dict], folder: Path, stems: dict[str, str], chunk_bytes: int,
         server_version_num: int) -> list[Item]:
    """Every COPY to run, largest tables first so the slowest work starts early."""
    items = []
    for t in sorted(tables, key=lambda t: -t["relation_bytes"]):
        for n, pages in enumerate(page_ranges(t["relation_bytes"], chunk_bytes, server_version_num)):
            name = f"{stems[mf.table_key(t)]}.{n:04d}{mf.DATA_SUFFIX[copyio.DATA_FORMAT]}"
            items.append(Item(t, n, pages, folder / "data" / name))
    return items


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

    def settings(self) -> dict[str, str]:
        out = {"lock_timeout": str(int((self.lock_wait_timeout or 0) * 1000)),
               "idle_in_transaction_session_timeout": str(IDLE_TIMEOUT * 1000)}
        if self.deadline is not None:
            left = max(1, int((self.deadline - time.time() + self.MARGIN) * 1000))
            out["statement_timeout"] = str(left)
            if self.server_version_num >= 170000:
                out["transaction_timeout"] = str(left)
        return out

    def connect(self, **kw) -> psycopg.Connection:
        return connect(self.dsn, application=self.application, settings=self.settings(), **kw)


def _spec(session: SessionSpec | str) -> SessionSpec:
    return session if isinstance(session, SessionSpec) else SessionSpec(session)


def open_worker(session: SessionSpec | str, snapshot: str) -> psycopg.Connection:
    """A connection inside the exported snapshot, with row security off (as pg_dump does)."""
    conn = _spec(session).connect()
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
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
        why = (f"table {table} could not be read within {limit}: another session asked for an "
               "exclusive lock on it (a migration, ALTER TABLE, TRUNCATE, VACUUM FULL, REINDEX) "
               "while the backup was running, and waits for the backup, which waits for it")
    else:
        why = (f"table {table} is locked by another session (a migration, ALTER TABLE, TRUNCATE, "
               f"VACUUM FULL, REINDEX) and was not free within {limit}")
    return SourceError(why, hint="nothing was written; run the backup again once that session is done "
                                 "(pg_stat_activity shows it), raise --lock-wait-timeout, or give "
                                 "migrations a lock_timeout so they give way to a backup")


def _copy_item(conn: psycopg.Connection, item: Item, folder: Path, spec: SessionSpec | None = None) -> FileResult:
    partial = not item.table["rls"]["bypassed"]
    try:
        if partial:  # --allow-partial: take the rows RLS shows instead of failing
            conn.execute("SELECT pg_catalog.set_config('row_security', 'on', false)")
        res = copy_out(conn, copy_source(item.table, item.pages), item.dest, folder)
        if partial:
            conn.execute("SELECT pg_catalog.set_config('row_security', 'off', false)")
    except psycopg.errors.LockNotAvailable:
        raise lock_wait_error(item.key, spec.lock_wait_timeout if spec else None, by_backup=True) from None
    return res


# -- sessions that end with their process ---------------------------------------------
_PR_SET_PDEATHSIG = 1
_prctl = None  # resolved before any fork: a preexec_fn must not load libraries


def _load_prctl():
    global _prctl
    if _prctl is None:
        _prctl = False
        if sys.platform.startswith("linux"):
            try:
                _prctl = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                pass
    return _prctl or None


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux), and end it now
    if the parent already has (it may have died before the request was made)."""
    prctl = _prctl if _prctl is not None else _load_prctl()
    if prctl:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def dies_with_us():
    """A ``preexec_fn`` for child tools (pg_dump): they end with this process, and so do
    their sessions and the locks they hold.  (PR_SET_PDEATHSIG fires when the thread that
    started the child ends; backupkit starts them from the thread running the backup.)"""
    _load_prctl()
    parent = os.getpid()
    return lambda: die_with_parent(parent)


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


# -- worker processes ------------------------------------------------------------------
_process_conn: psycopg.Connection | None = None
_process_error: BaseException | None = None
_process_spec: SessionSpec | None = None
_process_keepalive: KeepAlive | None = None


def _init_process(session: SessionSpec, snapshot: str, parent_pid: int) -> None:
    # An initializer that raises only "breaks" the pool; keep the error for the first task,
    # which carries it back to the parent with its message and hint.
    global _process_conn, _process_error, _process_spec, _process_keepalive
    die_with_parent(parent_pid)
    _process_spec = session
    _process_keepalive = KeepAlive(parent_pid)
    try:
        _process_conn = open_worker(session, snapshot)
        _process_keepalive.add(_process_conn)
    except BaseException as exc:
        _process_error = exc


def _run_in_process(item: Item, folder: Path) -> FileResult:
    if _process_error is not None:
        raise _process_error
    return _copy_item(_process_conn, item, folder, _process_spec)


class _Progress:
    """Counts finished tables (a table is done when all its chunks are)."""

    def __init__(self, items: list[Item], show: bool):
        self.left: dict[str, int] = {}
        for it in items:
            self.left[it.key] = self.left.get(it.key, 0) + 1
        self.rows = 0
        self.lock = threading.Lock()
        self.bar = tqdm(total=len(self.left), unit="table", desc="backup", disable=not show, file=sys.stderr)

    def done(self, item: Item, res: FileResult) -> None:
        with self.lock:
            self.rows += res.rows
            self.left[item.key] -= 1
            if self.left[item.key] == 0:
                self.bar.update(1)
                self.bar.set_postfix(rows=self.rows, refresh=False)


def copy_all(session: SessionSpec | str, snapshot: str, items: list[Item], folder: Path, jobs: int,
             progress: bool | None, *, keepalive: KeepAlive | None = None,
             stopper: Stopper | None = None) -> dict[str, list[FileResult]]:
    """Run every item with ``jobs`` workers; results per table, chunks in order.

    ``stopper.stop()`` (another thread: the run's timeout) kills the worker processes and
    cancels the in-process queries; this then raises.
    """
    session = _spec(session)
    show = sys.stderr.isatty() if progress is None else progress
    prog = _Progress(items, show)
    results: dict[tuple[str, int], FileResult] = {}
    big = sum(it.table["relation_bytes"] for it in items if it.n == 0) > PROCESS_THRESHOLD
    own_keepalive = keepalive is None
    keepalive = keepalive or KeepAlive()
    stopper = stopper or Stopper()
    try:
        if jobs > 1 and len(items) > 1 and big:
            _with_processes(session, snapshot, items, folder, jobs, prog, results, keepalive, stopper)
        else:
            _with_threads(session, snapshot, items, folder, jobs, prog, results, keepalive, stopper)
    finally:
        prog.bar.close()
        if own_keepalive:
            keepalive.close()
    by_table: dict[str, list[FileResult]] = {it.key: [] for it in items}
    for it in sorted(items, key=lambda i: (i.key, i.n)):
        by_table[it.key].append(results[it.key, it.n])
    return by_table


class _Streams:
    """The in-process streams' connections, so a stop can cancel what they are running."""

    def __init__(self, keepalive: KeepAlive):
        self.keepalive = keepalive
        self.conns: list[psycopg.Connection] = []
        self.lock = threading.Lock()

    def cancel(self) -> None:
        with self.lock:
            conns = list(self.conns)
        _cancel(conns)


def _with_processes(session, snapshot, items, folder, jobs, prog, results, keepalive, stopper) -> None:
    """``jobs - 1`` worker processes and one stream in this process, all taking from one queue.

    Processes keep the per-row receive loops off one GIL; the stream here saves
    one of them (each imports psycopg and zstd, ~45 MB).  Items go to a process
    one at a time, as it becomes free, so no stream sits idle with work left.
    Each worker process dies with this one (``die_with_parent``).
    """
    work = _queue_of(items)
    errors: list[BaseException] = []
    stop = threading.Event()
    streams = _Streams(keepalive)
    here = threading.Thread(target=_drain, name="backupkit-copy-0",
                            args=(session, snapshot, work, folder, prog, results, errors, stop, streams))
    # spawn, not fork: a forked child would share the parent's libpq sockets.
    ctx = multiprocessing.get_context("spawn")
    pool_ref: list = []

    def cut_short() -> None:  # no waiting for items under way: they are thrown away
        stop.set()
        for pool in pool_ref:
            _kill_processes(pool)
        streams.cancel()

    hook = stopper.add(cut_short)
    here.start()
    try:
        with ProcessPoolExecutor(max_workers=jobs - 1, mp_context=ctx, initializer=_init_process,
                                 initargs=(session, snapshot, os.getpid())) as pool:
            pool_ref.append(pool)
            running: dict = {}
            try:
                while True:
                    while len(running) < jobs - 1 and not stop.is_set():
                        try:
                            it = work.get_nowait()
                        except queue.Empty:
                            break
                        running[pool.submit(_run_in_process, it, folder)] = it
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        it = running.pop(f)
                        results[it.key, it.n] = f.result()
                        prog.done(it, results[it.key, it.n])
            except BaseException:
                cut_short()  # before the pool's exit waits for its processes: no new work here either
                raise
    except BrokenProcessPool as exc:
        cut_short()
        here.join()
        if stopper.stopped:  # we killed them (the run's timeout): the caller says why
            raise SourceError("the backup was stopped") from None
        raise SourceError(f"a backup worker process died ({exc})",
                          hint="check memory limits and the server log, then run the backup again") from None
    except BaseException:  # a worker's error or Ctrl-C: stop taking work before .tmp is removed
        cut_short()
        here.join()
        raise
    finally:
        stopper.remove(hook)
    here.join()
    if errors:
        raise errors[0]
    if stopper.stopped:
        raise SourceError("the backup was stopped")


def _queue_of(items: list[Item]) -> queue.Queue:
    work: queue.Queue = queue.Queue()
    for it in items:
        work.put(it)
    return work


def _drain(session, snapshot, work: queue.Queue, folder, prog, results, errors: list,
           stop: threading.Event, streams: _Streams) -> None:
    """Copy items from ``work`` on one connection until it is empty or ``stop`` is set."""
    try:
        conn = open_worker(session, snapshot)
    except BaseException as exc:
        errors.append(exc)
        stop.set()
        return
    with streams.lock:
        streams.conns.append(conn)
    streams.keepalive.add(conn)
    try:
        while not stop.is_set():
            try:
                it = work.get_nowait()
            except queue.Empty:
                return
            results[it.key, it.n] = _copy_item(conn, it, folder, session)
            prog.done(it, results[it.key, it.n])
    except BaseException as exc:
        errors.append(exc)
        stop.set()
    finally:
        streams.keepalive.discard(conn)
        with streams.lock:
            streams.conns.remove(conn)
        conn.close()


def _with_threads(session, snapshot, items, folder, jobs, prog, results, keepalive, stopper) -> None:
    work = _queue_of(items)
    errors: list[BaseException] = []
    stop = threading.Event()
    streams = _Streams(keepalive)
    threads = [threading.Thread(target=_drain, name=f"backupkit-copy-{i}",
                                args=(session, snapshot, work, folder, prog, results, errors, stop, streams))
               for i in range(max(1, min(jobs, len(items))))]

    def cut_short() -> None:
        stop.set()
        streams.cancel()

    hook = stopper.add(cut_short)
    try:
        for th in threads:
            th.start()
        try:
            for th in threads:
                th.join()
        except BaseException:  # Ctrl-C: stop taking work before the .tmp folder is removed
            cut_short()
            for th in threads:
                th.join()
            raise
    finally:
        stopper.remove(hook)
    if errors:
        raise errors[0]
    if stopper.stopped:
        raise SourceError("the backup was stopped")
