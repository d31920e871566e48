"""A lock holder's sign of life that another host can see: a marker file made anew every few minutes.

Another host cannot look at the holder's process, only at the storage, where every write is
exclusive (nothing is overwritten, on S3 as on disk).  So the sign is a new empty file
``<prefix><n>`` every ``every`` seconds, the one before it then removed; its modification time
(S3's ``LastModified``) says when the holder was last alive (``last_beat``).  A run that holds
the repository's lock for longer than the lock's ``stale_after`` (a backup of a very large
database) is then not taken for a crashed one.
"""

from __future__ import annotations

import logging
import threading

from .base import Entry, Storage

log = logging.getLogger("backupkit")


def _markers(storage: Storage, prefix: str) -> list[Entry]:
    """The marker files starting with ``prefix`` at the top of ``storage``."""
    return [e for e in storage.list() if e.kind == "file" and e.name.startswith(prefix)]


def last_beat(storage: Storage, prefix: str) -> float | None:
    """When the newest marker starting with ``prefix`` was made (seconds since the epoch), or None."""
    return max((e.mtime for e in _markers(storage, prefix)), default=None)


def remove_beats(storage: Storage, prefix: str) -> None:
    """Remove every marker starting with ``prefix``; what cannot be removed is left (it is empty)."""
    for name in sorted(e.name for e in _markers(storage, prefix)):
        try:
            storage.remove(name)
        except OSError:
            pass


class Heartbeat:
    """A thread making ``prefix<n>`` anew every ``every`` seconds until ``stop``."""

    def __init__(self, storage: Storage, prefix: str, every: float):
        self.storage, self.prefix, self.every = storage, prefix, every
        self._stop = threading.Event()
        self._warned = False
        self._made: str | None = None  # the newest marker
        self._thread = threading.Thread(target=self._run, name="backupkit-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """Make the first marker now, then keep making them in a thread of their own."""
        self._beat(0)
        self._thread.start()
        return self

    def _beat(self, n: int) -> None:
        name = f"{self.prefix}{n:08d}"
        try:
            self.storage.write(name, b"")
            made, self._made = self._made, name
            if made is not None:
                self.storage.remove(made)
        except OSError as exc:
            # A missed beat only brings the moment another host may call the lock stale nearer.
            if not self._warned:
                log.warning("could not refresh the lock's sign of life %s (%s)", self.storage.where(name), exc)
                self._warned = True

    def _run(self) -> None:
        n = 1
        while not self._stop.wait(self.every):
            self._beat(n)
            n += 1

    def stop(self) -> None:
        """Stop beating (waiting for a beat under way) and remove the markers."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._made is not None:
            try:
                self.storage.remove(self._made)
            except OSError:
                pass  # an empty file; the next holder that takes the lock over removes it
