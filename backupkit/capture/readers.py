"""Copying a snapshot's tables in parallel, every worker inside the one exported snapshot.

Large tables are split into ctid ranges so ``--jobs`` can share one big table.
With ``jobs > 1`` and enough data, ``jobs - 1`` workers are processes and one
stream runs in this process: receiving COPY costs Python work per row, and
threads would serialise it on the GIL.  Small backups use threads, which
start instantly.  Chunk boundaries sit at fixed page multiples, so an unmoved
row keeps its chunk number from one snapshot to the next (``diff`` relies on it).
Each data file is written through the snapshot's storage (``pg.copyio.copy_out``).
How sessions are opened and kept alive is ``capture.sessions``; how worker
processes are started (forked with the backup where that is safe) is ``capture.workers``.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import psycopg
import psycopg.errors

from ..errors import SourceError
from ..pg.copyio import FILE_CUTS, FileResult, copy_out, copy_source
from ..runtime.heap import keep_freed_blocks
from ..runtime.lifeline import die_with_parent
from ..runtime.progress import byte_bar, wanted
from ..snapshot import formats
from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation
from .chunks import CHUNK_BYTES, MIN_CHUNK_BYTES, page_ranges
from .sessions import IDLE_TIMEOUT, PING_EVERY, KeepAlive, SessionSpec, Stopper, lock_wait_error, open_worker
from .workers import Workers, can_fork

__all__ = [
    "CHUNK_BYTES",
    "MIN_CHUNK_BYTES",
    "IDLE_TIMEOUT",
    "PING_EVERY",
    "PROCESS_THRESHOLD",
    "Item",
    "KeepAlive",
    "SessionSpec",
    "Stopper",
    "copy_all",
    "lock_wait_error",
    "open_worker",
    "page_ranges",
    "plan",
    "start_workers",
    "wants_processes",
]

#: Below this much data, worker processes cost more to start than they save.
PROCESS_THRESHOLD = 64 << 20


@dataclass(frozen=True)
class Output:
    """How every data file of a run is written: encrypted to ``recipients`` (age public keys;
    none: not encrypted), and whether it goes into the repository's pool (``pooled``: those
    its writer can put there directly go at once; ``pg.copyio.copy_out``)."""

    recipients: tuple[str, ...] = ()
    pooled: bool = False


@dataclass(frozen=True)
class Item:
    """One COPY: a table (or one ctid range of it) into data files (the first ``rel``, inside the
    snapshot; the stream is cut into a few MB each, ``pg.copyio.FileCuts``)."""

    table: dict
    n: int
    pages: tuple[int, int | None] | None
    rel: str

    @property
    def key(self) -> str:
        return mf.table_key(self.table)


def plan(tables: list[dict], stems: dict[str, str], chunk_bytes: int, server_version_num: int) -> list[Item]:
    """Every COPY to run, largest tables first so the slowest work starts early."""
    items = []
    for t in sorted(tables, key=lambda t: -t["relation_bytes"]):
        for n, pages in enumerate(page_ranges(t["relation_bytes"], chunk_bytes, server_version_num)):
            name = f"{stems[mf.table_key(t)]}.{n:04d}{formats.WRITTEN.suffix}"
            items.append(Item(t, n, pages, f"{mf.DATA_DIR}/{name}"))
    return items


def _copy_item(
    conn: psycopg.Connection,
    item: Item,
    target: SnapshotLocation,
    spec: SessionSpec | None = None,
    output: Output = Output(),
) -> list[FileResult]:
    partial = not item.table["rls"]["bypassed"]
    try:
        if partial:  # --allow-partial: take the rows RLS shows instead of failing
            conn.execute("SELECT pg_catalog.set_config('row_security', 'on', false)")
        res = copy_out(
            conn,
            copy_source(item.table, item.pages),
            target.storage,
            target.key(item.rel),
            item.rel,
            output.recipients,
            pooled=output.pooled,
            cuts=FILE_CUTS,
        )
        if partial:
            conn.execute("SELECT pg_catalog.set_config('row_security', 'off', false)")
    except psycopg.errors.LockNotAvailable:
        raise lock_wait_error(item.key, spec.lock_wait_timeout if spec else None, by_backup=True) from None
    return res


# -- worker processes ------------------------------------------------------------------
_process_conn: psycopg.Connection | None = None
_process_keepalive: KeepAlive | None = None
#: The target of this process's tasks, as the first one brought it: each task brings it pickled
#: again, and an S3 storage unpickled is a new botocore client (~0.2 CPU-s to make) per task.
_process_target: SnapshotLocation | None = None


def _init_process(parent_pid: int) -> None:
    # Runs before the snapshot is known (a forked worker starts before it is taken), so the
    # session is opened by the first task.  SIGTERM as a spawned worker has it (a forked
    # one would inherit the parent's handler); Ctrl-C, which reaches the whole process
    # group, is the parent's to handle: it kills its workers (``with_processes``), and
    # they die with it besides, so an idle one does not print a traceback of its own.
    global _process_keepalive
    keep_freed_blocks()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    _process_keepalive = KeepAlive(parent_pid)


def _reused(target: SnapshotLocation) -> SnapshotLocation:
    """``target`` as this process first received it, when it is the same snapshot: its storage
    keeps its client (and connections) from one task to the next."""
    global _process_target
    if _process_target is None or target != _process_target:
        _process_target = target
    return _process_target


def _run_in_process(
    item: Item, target: SnapshotLocation, output: Output, session: SessionSpec, snapshot: str
) -> list[FileResult]:
    global _process_conn
    target = _reused(target)
    if _process_conn is None:  # the first task: its error goes back to the parent with message and hint
        _process_conn = open_worker(session, snapshot)
        assert _process_keepalive is not None  # set by _init_process
        _process_keepalive.add(_process_conn)
    return _copy_item(_process_conn, item, target, session, output)


def wants_processes(jobs: int, tables: Sequence[dict]) -> bool:
    """Whether a copy of ``tables`` with ``jobs`` uses worker processes (see the module docstring)."""
    return jobs > 1 and sum(t["relation_bytes"] for t in tables) > PROCESS_THRESHOLD


def start_workers(jobs: int, tables: Sequence[dict]) -> Workers | None:
    """Worker processes for copying ``tables`` with ``jobs``, forked now if they will be needed
    and a fork is safe here (``capture.workers``: call this while the backup has nothing
    open and no thread running); None: any needed are spawned by ``copy_all``."""
    if not wants_processes(jobs, tables) or not can_fork():
        return None
    return Workers.forked(jobs - 1, _init_process, (os.getpid(),))


class _Progress:
    """A bar by bytes: each item moves it by its share of its table's size on disk."""

    def __init__(self, items: list[Item], show: bool):
        chunks: dict[str, int] = {}
        for it in items:
            chunks[it.key] = chunks.get(it.key, 0) + 1
        self.share = {(it.key, it.n): it.table["relation_bytes"] // chunks[it.key] for it in items}
        self.rows = 0
        self.lock = threading.Lock()
        self.bar = byte_bar(sum(self.share.values()), "backup", show)

    def done(self, item: Item, res: list[FileResult]) -> None:
        with self.lock:
            self.rows += sum(r.rows for r in res)
            self.bar.update(self.share[item.key, item.n])
            self.bar.set_postfix(rows=self.rows, refresh=False)


def copy_all(
    session: SessionSpec | str,
    snapshot: str,
    items: list[Item],
    target: SnapshotLocation,
    jobs: int,
    progress: bool | None,
    *,
    keepalive: KeepAlive | None = None,
    stopper: Stopper | None = None,
    recipients: Sequence[str] = (),
    pooled: bool = False,
    workers: Workers | None = None,
) -> dict[str, list[FileResult]]:
    """Run every item with ``jobs`` workers, writing into ``target`` (the snapshot being made);
    results per table, files in order.  With ``recipients`` (age public keys) every data
    file is encrypted to them (``pg.copyio.copy_out``).  ``pooled``: the files are going
    into the repository's pool, and those their writer can put there directly go at once.

    ``workers`` (``start_workers``): processes forked before the backup opened anything;
    without them, any needed are spawned here.  They are ended before this returns.

    ``stopper.stop()`` (another thread: the run's timeout) kills the worker processes and
    cancels the in-process queries; this then raises.
    """
    keep_freed_blocks()  # this process streams too
    spec = session if isinstance(session, SessionSpec) else SessionSpec(session)
    show = wanted(progress)
    own_keepalive = keepalive is None
    run = _CopyRun(
        spec,
        snapshot,
        target,
        _Progress(items, show),
        keepalive or KeepAlive(),
        stopper or Stopper(),
        Output(tuple(recipients), pooled),
    )
    try:
        if len(items) > 1 and wants_processes(jobs, [it.table for it in items if it.n == 0]):
            with workers or Workers(jobs - 1, _init_process, (os.getpid(),), "spawn") as processes:
                run.with_processes(items, processes)
        else:
            run.with_threads(items, jobs)
    finally:
        if workers is not None:
            workers.close()  # unused (a small backup), or done
        run.progress.bar.close()
        if own_keepalive:
            run.keepalive.close()
    by_table: dict[str, list[FileResult]] = {it.key: [] for it in items}
    for it in sorted(items, key=lambda i: (i.key, i.n)):
        by_table[it.key] += run.results[it.key, it.n]
    return by_table


def _queue_of(items: list[Item]) -> queue.Queue[Item]:
    work: queue.Queue[Item] = queue.Queue()
    for it in items:
        work.put(it)
    return work


@dataclass
class _CopyRun:
    """One ``copy_all``: what every stream shares, and what they have done so far."""

    session: SessionSpec
    snapshot: str
    target: SnapshotLocation
    progress: _Progress
    keepalive: KeepAlive
    stopper: Stopper
    output: Output = Output()
    results: dict[tuple[str, int], list[FileResult]] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    #: Set when streams must take no more work: an error, Ctrl-C or the run's timeout.
    stop: threading.Event = field(default_factory=threading.Event)
    #: The in-process streams' connections, so a stop can cancel what they are running.
    conns: list[psycopg.Connection] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, item: Item, res: list[FileResult]) -> None:
        self.results[item.key, item.n] = res
        self.progress.done(item, res)

    def cancel_streams(self) -> None:
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            if not conn.closed:
                try:
                    conn.cancel_safe(timeout=5)
                except Exception:
                    pass

    def raise_failure(self) -> None:
        """After every stream has ended: the first error, or the stop that cut the run short."""
        if self.errors:
            raise self.errors[0]
        if self.stopper.stopped:
            raise SourceError("the backup was stopped")

    def drain(self, work: queue.Queue[Item]) -> None:
        """Copy items from ``work`` on one connection until it is empty or the run stops."""
        try:
            conn = open_worker(self.session, self.snapshot)
        except BaseException as exc:
            self.errors.append(exc)
            self.stop.set()
            return
        with self.lock:
            self.conns.append(conn)
        self.keepalive.add(conn)
        try:
            while not self.stop.is_set():
                try:
                    it = work.get_nowait()
                except queue.Empty:
                    return
                self.record(it, _copy_item(conn, it, self.target, self.session, self.output))
        except BaseException as exc:
            self.errors.append(exc)
            self.stop.set()
        finally:
            self.keepalive.discard(conn)
            with self.lock:
                self.conns.remove(conn)
            conn.close()

    def with_threads(self, items: list[Item], jobs: int) -> None:
        """Up to ``jobs`` streams in this process (threads), all taking from one queue."""
        work = _queue_of(items)
        threads = [
            threading.Thread(target=self.drain, name=f"backupkit-copy-{i}", args=(work,))
            for i in range(max(1, min(jobs, len(items))))
        ]

        def cut_short() -> None:
            self.stop.set()
            self.cancel_streams()

        hook = self.stopper.add(cut_short)
        try:
            for th in threads:
                th.start()
            try:
                for th in threads:
                    th.join()
            except BaseException:  # Ctrl-C: stop taking work before the staging files are removed
                cut_short()
                for th in threads:
                    th.join()
                raise
        finally:
            self.stopper.remove(hook)
        self.raise_failure()

    def with_processes(self, items: list[Item], workers: Workers) -> None:
        """``workers.count`` worker processes and one stream in this process, all taking from one queue.

        Processes keep the per-row receive loops off one GIL; the stream here saves
        one of them (each holds psycopg and zstd, ~45 MB).  Items go to a process
        one at a time, as it becomes free, so no stream sits idle with work left.
        """
        work = _queue_of(items)
        here = threading.Thread(target=self.drain, name="backupkit-copy-0", args=(work,))

        def cut_short() -> None:  # no waiting for items under way: they are thrown away
            self.stop.set()
            workers.kill()
            self.cancel_streams()

        hook = self.stopper.add(cut_short)
        here.start()
        try:  # the caller ends the workers afterwards (``copy_all``), killed here if need be
            self._feed(workers.pool(), work, workers.count)
        except BrokenProcessPool as exc:
            cut_short()
            here.join()
            if self.stopper.stopped:  # we killed them (the run's timeout): the caller says why
                raise SourceError("the backup was stopped") from None
            raise SourceError(
                f"a backup worker process died ({exc})",
                hint="check memory limits and the server log, then run the backup again",
            ) from None
        except BaseException:  # a worker's error or Ctrl-C: stop taking work before staging is removed
            cut_short()
            here.join()
            raise
        finally:
            self.stopper.remove(hook)
        here.join()
        self.raise_failure()

    def _feed(self, pool: ProcessPoolExecutor, work: queue.Queue[Item], slots: int) -> None:
        """Hand items to the pool one per free process until the queue is empty."""
        running: dict[Future[list[FileResult]], Item] = {}
        while True:
            while len(running) < slots and not self.stop.is_set():
                try:
                    it = work.get_nowait()
                except queue.Empty:
                    break
                running[pool.submit(_run_in_process, it, self.target, self.output, self.session, self.snapshot)] = it
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                self.record(running.pop(f), f.result())
