"""Copying a snapshot's tables in parallel, every worker inside the one exported snapshot.

Large tables are split into ctid ranges so ``--jobs`` can share one big table.
With ``jobs > 1`` and enough data, ``jobs - 1`` workers are processes and one
stream runs in this process: receiving COPY costs Python work per row, and
threads would serialise it on the GIL.  Small backups use threads, which
start instantly.  Chunk boundaries sit at fixed page multiples, so an unmoved
row keeps its chunk number from one snapshot to the next (``diff`` relies on it).
"""

from __future__ import annotations

import multiprocessing
import queue
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from tqdm.auto import tqdm

from . import manifest as mf
from . import copyio
from .copyio import FileResult, copy_out, copy_source
from .dsn import connect
from .errors import SourceError

#: Tables larger than this on disk are split into ctid ranges.
CHUNK_BYTES = 64 << 20
#: Below this much data, worker processes cost more to start than they save.
PROCESS_THRESHOLD = 64 << 20
_PAGE = 8192


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


def open_worker(dsn: str, snapshot: str) -> psycopg.Connection:
    """A connection inside the exported snapshot, with row security off (as pg_dump does)."""
    conn = connect(dsn)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    conn.execute("SELECT pg_catalog.set_config('row_security', 'off', false)")
    return conn


def _copy_item(conn: psycopg.Connection, item: Item, folder: Path) -> FileResult:
    partial = not item.table["rls"]["bypassed"]
    if partial:  # --allow-partial: take the rows RLS shows instead of failing
        conn.execute("SELECT pg_catalog.set_config('row_security', 'on', false)")
    res = copy_out(conn, copy_source(item.table, item.pages), item.dest, folder)
    if partial:
        conn.execute("SELECT pg_catalog.set_config('row_security', 'off', false)")
    return res


# -- worker processes ------------------------------------------------------------------
_process_conn: psycopg.Connection | None = None
_process_error: BaseException | None = None


def _init_process(dsn: str, snapshot: str) -> None:
    # An initializer that raises only "breaks" the pool; keep the error for the first task,
    # which carries it back to the parent with its message and hint.
    global _process_conn, _process_error
    try:
        _process_conn = open_worker(dsn, snapshot)
    except BaseException as exc:  # noqa: BLE001
        _process_error = exc


def _run_in_process(item: Item, folder: Path) -> FileResult:
    if _process_error is not None:
        raise _process_error
    return _copy_item(_process_conn, item, folder)


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


def copy_all(dsn: str, snapshot: str, items: list[Item], folder: Path, jobs: int,
             progress: bool | None) -> dict[str, list[FileResult]]:
    """Run every item with ``jobs`` workers; results per table, chunks in order."""
    show = sys.stderr.isatty() if progress is None else progress
    prog = _Progress(items, show)
    results: dict[tuple[str, int], FileResult] = {}
    big = sum(it.table["relation_bytes"] for it in items if it.n == 0) > PROCESS_THRESHOLD
    try:
        if jobs > 1 and len(items) > 1 and big:
            _with_processes(dsn, snapshot, items, folder, jobs, prog, results)
        else:
            _with_threads(dsn, snapshot, items, folder, jobs, prog, results)
    finally:
        prog.bar.close()
    by_table: dict[str, list[FileResult]] = {it.key: [] for it in items}
    for it in sorted(items, key=lambda i: (i.key, i.n)):
        by_table[it.key].append(results[it.key, it.n])
    return by_table


def _with_processes(dsn, snapshot, items, folder, jobs, prog, results) -> None:
    """``jobs - 1`` worker processes and one stream in this process, all taking from one queue.

    Processes keep the per-row receive loops off one GIL; the stream here saves
    one of them (each imports psycopg and zstd, ~45 MB).  Items go to a process
    one at a time, as it becomes free, so no stream sits idle with work left.
    """
    work = _queue_of(items)
    errors: list[BaseException] = []
    stop = threading.Event()
    here = threading.Thread(target=_drain, name="backupkit-copy-0",
                            args=(dsn, snapshot, work, folder, prog, results, errors, stop))
    # spawn, not fork: a forked child would share the parent's libpq sockets.
    ctx = multiprocessing.get_context("spawn")
    here.start()
    try:
        with ProcessPoolExecutor(max_workers=jobs - 1, mp_context=ctx,
                                 initializer=_init_process, initargs=(dsn, snapshot)) as pool:
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
                stop.set()  # before the pool's exit waits for running items: no new work here either
                raise
    except BrokenProcessPool as exc:
        stop.set()
        here.join()
        raise SourceError(f"a backup worker process died ({exc})",
                          hint="check memory limits and the server log, then run the backup again") from None
    except BaseException:  # a worker's error or Ctrl-C: stop taking work before .tmp is removed
        stop.set()
        here.join()
        raise
    here.join()
    if errors:
        raise errors[0]


def _queue_of(items: list[Item]) -> queue.Queue:
    work: queue.Queue = queue.Queue()
    for it in items:
        work.put(it)
    return work


def _drain(dsn, snapshot, work: queue.Queue, folder, prog, results, errors: list, stop: threading.Event) -> None:
    """Copy items from ``work`` on one connection until it is empty or ``stop`` is set."""
    try:
        conn = open_worker(dsn, snapshot)
    except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
        errors.append(exc)
        stop.set()
        return
    try:
        while not stop.is_set():
            try:
                it = work.get_nowait()
            except queue.Empty:
                return
            results[it.key, it.n] = _copy_item(conn, it, folder)
            prog.done(it, results[it.key, it.n])
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)
        stop.set()
    finally:
        conn.close()


def _with_threads(dsn, snapshot, items, folder, jobs, prog, results) -> None:
    work = _queue_of(items)
    errors: list[BaseException] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_drain, name=f"backupkit-copy-{i}",
                                args=(dsn, snapshot, work, folder, prog, results, errors, stop))
               for i in range(max(1, min(jobs, len(items))))]
    for th in threads:
        th.start()
    try:
        for th in threads:
            th.join()
    except BaseException:  # Ctrl-C: stop taking work before the .tmp folder is removed
        stop.set()
        for th in threads:
            th.join()
        raise
    if errors:
        raise errors[0]
