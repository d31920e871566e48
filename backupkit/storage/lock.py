"""The repository's lock, so a prune never deletes under a running backup.

``.lock`` at the top of the repository is created exclusively (``O_EXCL`` on a
file system, atomic also on NFS v3+; a conditional ``If-None-Match`` write on S3)
and holds JSON ``{host, pid_namespace, machine, pid, purpose, started_at, process, token}``.
A lock whose holder is gone is taken over; the holder counts as gone when it ran here (the
same host name, pid namespace and boot: ``runtime.place``) and its pid no longer exists (or
now belongs to another process: ``process`` is the holder's boot id and start time since
boot, which setting the clock does not move), when this machine restarted since the lock was
taken, or when it ran elsewhere (another host, another container of the same host name, a
cloned machine) and it has shown no sign of life for ``stale_after``: we cannot see those
processes, so the holder makes a new ``.lock.alive-<token>-<n>``
every few minutes (``storage.heartbeat``), and a lock taken longer ago than that but with
a recent sign of life (a backup of a very large database) is not stale.

Checking a lock and replacing a stale one is not one atomic step, so every
acquire and release on this host is serialised (``Storage.serialised``: ``flock``
on a local folder, released by the kernel if we die).  Across hosts, and on S3
where nothing is serialised, a stale lock is replaced only by the process that
first creates its claim (``.lock.takeover-<digest of the stale lock>``, created
exclusively like the lock itself) and then finds that same stale lock still there:
two processes that read one stale lock cannot both remove it, nor remove the new
lock the first of them writes.

A ``.lock`` that is empty or not a backupkit lock is replaced once it is older
than ``GARBAGE_GRACE``; a fresher one is refused with the command to remove it.
A repository that cannot be written (permissions, read-only, disk full) raises
``StorageError`` (exit 8), never ``LockError`` (exit 10, "locked").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..errors import LockError, StorageError
from ..runtime.place import Place, Whereabouts, whereabouts
from .base import Storage
from .heartbeat import Heartbeat, last_beat, remove_beats
from .location import open_storage

log = logging.getLogger("backupkit")

LOCK_NAME = ".lock"
DEFAULT_STALE_AFTER = timedelta(hours=6)
#: A ``.lock`` that is not valid JSON and older than this is a crash's leftover, not a lock
#: being written (writing one takes microseconds); it is replaced.
GARBAGE_GRACE = timedelta(minutes=1)

# /proc start times are coarse (btime is whole seconds); a pid is only called
# reused when its process started clearly after the lock was taken.
_PID_REUSE_SLACK = timedelta(seconds=10)


#: The holder's signs of life (``storage.heartbeat``): ``.lock.alive-<token>-<n>``.
ALIVE_PREFIX = f"{LOCK_NAME}.alive-"
#: How often the holder shows it is alive; far below ``stale_after``, so missed beats do not matter.
HEARTBEAT_EVERY = 300.0

#: A ``.lock`` larger than this is not one backupkit wrote.
MAX_LOCK_BYTES = 64 << 10
#: A takeover claim older than this was left by a process that died taking over (which
#: takes milliseconds); it no longer keeps the stale lock from being replaced.
CLAIM_GRACE = timedelta(minutes=10)


def _storage(what: str, path: Path | str, exc: OSError) -> StorageError:
    """Not "locked": the directory itself cannot be used (permissions, read-only, disk full)."""
    remote = str(path).startswith("s3://")
    return StorageError(
        f"{what} {path}: {exc.strerror or exc}",
        hint="check the bucket, the endpoint (AWS_ENDPOINT_URL) and the credentials (AWS_* variables or a profile)"
        if remote
        else "the backup directory must be writable by this user and its disk not full",
    )


def read_lock(repository: Path | str | Storage) -> dict[str, Any] | None:
    """The lock's JSON, or None when the repository is not locked.

    Raises ``LockError`` when the file exists but is not a backupkit lock, and
    ``StorageError`` when it cannot be read.
    """
    storage = open_storage(repository)
    where = storage.where(LOCK_NAME)
    try:
        raw = storage.read(LOCK_NAME, MAX_LOCK_BYTES)
    except FileNotFoundError:
        return None
    except ValueError:
        raw = b"\0"  # far too large: not a lock backupkit wrote
    except OSError as exc:
        raise _storage("cannot read the lock", where, exc) from None
    return _parse(where, raw)


class _Unreadable(LockError):
    """A ``.lock`` that is not a backupkit lock; ``reason`` says why."""

    def __init__(self, message: str, reason: str = "", **kw):
        super().__init__(message, **kw)
        self.reason = reason


def _parse(path: Path | str, raw: bytes) -> dict[str, Any]:
    try:
        if not raw.strip():
            raise ValueError("empty")
        info = json.loads(raw)
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        if isinstance(info.get("pid"), bool) or not isinstance(info.get("pid"), int) or info["pid"] <= 0:
            raise ValueError("no valid pid")
        if not isinstance(info.get("host"), str):
            raise ValueError("no host")
        if not isinstance(info.get("process", ""), str) or not isinstance(info.get("token", ""), str):
            raise ValueError("process or token is not text")
        _started(info)
    except ValueError as exc:
        raise _Unreadable(
            f"{path} exists but is not a readable backupkit lock ({exc}); if no backupkit"
            f" is starting in this directory this very moment, remove it: rm {path}",
            reason=str(exc),
        ) from None
    return info


def _started(info: dict[str, Any]) -> datetime:
    started = datetime.fromisoformat(str(info.get("started_at")))
    if started.utcoffset() is None:
        raise ValueError("started_at has no time zone")
    return started


def _process_start(pid: int) -> datetime | None:
    """When process ``pid`` started, from /proc (Linux); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        proc = Path("/proc/stat").read_text()
    except OSError:
        return None
    try:
        # Field 22 (starttime, clock ticks after boot); the command name in
        # field 2 may contain spaces, so count from its closing parenthesis.
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        btime = next(int(line.split()[1]) for line in proc.splitlines() if line.startswith("btime "))
    except (ValueError, IndexError, StopIteration):
        return None
    return datetime.fromtimestamp(btime + ticks / os.sysconf("SC_CLK_TCK"), UTC)


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks since boot>`` of process ``pid`` (Linux), or None.

    Unlike a start time in wall-clock terms (``_process_start``), it does not move when the
    clock is set (NTP's first sync, a VM resumed): a live holder is never taken for a new
    process that reused its pid, nor a reused pid for the holder."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = stat[stat.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None
    return f"{boot}:{ticks}"


def _pid_alive(pid: int, started: datetime, process: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if process:  # recorded by the holder (see process_identity)
        now = process_identity(pid)
        if now is not None:
            return now == process
    begun = _process_start(pid)
    # A pid recycled after a crash or reboot must not keep the lock forever.
    return begun is None or begun <= started + _PID_REUSE_SLACK


def describe(info: dict[str, Any]) -> str:
    """One line naming a lock's holder, e.g. ``pid 123 on host db1 (backup, started ...)``."""
    return f"pid {info['pid']} on host {info['host']} ({info.get('purpose', '?')}, started {info['started_at']})"


class DirLock:
    """Context manager holding a repository's ``.lock`` for one backup or prune.

    After entering, ``took_over`` is None or a sentence saying whose stale
    lock was replaced (the CLI prints it).
    """

    def __init__(
        self,
        repository: Path | str | Storage,
        purpose: str,
        *,
        stale_after: timedelta = DEFAULT_STALE_AFTER,
        heartbeat: bool = True,
    ):
        self.storage = open_storage(repository)
        self.directory = self.storage.location
        self.path = self.storage.where(LOCK_NAME)
        self.purpose = purpose
        self.stale_after = stale_after
        self.took_over: str | None = None
        self.info: dict[str, Any] | None = None
        self._written: bytes | None = None
        self._garbage_reason: str | None = None
        #: Start the holder's signs of life on acquiring (else ``beat`` starts them: a backup
        #: forks its workers first, and no thread may run at a fork).
        self.heartbeat = heartbeat
        self._heart: Heartbeat | None = None

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextlib.contextmanager
    def _serialised(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.storage.serialised())
            except OSError as exc:
                raise _storage("cannot lock", self.directory, exc) from None
            yield

    def _remove_lock(self) -> None:
        try:
            self.storage.remove(LOCK_NAME)
        except OSError as exc:
            raise _storage("cannot remove the lock", self.path, exc) from None

    def _garbage(self, exc: _Unreadable) -> dict[str, Any] | None:
        """Handle a ``.lock`` that is empty or not JSON (we hold the flock).

        Every acquire on this host writes its lock while holding the flock we now
        hold, so a garbage file here was left by a crash (a full disk, a power
        loss between create and write) or is being written from another host this
        instant.  One older than ``GARBAGE_GRACE`` is therefore removed and the
        lock taken over (``took_over`` says so); a fresher one is refused, with
        the exact command to remove it.
        """
        try:
            age = time.time() - self.storage.stat(LOCK_NAME).mtime
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _storage("cannot read the lock", self.path, e) from None
        if age < GARBAGE_GRACE.total_seconds():
            raise exc
        self._garbage_reason = f"replaced an unreadable lock file ({exc.reason}, {age:.0f} s old)"
        try:
            self.storage.remove(LOCK_NAME)
        except OSError as e:
            raise _storage("cannot remove the unreadable lock", self.path, e) from None
        return None

    def _stale_because(self, info: dict[str, Any], now: datetime) -> str | None:
        """Why the lock's holder is gone, or None if it may still run."""
        started = _started(info)
        here = Place.here()
        where = whereabouts(info, started, here)
        if where is Whereabouts.RESTARTED:
            # A clone sharing this machine's id (a VM template not prepared for cloning) looks
            # the same: a sign of life since this machine booted proves the holder is elsewhere,
            # and one just before it may yet be followed by one (beats come every few minutes).
            beat, booted = self._last_beat(info), here.booted_at
            if beat is not None and booted is not None:
                window = timedelta(seconds=1.5 * HEARTBEAT_EVERY)
                if datetime.fromtimestamp(beat, UTC) >= booted:
                    where = Whereabouts.ELSEWHERE
                elif now < booted + window and datetime.fromtimestamp(beat, UTC) > booted - window:
                    return None
            if where is Whereabouts.RESTARTED:
                return "its machine restarted since"
        if where is Whereabouts.HERE:
            alive = _pid_alive(info["pid"], started, info.get("process"))
            return None if alive else "that process no longer runs"
        if now - started < self.stale_after:
            return None
        beat = self._last_beat(info)
        if beat is not None and now - datetime.fromtimestamp(beat, UTC) < self.stale_after:
            return None
        return (
            f"it is older than {self.stale_after} with no sign of life since, and its host cannot be checked from here"
            if info["host"] != socket.gethostname()
            else f"it is older than {self.stale_after} with no sign of life since, and its process cannot be"
            " checked from here (another container, or another machine of the same name)"
        )

    def _last_beat(self, info: dict[str, Any]) -> float | None:
        """When the lock's holder last showed it was alive (``storage.heartbeat``), if ever."""
        if not info.get("token"):
            return None
        try:
            return last_beat(self.storage, f"{ALIVE_PREFIX}{info['token']}-")
        except OSError as exc:
            raise _storage("cannot read the lock's signs of life", self.directory, exc) from None

    def acquire(self) -> None:
        """Take the lock, replacing a stale one; ``LockError`` if a live process holds it."""
        if self._written is not None:
            raise LockError(f"{self.path} is already held by this DirLock")
        now = datetime.now(UTC)
        info = {
            **Place.here().record(),
            "pid": os.getpid(),
            "purpose": self.purpose,
            "started_at": now.isoformat(),
            "token": secrets.token_hex(8),
        }
        process = process_identity(os.getpid())
        if process is not None:
            info["process"] = process
        data = json.dumps(info, indent=1).encode() + b"\n"
        with self._serialised():
            try:
                old = read_lock(self.storage)
            except _Unreadable as exc:
                old = self._garbage(exc)
            if old is not None:
                why = self._stale_because(old, now)
                if why is None:
                    raise LockError(
                        f"{self.directory} is locked by {describe(old)}; wait for it, or remove"
                        f" {self.path} if you are sure no backupkit runs"
                    )
                self._take_over(old, now)
            try:
                writer = self.storage.create(LOCK_NAME)
            except FileExistsError:
                # Another host won the race (flock does not reach across hosts).
                raise self._raced() from None
            except OSError as exc:
                raise _storage("cannot create the lock", self.path, exc) from None
            try:
                with writer:
                    writer.write(data)
            except FileExistsError:
                # An object store's conditional write decides when the lock is stored: the other
                # host's lock is there, and must not be removed as if it were our half-written one.
                # (Our own PUT refused on its retry, its answer lost, is taken by the writer itself.)
                raise self._raced() from None
            except OSError as exc:
                # An empty lock file would block every later run until removed by hand.
                self._remove_lock()
                raise _storage("cannot write the lock", self.path, exc) from None
        if old is not None:
            self.took_over = f"took over a stale lock left by {describe(old)}: {why}"
        elif self._garbage_reason:
            self.took_over = self._garbage_reason
        self._written = data
        self.info = info
        if old is not None and old.get("token"):  # the stale holder's last sign of life
            with contextlib.suppress(OSError):
                remove_beats(self.storage, f"{ALIVE_PREFIX}{old['token']}-")
        if self.heartbeat:
            self.beat()

    def beat(self) -> None:
        """Start showing other hosts that the holder is alive (``storage.heartbeat``), if not yet."""
        if self._heart is None and self.info is not None:
            self._heart = Heartbeat(self.storage, f"{ALIVE_PREFIX}{self.info['token']}-", HEARTBEAT_EVERY).start()

    def _take_over(self, old: dict[str, Any], now: datetime) -> None:
        """Remove the stale lock ``old``, if this process is the one to (see the module)."""
        claim = f"{LOCK_NAME}.takeover-{hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:32]}"
        for _ in range(2):  # a second time only after removing an abandoned claim
            try:
                with self.storage.create(claim) as writer:
                    writer.write(b"")
                break
            except FileExistsError:
                try:
                    left = datetime.fromtimestamp(self.storage.stat(claim).mtime, UTC)
                except FileNotFoundError:
                    continue  # its taker finished meanwhile: try to claim again
                except OSError as exc:
                    raise _storage("cannot read the takeover claim", self.storage.where(claim), exc) from None
                if now - left < CLAIM_GRACE:
                    raise self._raced() from None  # another process is replacing this stale lock
                self._remove(claim)
            except OSError as exc:
                raise _storage("cannot claim the stale lock", self.path, exc) from None
        else:
            raise self._raced()
        try:
            try:
                current = read_lock(self.storage)
            except _Unreadable:
                current = None  # not the stale lock we read: the create below decides
            if current is not None and current != old:
                raise self._raced()  # taken over, or released, since we read it
            if current is not None:
                self._remove_lock()
        finally:
            with contextlib.suppress(OSError):  # one left behind stops mattering after CLAIM_GRACE
                self.storage.remove(claim)

    def _remove(self, name: str) -> None:
        try:
            self.storage.remove(name)
        except OSError as exc:
            raise _storage("cannot remove", self.storage.where(name), exc) from None

    def _raced(self) -> LockError:
        holder = read_lock(self.storage)
        return LockError(
            f"{self.directory} was just locked by {describe(holder) if holder else 'another process'};"
            f" wait for it, or remove {self.path} if you are sure no backupkit runs"
        )

    def check_held(self) -> None:
        """``LockError`` unless the lock is still this one's.

        Called right before work becomes visible (a snapshot published): a run whose signs of
        life stopped for ``stale_after`` (its machine suspended) may have had its lock taken over
        from another host, and a prune under that lock may have removed shared files the run
        counted on.  Publishing then could
        list a snapshot that does not restore; failing leaves nothing that looks complete.
        """
        try:
            current: bytes | None = self.storage.read(LOCK_NAME, MAX_LOCK_BYTES)
        except (FileNotFoundError, ValueError):
            current = None
        except OSError as exc:
            raise _storage("cannot read the lock", self.path, exc) from None
        if self._written is None or current != self._written:
            try:
                holder = read_lock(self.storage)
            except LockError:
                holder = None
            raise LockError(
                f"{self.path} was taken over while this {self.purpose} ran (now held by "
                f"{describe(holder) if holder else 'no one'}); nothing was published",
                hint=f"run the {self.purpose} again; another host takes a lock over when its holder has shown"
                f" no sign of life for {self.stale_after} (a suspended machine, storage out of reach)",
            )

    def release(self) -> bool:
        """Remove the lock if it is still ours; True if it was removed.

        Never raises: it runs when the work is done (a snapshot published) or failed, and
        neither outcome may be replaced by a lock that could not be removed.  That is logged
        instead; the next run on this host takes it over once this process has ended.
        """
        if self._written is None:
            return False
        if self._heart is not None:
            self._heart.stop()
            self._heart = None
        mine = False
        try:
            with self._serialised():
                try:
                    current: bytes | None = self.storage.read(LOCK_NAME, MAX_LOCK_BYTES)
                except (FileNotFoundError, ValueError):
                    current = None
                # Someone removed our lock and another process took it: theirs now.
                mine = current == self._written
                if mine:
                    self.storage.remove(LOCK_NAME)
        except (OSError, StorageError) as exc:
            mine = False
            log.warning(
                "could not remove the lock %s (%s); the next run on this host takes it over, "
                "or remove it by hand once no backupkit runs",
                self.path,
                getattr(exc, "strerror", None) or exc,
            )
        self._written = None
        return mine
