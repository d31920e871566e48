"""A repository held in memory: fast tests of everything above the storage interface.

It keeps the contract of ``LocalStorage`` (write-once names, exclusive create,
prefix rename and removal, ``FileNotFoundError``/``FileExistsError``/``NotAPlainFile``)
so a test that passes here exercises the same logic the file system would.
Shared by the threads of one process; not by several processes.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO, cast

from .base import AbortOnError, Entry, NotAPlainFile, Storage, valid_name


class _Writer(AbortOnError, io.BytesIO):
    """Collects a new file's bytes; they appear in the storage only when closed without an error."""

    def __init__(self, storage: MemoryStorage, name: str):
        super().__init__()
        self._storage, self._name = storage, name

    def close(self) -> None:
        if not self.closed:
            self._storage._commit(self._name, self.getvalue())
        super().close()

    def abort(self) -> None:
        """Close without keeping anything."""
        self._storage._release(self._name)
        super().close()


class MemoryStorage(Storage):
    """Files in a dict, ``name -> bytes``; ``files`` may be read and changed by tests (to damage a snapshot)."""

    def __init__(self, location: str = "memory:"):
        self.location = location
        self.files: dict[str, bytes] = {}
        self.mtimes: dict[str, float] = {}
        self._pending: set[str] = set()
        self._lock = threading.RLock()
        self._serial = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStorage({self.location!r}, {len(self.files)} files)"

    def _is_dir(self, name: str) -> bool:
        return any(k.startswith(name + "/") for k in self.files)

    def _entry(self, name: str) -> Entry:
        if name in self.files:
            data, mtime = self.files[name], self.mtimes.get(name, 0.0)
            return Entry(name, "file", len(data), mtime, (mtime, id(data), len(data)))
        if self._is_dir(name):
            return Entry(name, "dir", 0, max(self.mtimes.get(k, 0.0) for k in self.files if k.startswith(name + "/")))
        raise FileNotFoundError(2, "no such file", name)

    # -- reading --------------------------------------------------------------------------

    def open(self, name: str) -> BinaryIO:
        with self._lock:
            entry = self._entry(valid_name(name))
            if entry.kind != "file":
                raise NotAPlainFile(name, "is a folder")
            return io.BytesIO(self.files[name])

    def stat(self, name: str) -> Entry:
        with self._lock:
            return self._entry(valid_name(name))

    def list(self, prefix: str = "") -> list[Entry]:
        with self._lock:
            if prefix:
                valid_name(prefix)
                if prefix in self.files:
                    raise NotAPlainFile(prefix, "is not a folder")
            start = prefix + "/" if prefix else ""
            children = {k[len(start) :].split("/", 1)[0] for k in self.files if k.startswith(start)}
            if prefix and not children:
                raise FileNotFoundError(2, "no such folder", prefix)
            return [self._entry(start + c) for c in sorted(children)]

    # -- writing --------------------------------------------------------------------------

    def create(self, name: str) -> BinaryIO:
        with self._lock:
            valid_name(name)
            parts = name.split("/")
            if any("/".join(parts[:i]) in self.files for i in range(1, len(parts))):
                raise NotAPlainFile(name, "has a file where a folder should be")
            if name in self.files or name in self._pending or self._is_dir(name):
                raise FileExistsError(17, "already exists", name)
            self._pending.add(name)
        return cast(BinaryIO, _Writer(self, name))

    def _commit(self, name: str, data: bytes) -> None:
        with self._lock:
            self._pending.discard(name)
            self.files[name] = data
            self.mtimes[name] = time.time()

    def _release(self, name: str) -> None:
        with self._lock:
            self._pending.discard(name)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            valid_name(src)
            valid_name(dst)
            if dst in self.files or self._is_dir(dst):
                raise FileExistsError(17, "already exists", dst)
            moved = [k for k in self.files if k == src or k.startswith(src + "/")]
            if not moved:
                raise FileNotFoundError(2, "no such file or folder", src)
            for k in moved:
                new = dst + k[len(src) :]
                self.files[new] = self.files.pop(k)
                self.mtimes[new] = self.mtimes.pop(k, 0.0)

    def remove(self, name: str) -> None:
        with self._lock:
            valid_name(name)
            for k in [k for k in self.files if k == name or k.startswith(name + "/")]:
                del self.files[k]
                self.mtimes.pop(k, None)

    @contextlib.contextmanager
    def serialised(self) -> Iterator[None]:
        with self._serial:
            yield
