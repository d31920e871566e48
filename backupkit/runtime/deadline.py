"""Time limits of a run: parsing ``timeout``-style values, and a deadline that cancels queries.

A restore's sessions register with its ``Deadline``; when the time is up, the
deadline keeps cancelling whatever they run until they have all let go, and the
failure that follows is rolled back or undone like any other, with a message
that names the limit rather than "canceling statement due to user request".
"""

from __future__ import annotations

import contextlib
import math
import threading
from types import TracebackType

import psycopg

from ..errors import ConfigError


def seconds(value: float | str | None, name: str) -> float | None:
    """A time limit in seconds; 0 or None means none; anything else not a number is a ConfigError.

    ``name`` is the parameter the value was given as (``lock_wait_timeout``); a flag
    spelling (``--lock-wait-timeout``) is taken as that name too.  The message opens
    with it, so the CLI can put its flag in its place.
    """
    name = name.lstrip("-").replace("-", "_")
    if value is None:
        return None
    try:
        limit = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}") from None
    if math.isnan(limit) or limit < 0:
        raise ConfigError(f"{name} must be 0 (no limit) or a positive number of seconds, not {limit}")
    return None if limit == 0 or math.isinf(limit) else limit


class Deadline:
    """Cancels the watched connections' queries once ``seconds`` have passed (None: never)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._watched: set[psycopg.Connection] = set()
        self._done = threading.Event()
        self._timer = threading.Timer(seconds, self._fire) if seconds else None
        if self._timer is not None:
            self._timer.daemon = True

    def watch(self, conn: psycopg.Connection) -> None:
        """Cancel ``conn``'s queries when the time is up (closed connections are dropped)."""
        with self._lock:
            self._watched = {c for c in self._watched if not c.closed}
            self._watched.add(conn)

    def _fire(self) -> None:
        self.expired = True
        # A cancel landing between two statements is lost: repeat until the run has ended.
        while not self._done.is_set():
            with self._lock:
                live = [c for c in self._watched if not c.closed]
            for c in live:
                with contextlib.suppress(Exception):
                    c.cancel_safe()
            self._done.wait(0.2)

    def __enter__(self) -> Deadline:
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        if self._timer is not None:
            self._timer.cancel()
