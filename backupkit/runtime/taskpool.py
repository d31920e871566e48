"""A few worker threads draining one task list, where follow-up work can jump the queue.

Parallel restore queues every data file up front; when a table's last file
is in, that table's index builds are queued *first*, so they overlap other
tables' loading the way ``pg_restore -j`` schedules them, instead of all
waiting for the last COPY.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class TaskPool:
    """Run queued callables on ``workers`` threads; the first failure stops the rest.

    ``submit`` may be called from inside a task.  ``run`` returns when the
    queue is empty and every worker is idle, or re-raises the first exception
    once the tasks already running have finished (none is started after it;
    ``on_failure`` can make the running ones finish sooner).
    """

    def __init__(self, workers: int, on_failure: Callable[[], None] | None = None):
        self.workers = max(1, workers)
        # Called once, at the first failure or Ctrl-C, to cut short the tasks still running.
        self._on_failure = on_failure
        self._tasks: deque[Callable[[], None]] = deque()
        self._cv = threading.Condition()
        self._busy = 0
        self._error: BaseException | None = None

    def submit(self, task: Callable[[], None], *, first: bool = False) -> None:
        """Queue ``task``; ``first`` puts it ahead of everything queued so far."""
        with self._cv:
            (self._tasks.appendleft if first else self._tasks.append)(task)
            self._cv.notify()

    def _fail(self, exc: BaseException) -> None:
        with self._cv:
            first = self._error is None
            if first:
                self._error = exc
            self._tasks.clear()
            self._cv.notify_all()
        if first and self._on_failure is not None:
            self._on_failure()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._tasks and self._busy and self._error is None:
                    self._cv.wait()
                if not self._tasks or self._error is not None:
                    self._cv.notify_all()  # wake the others: nothing more will come
                    return
                task = self._tasks.popleft()
                self._busy += 1
            try:
                task()
            except BaseException as exc:
                self._fail(exc)
            finally:
                with self._cv:
                    self._busy -= 1
                    self._cv.notify_all()

    def run(self) -> None:
        """Work through the queue; raise the first task's exception, if any."""
        threads: list[threading.Thread] = []
        try:
            # Started inside the try: a Ctrl-C or SIGTERM can land while a later thread starts
            # and an earlier one already runs a task, which must then be cut short too.
            for n in range(self.workers):
                threads.append(threading.Thread(target=self._work, name=f"backupkit-restore-{n}", daemon=True))
                threads[-1].start()
            for t in threads:
                t.join()
        except BaseException as exc:  # Ctrl-C while waiting: let running tasks end, start no more
            self._fail(exc)
            for t in threads:
                if t.ident is not None:
                    t.join()
            raise
        if self._error is not None:
            raise self._error
