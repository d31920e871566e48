"""SIGTERM as an interrupt: what systemd, docker, ``timeout`` and Airflow send to stop a job.

Python's default for SIGTERM ends the process at once, skipping every cleanup
(the undo of a parallel restore, the removal of an unfinished snapshot).  While
a job runs, SIGTERM raises KeyboardInterrupt in the main thread instead, so the
same cleanup as for Ctrl-C runs and the command exits 130.  A cleanup that must
run to its end (the undo of a parallel restore) runs with both signals ignored (``uninterrupted``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger("backupkit")


def _interrupt(signum, frame) -> None:
    # Only the first: a second SIGTERM during the cleanup is ignored rather than cutting it short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within this block SIGTERM raises KeyboardInterrupt (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def uninterrupted(doing: str) -> Iterator[None]:
    """Within this block Ctrl-C and SIGTERM do not cut it short: the first is logged, saying
    ``doing`` goes on, and none is raised.  Main thread only; elsewhere a no-op.

    For a cleanup whose interruption would leave more damage than the signal meant to stop
    (a second Ctrl-C in the middle of undoing a restore left half of it undone).  The
    cleanup must end by itself: the restore's undo waits for each lock a bounded time.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    told = False

    def note(signum, frame) -> None:
        nonlocal told
        if not told:
            told = True
            log.warning("%s first; it ends by itself (another interrupt is not needed)", doing)

    previous = signal.signal(signal.SIGINT, note), signal.signal(signal.SIGTERM, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within this block Ctrl-C and SIGTERM wait for its end, then take effect as they would
    have (raised again, to the handlers in place after the block).  Main thread only.

    For one request whose interruption would leave behind what nothing knows of: a multipart
    upload the server created while its id was still on the way back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def note(signum, frame) -> None:
        came.append(signum)

    previous = signal.signal(signal.SIGINT, note), signal.signal(signal.SIGTERM, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    if came:
        signal.raise_signal(came[0])


@contextlib.contextmanager
def interrupting(stop: Callable[[], object]) -> Iterator[None]:
    """Within this block Ctrl-C and SIGTERM also call ``stop`` at once, from a thread of its own.

    For work in C that does not return to Python while it runs (a DuckDB query): the
    signal's Python handler, which raises KeyboardInterrupt, runs only once it returns, so
    the process ignored SIGTERM until the query ended, hours on a big snapshot.  ``stop``
    (``duckdb.DuckDBPyConnection.interrupt``) makes it return.  Main thread only;
    elsewhere a no-op.  Start no worker processes inside: a thread runs here.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch() -> None:
        with contextlib.suppress(OSError):
            while data := reader.recv(64):  # the signals' numbers, written by the C-level handler
                if any(n in (signal.SIGINT, signal.SIGTERM) for n in data):
                    stop()

    watcher = threading.Thread(target=watch, name="backupkit-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        writer.close()  # the watcher reads the end of the stream and stops
        watcher.join()
        reader.close()
