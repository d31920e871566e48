"""A restore with ``jobs > 1``: pre-data committed, data in parallel transactions, post-data last.

Each table's indexes build as soon as its data is in, ahead of the files still
queued (as ``pg_restore -j`` schedules them).  The first transaction also marks
the target as an unfinished restore (``recovery.mark``); on failure the objects
this restore created are dropped again, and anything that could not be undone
is named in the error.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator
from typing import NoReturn

import psycopg
from psycopg import sql

from ..errors import BackupkitError, RestoreError
from ..pg.dsn import apply_settings, connect, redact
from ..pg.rows import one_row
from ..runtime.progress import byte_bar
from ..runtime.signals import uninterrupted
from ..runtime.taskpool import TaskPool
from ..snapshot import manifest as mf
from . import mark as restore_mark
from .load import LoadRun, load_bytes, rollback

log = logging.getLogger("backupkit")

#: A unit of a parallel load: a table, the files of it to load, and whether to load them frozen.
Unit = tuple[dict, list[dict], bool]


def load_in_parallel(run: LoadRun, jobs: int) -> int:
    """Commit pre-data (and the mark), load the data on ``jobs`` connections, then post-data;
    undo on failure.  Returns the rows loaded."""
    # Made first: from the commit on, only load()'s own undo stands between a failure and the target.
    load = ParallelLoad(run, jobs)
    conn = connect(run.dsn)
    committing = False
    try:
        run.session(conn)
        run.prepare(conn)
        assert run.scripts.mark is not None  # a parallel restore always marks the target
        conn.execute(run.scripts.mark)  # committed with pre-data: visible until the last step
        committing = True
        conn.commit()
    except psycopg.Error as exc:
        lost = committing and conn.broken
        rollback(conn)
        conn.close()
        load.bar.close()
        if lost:  # the server may have committed before the connection went
            left = f"the target may have its tables, marked as an unfinished restore (schema {restore_mark.SCHEMA})"
            raise RestoreError(
                f"the connection was lost while the restore's schema was being committed: {run.why(exc)}; {left}",
                left_behind=left,
                hint="run the same restore again with `clean`, which replaces whatever it left",
            ) from None
        raise RestoreError(f"restore failed before loading data and was rolled back: {run.why(exc)}") from None
    except BaseException as exc:
        conn.close()
        load.bar.close()
        if committing:  # Ctrl-C while COMMIT was on its way: it may have landed, so undo
            _failed(run, exc)
        raise
    load.idle.append(conn)  # the first task goes on with this connection: one less to wait for
    return load.load()


class ParallelLoad:
    """The state of one parallel load, shared by its worker threads under ``lock``."""

    def __init__(self, run: LoadRun, jobs: int) -> None:
        self.run = run
        self.jobs = jobs
        self.bar = byte_bar(sum(load_bytes(t["files"]) for t in run.chosen), "restore", run.show)
        self.lock = threading.Lock()
        #: Connections running a task, cancelled at the first failure.
        self.live: set[psycopg.Connection] = set()
        #: Data files of each table (``schema.table``) not loaded yet.
        self.files_left = {mf.table_key(t): len(t["files"]) for t in run.chosen}
        self.rows_loaded = 0
        #: Load tasks not finished yet: while any is, index builds run without parallel workers.
        self.units_left = 0
        #: Set at the first failure: no task starts after it.
        self.stopping = threading.Event()
        #: Set once the pool has stopped: then there is nothing left to cancel.
        self.pool_done = threading.Event()
        self.pool = TaskPool(jobs, on_failure=self.cancel_running)
        #: Connections between two tasks, with the session's settings (``task_connection``);
        #: The one that created pre-data is the first (``load_in_parallel``).
        self.idle: list[psycopg.Connection] = []
        #: Set when the load has ended: a connection is no longer kept once its task is done.
        self.closing = False

    def load(self) -> int:
        """Queue every load, run them, then the rest of post-data; undo everything on failure."""
        run = self.run
        try:  # from here on, pre-data is committed: whatever happens is undone
            units = _load_units(run.chosen, self.jobs, run.plan.schema)
            self.units_left = len(units)
            for table, files, freeze in units:
                self.pool.submit(functools.partial(self.load_unit, table, files, freeze))
            for t in run.chosen:
                if not t["files"]:
                    self.table_done(mf.table_key(t))
            try:
                self.pool.run()
            finally:
                self.pool_done.set()
            self.finish()
        except BaseException as exc:
            self.close_idle()
            self.bar.close()
            _failed(run, exc)
        self.close_idle()
        self.bar.close()
        return self.rows_loaded

    def finish(self) -> None:
        """Large objects, the post-data the index groups left, the objects on the platform's tables,
        sequences and materialized views, pg_cron jobs; then clear the mark."""
        run = self.run
        with self.task_connection() as conn:
            run.large_objects(conn)
            # In a parallel restore the index groups already ran: only the rest is left.
            scripts = run.scripts
            rest = scripts.post_data_rest if scripts.post_data_rest is not None else scripts.post_data
            if rest:
                conn.execute(rest)
            run.platform_objects(conn)  # with the rest of the schema, before any view is refreshed
            run.sequences_and_matviews(conn)
            run.cron_jobs(conn)
            assert scripts.unmark is not None  # set with the mark
            conn.execute(scripts.unmark)

    def cancel_running(self) -> None:
        """Stop starting tasks and cancel the running ones until every one has ended."""
        self.stopping.set()
        threading.Thread(target=self._keep_cancelling, name="backupkit-cancel", daemon=True).start()

    def _keep_cancelling(self) -> None:
        # A cancel that reaches a connection between two statements is lost and the task
        # would run its next one to the end: keep cancelling until every task has ended.
        # Only an empty ``live`` says they have: on Python < 3.13 a join interrupted by
        # Ctrl-C or SIGTERM marks a thread still running as ended, so ``pool_done`` may
        # be set while a task still runs (and holds locks the undo then waits for).
        while True:
            with self.lock:
                running = list(self.live)
            if not running and self.pool_done.is_set():
                return
            for c in running:
                with contextlib.suppress(Exception):
                    c.cancel_safe()
            time.sleep(0.2)

    @contextlib.contextmanager
    def task_connection(self) -> Iterator[psycopg.Connection]:
        """A connection for one task, in a transaction of its own committed when the task
        succeeds; cancelled with the rest at a failure.

        Connections are kept from one task to the next (``idle``), as ``pg_restore -j``
        keeps one per worker: a new one costs a TCP (and TLS) handshake, authentication and
        the session's settings, several round trips that a restore of many small tables
        would otherwise pay per table and per index group.  A connection whose task failed
        is closed, never reused.
        """
        if self.stopping.is_set():
            raise RestoreError("stopped: another part of the restore failed")
        c = self._kept() or self._opened()
        with self.lock:
            self.live.add(c)
        keep = False
        try:
            yield c
            c.commit()
            keep = True
        finally:
            with self.lock:
                self.live.discard(c)
                keep = keep and not self.closing
                if keep:
                    self.idle.append(c)
            if not keep:
                c.close()

    def _kept(self) -> psycopg.Connection | None:
        """A kept connection, reset to a new session's settings; None when none is kept, or
        the one kept was lost meanwhile (the server or the network closed it)."""
        with self.lock:
            c = self.idle.pop() if self.idle else None
        if c is None:
            return None
        # A schema script rendered by pg_restore SETs search_path, client_encoding,
        # check_function_bodies... for the session: every task starts from the same
        # settings, as on a new connection, whatever the connection ran before.
        try:
            with c.pipeline():  # one round trip
                c.execute("RESET ALL")
                apply_settings(c)
                self.run.session(c)
        except psycopg.OperationalError:  # nothing but a lost connection fails these statements
            c.close()
            return None  # a new connection takes its place
        except BaseException:
            c.close()
            raise
        return c

    def _opened(self) -> psycopg.Connection:
        """A new connection with the restore's session settings."""
        c = connect(self.run.dsn)
        try:
            self.run.session(c)
        except BaseException:
            c.close()
            raise
        return c

    def close_idle(self) -> None:
        """Close the kept connections; one still in a task closes when its task ends."""
        with self.lock:
            self.closing = True
            idle, self.idle = self.idle, []
        for c in idle:
            with contextlib.suppress(Exception):
                c.close()

    def load_unit(self, table: dict, files: list[dict], freeze: bool) -> None:
        """Load ``files`` of ``table`` in one transaction; the table's last one queues its indexes."""
        with self.task_connection() as c:
            self.run.load_session(c)
            if freeze:  # the table is this restore's own: make sure nobody wrote to it since
                _empty_own_table(c, table)
            n = self.run.load_table(c, table, files, freeze=freeze)
        key = mf.table_key(table)
        with self.lock:
            self.rows_loaded += n
            self.units_left -= 1
            self.files_left[key] -= len(files)
            done = not self.files_left[key]
            self.bar.update(load_bytes(files))
        if done:
            self.table_done(key)

    def table_done(self, key: str) -> None:
        """Queue table ``key``'s index builds first, now that its rows are in."""
        script = self.run.scripts.index_groups.get(key)
        if script is not None:
            # Jump the queue: this table's indexes build while other tables still load.
            self.pool.submit(functools.partial(self.build_indexes, script), first=True)

    def build_indexes(self, script: str) -> None:
        """Run one table's index group in its own transaction."""
        with self.task_connection() as c:
            with self.lock:
                loading = self.units_left > 0
            if loading and c.info.server_version >= 110000:  # the setting is new in 11
                # A parallel build would take CPU from the COPYs still running, one of
                # which is the long pole; once all data is in, builds may go parallel.
                # LOCAL: the script runs in this transaction, and a pooler's shared
                # session keeps nothing of it.  Sent with the script: one round trip.
                script = "SET LOCAL max_parallel_maintenance_workers = 0;\n" + script
            c.execute(script)


def _empty_own_table(conn: psycopg.Connection, table: dict) -> None:
    """Lock a table this restore created and still empty, then TRUNCATE it so COPY FREEZE may load it.

    Its CREATE is already committed, so another session could have written rows into
    it meanwhile; those are never thrown away: the restore stops instead.
    """
    rel = sql.Identifier(table["schema"], table["name"])
    with conn.pipeline():  # one round trip for both
        conn.execute(sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(rel))
        has_rows = conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM ONLY {})").format(rel))
    if one_row(has_rows)[0]:
        raise RestoreError(
            f"{mf.table_key(table)} received rows from another session during the restore",
            hint="stop whatever writes to the target database, then restore again",
        )
    conn.execute(sql.SQL("TRUNCATE ONLY {}").format(rel))


#: COPY text one transaction of a split table loads at least (its last one may load less): each
#: transaction costs a connection and a commit, which small chunk files would pay many times.
UNIT_TEXT_BYTES = 48 << 20


def _runs_of(files: list[dict]) -> list[list[dict]]:
    """``files`` cut into consecutive runs of at least ``UNIT_TEXT_BYTES`` of COPY text."""
    runs: list[list[dict]] = [[]]
    text = 0
    for f in files:
        if text >= UNIT_TEXT_BYTES:
            runs.append([])
            text = 0
        runs[-1].append(f)
        text += f.get("text_bytes") or f["bytes"]
    return runs


def _load_units(chosen: list[dict], jobs: int, fresh: bool) -> list[Unit]:
    """(table, files, freeze) units of work for a parallel load, in the order to start them.

    A table loads whole, in one transaction and frozen when the restore created it
    (``fresh``): frozen rows make its index builds cheaper (no hint bits to set on
    every page) and spare the user a freezing VACUUM later.  Only a table of several
    files holding more than 2/(jobs+1) of the data (2/3 with two jobs), which would
    otherwise be the long pole, is loaded in parallel transactions of a few files each
    (``_runs_of``).
    Largest first, and interleaved so parallel COPYs go to different tables where
    they can: two COPYs into one table contend for its extension lock.
    """
    # What a load costs is the CSV text (older snapshots record only the compressed bytes).
    size = {mf.table_key(t): sum(f.get("text_bytes", f["bytes"]) for f in t["files"]) for t in chosen}
    long_pole = 2 * sum(size.values()) / (jobs + 1)
    largest_first = sorted((t for t in chosen if t["files"]), key=lambda t: -size[mf.table_key(t)])
    split = [t for t in largest_first if len(t["files"]) > 1 and size[mf.table_key(t)] > long_pole]
    queues: list[list[Unit]] = [[(t, fs, False) for fs in _runs_of(t["files"])] for t in split]
    queues.append([(t, t["files"], fresh) for t in largest_first if t not in split])
    units: list[Unit] = []
    for i in range(max(map(len, queues))):
        units += [q[i] for q in queues if i < len(q)]
    return units


def _failed(run: LoadRun, exc: BaseException) -> NoReturn:
    """Undo what a parallel load committed after ``exc`` stopped it, then raise: ``exc`` itself
    for Ctrl-C or SIGTERM (exit 130, after logging what is left), else a RestoreError saying
    what went wrong and what is left.

    Whatever went wrong (a database error, a vanished file, Ctrl-C), committed pre-data must
    not be left behind silently.
    """
    why = run.why(exc)  # before the undo: the deadline passing during it is not the cause
    left_behind = _undo(run)
    if isinstance(exc, KeyboardInterrupt):
        log.error("restore interrupted; %s", left_behind)
        raise exc
    raise RestoreError(
        f"restore failed: {why}; {left_behind}",
        left_behind=left_behind,
        hint="fix the cause and run the restore again",
    ) from None


#: How long the undo of a failed restore waits for a lock on what it drops, when the restore
#: itself set no limit: a session holding one of the new tables must not keep it waiting for ever.
UNDO_LOCK_WAIT = 60.0


def _undo(run: LoadRun) -> str:
    """Drop what a failed parallel restore created; say what could not be undone."""
    plan, scripts = run.plan, run.scripts
    lost = (
        (
            f" The tables dropped by `clean` ({', '.join(plan.existing)}) cannot be brought back; "
            "restore them again from this snapshot."
        )
        if plan.drop_first and plan.schema
        else ""
    )
    if not plan.schema:
        return (
            "data loaded into some tables before the failure was committed, and the target stays "
            f"marked as an unfinished restore (schema {restore_mark.SCHEMA}): run the same restore "
            "again with `clean`, which empties them first."
        )
    assert scripts.undo is not None and scripts.unmark is not None  # build_scripts and the mark set them
    # Roles are the cluster's, not the database's: they may serve others by now, so they stay.
    roles = (
        f" The roles it created ({', '.join(plan.created_roles)}) stay; DROP ROLE them if they are not wanted."
        if plan.created_roles
        else ""
    )
    lock_wait = plan.lock_wait_timeout or UNDO_LOCK_WAIT
    # Not run.session: the deadline that may have stopped the restore must not stop its undo.
    settings = {"lock_timeout": f"{int(lock_wait * 1000)}ms"}
    try:
        with uninterrupted("undoing the restore"), connect(run.dsn, settings=settings) as conn:
            conn.execute(scripts.undo)
            conn.execute(scripts.unmark)
        return "the objects this restore created were dropped again." + lost + roles
    except (psycopg.Error, BackupkitError) as exc:
        return (
            "the objects created so far could NOT all be dropped ("
            + redact(str(exc).strip().splitlines()[0], run.dsn)
            + f"); the target stays marked as an unfinished restore (schema {restore_mark.SCHEMA}): "
            "run the same restore again with `clean` to replace what it left." + lost + roles
        )
