"""SIGTERM as an interrupt: what systemd, docker, ``timeout`` and Airflow send to stop a job.

Python's default for SIGTERM ends the process at once, skipping every cleanup
(the undo of a parallel restore, the removal of an unfinished snapshot).  While
a job runs, SIGTERM raises KeyboardInterrupt in the main thread instead, so the
same cleanup as for Ctrl-C runs and the command exits 130.
"""

from __future__ import annotations

import contextlib
import signal
import threading


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
