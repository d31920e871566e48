"""A repository in a folder on this machine (or a mounted network file system).

Files are created ``0600`` in folders ``0700``, written with ``O_EXCL`` and
fsync'd when closed; a finished snapshot is published by one ``rename`` after
its folders are fsync'd, so a crash leaves either nothing or all of it.  Every
name is opened one segment at a time from the root with ``O_NOFOLLOW``: a
symbolic link anywhere below the root is refused, never followed, and nothing
outside the root is opened or even looked at.  The root itself may be a link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from .base import AbortOnError, Entry, NotAPlainFile, Storage, valid_name

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return "link" if stat.S_ISLNK(mode) else "other"


class _Writer(AbortOnError, io.RawIOBase):
    """A new file being written: fsync'd and closed on success, removed on failure."""

    def __init__(self, fd: int, dir_fd: int, name: str):
        self._fd, self._dir_fd, self._name = fd, dir_fd, name

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes) -> int:  # type: ignore[override]  # bytes-like in, count out, as RawIOBase
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            os.close(self._dir_fd)
            super().close()

    def abort(self) -> None:
        """Close without keeping anything (the partial file is removed)."""
        if self.closed:
            return
        os.close(self._fd)
        with contextlib.suppress(OSError):
            os.unlink(self._name.rsplit("/", 1)[-1], dir_fd=self._dir_fd)
        os.close(self._dir_fd)
        super().close()


class LocalStorage(Storage):
    """Files under ``root``.  ``create=True`` makes the root (``0700``) when it is missing."""

    def __init__(self, root: Path | str, *, create: bool = False):
        self.root = Path(root)
        self.location = str(self.root)
        if create:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStorage({self.location!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalStorage) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def where(self, name: str = "") -> str:
        return str(self.root / name) if name else self.location

    def path(self, name: str = "") -> Path:
        """The file system path of ``name`` (for messages and for tools that take paths)."""
        return self.root / valid_name(name) if name else self.root

    # -- walking names one segment at a time ----------------------------------------------

    def _root_fd(self) -> int:
        return os.open(self.root, _DIR | os.O_CLOEXEC)

    def _dir_fd(self, segments: list[str], *, make: bool = False) -> int:
        """An fd of the folder ``segments`` below the root, each segment opened without following links."""
        fd = self._root_fd()
        try:
            for i, seg in enumerate(segments):
                if make:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(seg, 0o700, dir_fd=fd)
                try:
                    nxt = os.open(seg, _DIR | _NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    raise self._refused(exc, fd, seg, "/".join(segments[: i + 1])) from None
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _refused(exc: OSError, parent_fd: int, seg: str, where: str) -> OSError:
        """A link or non-folder met on the way becomes ``NotAPlainFile``; other errors pass."""
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            return exc
        try:  # the entry itself, inside the storage; never what a link points to
            link = stat.S_ISLNK(os.stat(seg, dir_fd=parent_fd, follow_symlinks=False).st_mode)
        except OSError:
            link = exc.errno != errno.ENOTDIR
        return NotAPlainFile(where, "is a symbolic link" if link else "is not a folder")

    def _split(self, name: str) -> tuple[list[str], str]:
        parts = valid_name(name).split("/")
        return parts[:-1], parts[-1]

    # -- reading --------------------------------------------------------------------------

    def open(self, name: str) -> BinaryIO:
        folders, last = self._split(name)
        dfd = self._dir_fd(folders)
        try:
            try:
                fd = os.open(last, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
            except OSError as exc:
                raise self._refused(exc, dfd, last, name) from None
        finally:
            os.close(dfd)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise NotAPlainFile(name, "is a folder" if stat.S_ISDIR(mode) else "is not a regular file")
        os.set_blocking(fd, True)
        return cast(BinaryIO, os.fdopen(fd, "rb"))

    def stat(self, name: str) -> Entry:
        folders, last = self._split(name)
        dfd = self._dir_fd(folders)
        try:
            st = os.stat(last, dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(dfd)
        return Entry(name, _kind(st.st_mode), st.st_size, st.st_mtime, (st.st_mtime_ns, st.st_ino, st.st_size))

    def list(self, prefix: str = "") -> list[Entry]:
        dfd = self._dir_fd(prefix.split("/") if prefix else [])
        try:
            entries = []
            with os.scandir(dfd) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while we looked
                    name = f"{prefix}/{e.name}" if prefix else e.name
                    entries.append(
                        Entry(name, _kind(st.st_mode), st.st_size, st.st_mtime, (st.st_mtime_ns, st.st_ino, st.st_size))
                    )
        finally:
            os.close(dfd)
        return sorted(entries, key=lambda e: e.name)

    @contextlib.contextmanager
    def local_path(self, name: str) -> Iterator[Path]:
        self.open(name).close()  # a plain file inside the root, reached through no link
        yield self.root / name

    # -- writing --------------------------------------------------------------------------

    def create(self, name: str) -> BinaryIO:
        folders, last = self._split(name)
        dfd = self._dir_fd(folders, make=True)
        try:
            fd = os.open(last, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=dfd)
        except BaseException:
            os.close(dfd)
            raise
        return cast(BinaryIO, _Writer(fd, dfd, name))

    def _fsync_tree(self, name: str) -> None:
        """fsync every folder under ``name`` and the folder itself (files fsync when closed)."""
        for entry in self.walk(name):
            if entry.kind == "dir":
                _fsync_dir(self.path(entry.name))
        _fsync_dir(self.path(name))

    def rename(self, src: str, dst: str) -> None:
        valid_name(src)
        valid_name(dst)
        src_path, dst_path = self.path(src), self.path(dst)
        if src_path.is_symlink():
            raise NotAPlainFile(src, "is a symbolic link")
        if os.path.lexists(dst_path):
            raise FileExistsError(errno.EEXIST, "already exists", str(dst_path))
        folders, _ = self._split(dst)
        if folders:  # as on object stores, a name's folders need not exist beforehand
            os.close(self._dir_fd(folders, make=True))
        if src_path.is_dir():
            self._fsync_tree(src)
        os.rename(src_path, dst_path)
        _fsync_dir(dst_path.parent)

    def remove(self, name: str) -> None:
        path = self.path(name)
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # removes links inside, never follows them
        else:
            path.unlink(missing_ok=True)

    def remove_root_if_empty(self) -> None:
        """Remove the root folder itself when nothing is in it (a repository folder a failed
        first backup created: it leaves nothing behind)."""
        with contextlib.suppress(OSError):
            self.root.rmdir()

    @contextlib.contextmanager
    def serialised(self) -> Iterator[None]:
        fd = self._root_fd()
        try:
            with contextlib.suppress(OSError):  # flock unsupported (some network file systems)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also drops the flock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
