"""The storage interface: every byte of a repository is read, written, renamed and deleted here.

Modelled on restic's ``Backend``: a few primitives over names, with one
implementation per place bytes can live (``LocalStorage`` for a folder,
``MemoryStorage`` for tests, ``S3Storage`` for a bucket).  What a snapshot *is*
(manifest, data files, the folder layout) is known above this layer, in
``backupkit.snapshot`` and ``backupkit.storage.repository``.

Names are relative POSIX paths (``<id>/data/public.t.copy.zst``) checked by
``check_name``: a name can only ever address something inside the storage.

Errors are the built-in ``OSError`` family, so callers handle every
implementation alike:

* ``FileNotFoundError``: there is no such name;
* ``FileExistsError``: ``create`` of a name that exists (writes are write-once);
* ``NotAPlainFile``: the name is a link, a folder, a device or a pipe; a
  storage never follows a link, so nothing outside it is read or even looked at;
* any other ``OSError`` (``PermissionError``, ``ENOSPC``…): the storage cannot be used.
"""

from __future__ import annotations

import abc
import contextlib
import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

#: Bytes per read when streaming.
BLOCK = 1 << 20


class AbortOnError:
    """What every ``Storage.create`` writer does at the end of its ``with`` block: closing
    normally keeps the file (durably), leaving by an exception aborts it (nothing is kept).

    Listed first among a writer's bases, so this ``__exit__`` replaces the io class's.
    """

    def abort(self) -> None:
        """Close without keeping anything."""
        raise NotImplementedError

    #: Provided by the io class the writer also derives from (never defined here: that one wins).
    close: Callable[[], None]

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class NotAPlainFile(OSError):
    """The name exists but is a link, folder or special file: storages serve plain files only."""

    def __init__(self, name: str, what: str):
        super().__init__(errno.EINVAL, f"{name}: {what}; snapshot files must be plain files inside the snapshot")
        self.name = name
        self.what = what

    def __reduce__(self) -> tuple[type[NotAPlainFile], tuple[str, str]]:
        # Sent back from a worker process pickled: OSError's own way would call it with (errno, text).
        return (NotAPlainFile, (self.name, self.what))


@dataclass(frozen=True)
class Entry:
    """One name in a storage, as ``list``, ``walk`` and ``stat`` describe it.

    ``kind`` is ``"file"``, ``"dir"`` (a prefix that has names under it), ``"link"``
    or ``"other"`` (device, pipe, socket).  ``version`` changes whenever the content
    may have (for a file: its mtime and inode), so a hash can be cached by it.
    """

    name: str
    kind: str
    size: int = 0
    mtime: float = 0.0
    version: tuple[object, ...] = ()

    @property
    def basename(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def check_name(name: object) -> str | None:
    """Why ``name`` cannot address anything in a storage, or None when it can.

    Acceptable: a non-empty relative POSIX path whose segments are all proper
    names: no leading ``/``, no ``..``, ``.`` or empty segment, no backslash, no NUL.
    """
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a path"
    if not name:
        return "is empty"
    if "\\" in name or "\0" in name:
        return "contains a backslash or NUL"
    if name.startswith("/"):
        return "is absolute"
    if any(seg in ("", ".", "..") for seg in name.split("/")):
        return "is not normalized (empty, '.' or '..' segment)"
    return None


def valid_name(name: str) -> str:
    """``name`` when ``check_name`` accepts it; ``ValueError`` otherwise (a caller's bug, or a forged manifest)."""
    why = check_name(name)
    if why:
        raise ValueError(f"storage name {name!r} {why}")
    return name


class Storage(abc.ABC):
    """Where a repository's bytes live.  See the module docstring for names and errors."""

    #: Shown to people in messages and listings (a folder path or a URL); never holds a secret.
    location: str

    #: Whether ``rename`` of a prefix is one atomic step.  Where it is not (object stores copy
    #: and delete), a prefix without its manifest is an interrupted rename, never a snapshot.
    atomic_rename: bool = True

    #: Whether a completed ``create`` proves the stored bytes are the bytes written: the
    #: storage checked a digest of every body it accepted (S3's Content-MD5).  Then a
    #: snapshot just written (or copied) in is verified by sizes and the hashes computed
    #: while writing, instead of downloading it all again.  Never for a local disk, whose
    #: read-back is cheap.
    verified_writes: bool = False

    def content_tag(self, entry: Entry) -> str | None:
        """What the storage tells of file ``entry``'s bytes with its ``stat``, at no cost: two files
        of equal tags hold the same bytes (S3's ETag, an MD5).  None where it tells nothing (a
        local disk, whose files are hashed instead).  Unequal tags prove nothing either way."""
        return None

    def where(self, name: str = "") -> str:
        """``name`` as people should see it in a message: the location and the name."""
        return f"{self.location.rstrip('/')}/{name}" if name else self.location

    # -- reading -----------------------------------------------------------------------

    @abc.abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A streaming reader of plain file ``name`` (the caller closes it)."""

    @abc.abstractmethod
    def stat(self, name: str) -> Entry:
        """What ``name`` is, without following a link; ``FileNotFoundError`` when absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[Entry]:
        """The entries directly under ``prefix`` ("" for the top), sorted by name.

        ``FileNotFoundError`` when ``prefix`` has nothing under it and is not the top.
        """

    def walk(self, prefix: str) -> Iterator[Entry]:
        """Every entry under ``prefix``, depth first, never through a link."""
        for entry in self.list(prefix):
            yield entry
            if entry.kind == "dir":
                yield from self.walk(entry.name)

    def read(self, name: str, limit: int) -> bytes:
        """The whole of small file ``name``; ``ValueError`` when it is larger than ``limit`` bytes."""
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"{name} is larger than {limit} bytes")
        return data

    @contextlib.contextmanager
    def local_path(self, name: str) -> Iterator[Path]:
        """A path on this machine holding ``name``'s bytes, for tools that need one (pg_restore, DuckDB).

        The default copies the file into a private temporary folder removed on exit;
        storages whose files are local already yield the file itself.
        """
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(prefix="backupkit-") as tmp:
            path = Path(tmp) / name.rsplit("/", 1)[-1]
            with self.open(name) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, BLOCK)
            yield path

    # -- writing -----------------------------------------------------------------------

    @abc.abstractmethod
    def create(self, name: str) -> BinaryIO:
        """A writer of new file ``name``: exclusive, durable once closed.

        A name that exists raises ``FileExistsError``: here on a file system, when the
        writer is closed on an object store (its conditional write decides, no request is
        spent before the first byte); either way nothing that exists is overwritten.

        Closing it after an exception inside its ``with`` block discards what was written.
        """

    def write(self, name: str, data: bytes) -> None:
        """Create ``name`` holding ``data`` (exclusive, durable)."""
        with self.create(name) as f:
            f.write(data)

    def upload(self, name: str, source: Path) -> None:
        """Create ``name`` with the bytes of local file ``source``, streamed."""
        import shutil

        with open(source, "rb") as src, self.create(name) as dst:
            shutil.copyfileobj(src, dst, BLOCK)

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Move everything under prefix ``src`` to prefix ``dst`` (which must not exist), durably.

        On a file system this is one atomic rename; it is how a finished snapshot is
        published (temporary name → its id) and how a deleted one leaves the listing
        before its files are removed.
        """

    @abc.abstractmethod
    def remove(self, name: str) -> None:
        """Delete file ``name`` or everything under prefix ``name``; a link is removed, never followed.

        Removing what is not there is not an error.
        """

    # -- coordination ------------------------------------------------------------------

    @contextlib.contextmanager
    def serialised(self) -> Iterator[None]:
        """Hold off other lock takers on this host while a lock is checked and replaced.

        The default does nothing; an exclusive ``create`` still guards the lock.
        """
        yield


def age_seconds(entry: Entry, now: float | None = None) -> float:
    """Seconds since ``entry`` last changed."""
    import time

    return (time.time() if now is None else now) - entry.mtime


def join(*parts: str) -> str:
    """Names joined with ``/``, empty parts skipped."""
    return "/".join(p for p in parts if p)
