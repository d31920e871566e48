"""The worker processes of a parallel backup, and how they are started.

A backup with ``jobs > 1`` copies on ``jobs - 1`` worker processes besides a stream of
its own (``readers``).  A spawned worker is a new interpreter: before its first row
it imports psycopg and zstandard again (~0.2 s of CPU, and ~0.3 s of wall time on a
busy two-core host, while the table it would copy waits).  A forked worker has them
already and starts at once.

Fork is safe only under two conditions, so a backup forks only when both hold:

- *No other thread runs* (the CLI, a cron or systemd job, a script): a fork copies
  only the forking thread, and a lock another thread held at that moment (logging's,
  an allocator's, a Jupyter kernel's messaging) would stay locked in the child for
  ever.  Where other threads run (a notebook, a scheduler embedding backupkit),
  workers are spawned, once the copy needs them.
- *Nothing the backup uses is open*: a child holds every descriptor its parent had
  at the fork.  A pg_dump output pipe held open by a worker never reaches end of file;
  a session would outlive the parent's use of it.  So the backup forks once it knows
  the tables' sizes and has closed the session that read them, before it opens the
  snapshot's session, starts pg_dump or its watchdog thread (``BackupJob._take``).
  An idle keep-alive connection to S3 from taking the repository's lock may be
  inherited: the worker never uses it, and it closes when the worker ends.

Each worker dies with this process (``runtime.lifeline.die_with_parent``, in the
initializer ``readers`` gives), and ignores Ctrl-C, which is the parent's to handle.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

#: Start method forced by tests (``"fork"`` or ``"spawn"``); None decides as the module says.
FORCED: str | None = None


def _threads() -> int:
    """Threads of this process, native ones included where the system can tell (Linux)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def can_fork() -> bool:
    """Whether a worker may be forked here and now: Linux, and no other thread running."""
    if FORCED is not None:
        return FORCED == "fork"
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods() and _threads() == 1


class Workers:
    """``count`` worker processes running ``initializer(*initargs)`` first: forked at once
    (``forked``, where ``can_fork``), or spawned by the first ``pool`` (``method="spawn"``).
    A context manager: leaving it ends them."""

    def __init__(self, count: int, initializer: Callable[..., object], initargs: tuple[Any, ...], method: str):
        self.count = count
        self.method = method
        self._initializer, self._initargs = initializer, initargs
        self._pool: ProcessPoolExecutor | None = None

    @classmethod
    def forked(cls, count: int, initializer: Callable[..., object], initargs: tuple[Any, ...]) -> Workers:
        """Workers forked now, from this thread: call only when ``can_fork``."""
        workers = cls(count, initializer, initargs, "fork")
        try:
            workers.pool()
        except BaseException:
            workers.close()
            raise
        return workers

    def pool(self) -> ProcessPoolExecutor:
        """The running pool, started now if it is not yet."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.count,
                mp_context=multiprocessing.get_context(self.method),
                initializer=self._initializer,
                initargs=self._initargs,
            )
            if self.method == "fork":
                # A forking pool starts all its processes at the first submit, from this
                # thread: here, before anything is opened (see the module docstring).
                self._pool.submit(os.getpid)
        return self._pool

    def kill(self) -> None:
        """SIGKILL every worker (a stop: what they were doing is thrown away)."""
        for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
            try:
                proc.kill()
            except Exception:  # already gone
                pass

    def close(self) -> None:
        """Let the workers end and wait for them."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
