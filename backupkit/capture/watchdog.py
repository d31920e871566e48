"""The backup's time limit: a watchdog that ends a run that outlives its ``timeout``."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from ..errors import SourceError
from ..pg.dsn import connect, redact
from .sessions import SessionSpec, Stopper

log = logging.getLogger("backupkit")


class Watchdog:
    """Ends a run that outlives its ``timeout``: kills its workers, cancels its queries and
    terminates every session carrying the run's application_name (pg_dump's included)."""

    def __init__(self, session: SessionSpec, timeout: float | None):
        self.session = session
        self.timeout = timeout
        self.stopper = Stopper()
        self.expired = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Watchdog:
        if self.timeout:
            # The limit counts from the run's start (``session.deadline``), whenever the
            # watchdog starts (after the backup's workers are forked: ``capture.workers``).
            end = self.session.deadline or time.time() + self.timeout
            self._timer = threading.Timer(max(0.0, end - time.time()), self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        self.expired = True
        log.warning("the backup reached its time limit of %g s; stopping it", self.timeout)
        self.stopper.stop()
        end_sessions(self.session)

    def check(self) -> None:
        """Raise the timeout error if the run's time is up (between steps)."""
        if self.expired:
            raise self.error()

    def error(self) -> SourceError:
        """The error of a run stopped at its time limit."""
        return SourceError(
            f"the backup did not finish within its time limit ({self.timeout:g} s) and was stopped; "
            "nothing was written",
            hint="pass a larger `timeout` (0 for none) if the database is this big, or look for "
            "what held it up (locks, a slow disk or network)",
        )


def end_sessions(session: SessionSpec) -> None:
    """Terminate every session of this run still on the server (best effort)."""
    try:
        with connect(session.dsn, autocommit=True, application="backupkit watchdog", connect_timeout=5) as conn:
            conn.execute(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                "WHERE application_name IN (%s, %s) AND pid <> pg_catalog.pg_backend_pid()",
                (session.application, session.tool_application),
            )
    except Exception as exc:
        log.warning("could not end the backup's sessions: %s", redact(str(exc), session.dsn))
