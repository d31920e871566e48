"""Copying Storage bucket files into a snapshot being written (``backup --storage-bucket``).

Each file is streamed from the endpoint into the staged snapshot in blocks, hashed on
the way (memory stays flat whatever its size), and then named by its SHA-256: moved into
the repository's pool (``storage.pool``) when the snapshot shares files, else to
``files/<sha256>`` in the snapshot.  A file the previous snapshot has with the same key,
size, ETag and modification time, whose bytes the pool still holds, is not read at all:
its entry is carried over.  A listed file gone by the time it is read is left out with a
warning (the reconciliation then reports its row without a file).

Everything happens under the repository's lock and before the manifest is written, like
the data files: a crash leaves only files no snapshot refers to, which prune collects.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import BucketError, ConfigError
from ..runtime.progress import byte_bar
from ..snapshot import manifest as mf
from ..storage import pool
from ..storage.base import Storage
from ..storage.location import SnapshotLocation
from .endpoint import BLOCK, Endpoint, Head

log = logging.getLogger("backupkit")

#: Files read at a time (most are small: the requests' latency, not bandwidth, sets the pace).
THREADS = 4


@dataclass(frozen=True)
class BucketChoice:
    """Which buckets a backup takes (``names``, or ``every`` bucket) and from where."""

    endpoint: Endpoint
    names: tuple[str, ...] = ()
    every: bool = False

    def resolve(self) -> list[str]:
        """The bucket names to back up, checked against the endpoint."""
        there = self.endpoint.buckets()
        if self.every:
            return there
        missing = sorted(set(self.names) - set(there))
        if missing:
            raise BucketError(
                f"no such bucket at {self.endpoint.where}: {', '.join(missing)}",
                hint=f"the endpoint has: {', '.join(there) or 'no buckets'}",
            )
        return sorted(set(self.names))


def check_choice(names: Iterable[str], every: bool) -> tuple[str, ...]:
    """``names`` when they make a choice with ``every``; ConfigError otherwise."""
    names = tuple(names)
    if every and names:
        raise ConfigError("`storage_buckets` and `storage_all_buckets` exclude each other: give one")
    if any(not n or "/" in n for n in names):
        raise ConfigError(f"`storage_buckets` {list(names)!r}: a bucket name is not empty and has no /")
    return names


def previous_files(manifest: Mapping | None) -> dict[tuple[str, str], dict]:
    """(bucket, key) -> file entry of an earlier snapshot, for carrying unchanged files over."""
    if not manifest:
        return {}
    return {(b["name"], f["key"]): f for b in (manifest.get("storage") or {}).get("buckets", []) for f in b["files"]}


@dataclass
class Copier:
    """Copies bucket files into ``staging`` (a snapshot being written in the repository ``storage``)."""

    endpoint: Endpoint
    storage: Storage
    staging: SnapshotLocation
    shares: bool
    previous: dict[tuple[str, str], dict] = field(default_factory=dict)
    #: Files and bytes read from the endpoint, bytes carried over from the previous snapshot,
    #: and bytes newly stored in the repository (read files neither the pool nor this snapshot had).
    read_files: int = 0
    read_bytes: int = 0
    carried_bytes: int = 0
    added_bytes: int = 0
    _names: itertools.count = field(default_factory=itertools.count)

    def bucket(self, name: str, settings: dict | None, show: bool) -> dict:
        """Back up one bucket: its ``model.Bucket`` entry."""
        listed = list(self.endpoint.list(name))
        bar = byte_bar(sum(h.size for h in listed), f"bucket {name}", show)
        with bar, ThreadPoolExecutor(THREADS) as workers:
            results = list(workers.map(lambda h: self._one(name, h, bar), listed))
        for h, result in zip(listed, results, strict=True):
            if result is None:
                log.warning(
                    "storage: %s/%s was listed but gone when read (deleted meanwhile, or a "
                    "storage.objects row whose file is missing); it is not in the snapshot",
                    name,
                    h.key,
                )
        done = [r for r in results if r is not None]
        files = [f for f, _, _ in done]
        self.read_files += sum(1 for _, read, _ in done if read)
        self.read_bytes += sum(f["size"] for f, read, _ in done if read)
        self.carried_bytes += sum(f["size"] for f, read, _ in done if not read)
        self.added_bytes += sum(added for _, _, added in done)
        return {"name": name, "settings": settings, "files": files, "bytes": sum(f["size"] for f in files)}

    def _one(self, bucket: str, listed: Head, bar: object) -> tuple[dict, bool, int] | None:
        """The file's entry, whether it was read (False: carried over), and the bytes it added;
        None when the file is gone by the time it is read."""
        before = self.previous.get((bucket, listed.key))
        if before is not None and _unchanged(before, listed) and self._still_stored(before):
            bar.update(before["size"])  # type: ignore[attr-defined]
            return dict(before), False, 0
        # A busy bucket loses files between the listing and their reads, and Supabase lists
        # storage.objects rows, whose file may be missing: either is a row without its file
        # for the reconciliation to report, not a reason to have no backup at all.
        opened = self.endpoint.open_if_there(bucket, listed.key)
        if opened is None:
            return None
        head, body = opened
        staged = self.staging.key(f"{mf.FILES_DIR}/.incoming-{next(self._names)}")
        digest, size = hashlib.sha256(), 0
        try:
            with body, self.storage.create(staged) as out:
                for block in iter(lambda: body.read(BLOCK), b""):
                    digest.update(block)
                    out.write(block)
                    size += len(block)
                    bar.update(len(block))  # type: ignore[attr-defined]
        except (BotoCoreError, ClientError, ConnectionError, TimeoutError) as exc:
            # The endpoint's stream broke off (a repository failure is another OSError: raised as it is).
            raise BucketError(f"{bucket}/{listed.key}: the download broke off ({type(exc).__name__})") from None
        if size != head.size:
            raise BucketError(
                f"{bucket}/{listed.key}: read {size} bytes, the endpoint announced {head.size}",
                hint="the file changed while it was read; run the backup again",
            )
        sha = digest.hexdigest()
        shared, added = self._store(staged, sha, size)
        return self._entry(listed, head, sha, size, shared), True, size if added else 0

    def _still_stored(self, before: dict) -> bool:
        if before.get("shared") is True and self.shares:
            return pool.has(self.storage, before["sha256"], before["bytes"])
        return False  # a file in the previous snapshot's own folder is not this snapshot's

    def _store(self, staged: str, sha: str, size: int) -> tuple[bool, bool]:
        """Name the staged file by its hash: (in the pool?, newly stored?)."""
        if self.shares:
            outcome = pool.share(self.storage, staged, sha, size)
            if outcome != pool.KEPT:
                return True, outcome == pool.ADDED
        try:
            self.storage.rename(staged, self.staging.key(f"{mf.FILES_DIR}/{sha}"))
        except FileExistsError:  # another key of this snapshot has the same bytes
            self.storage.remove(staged)
            return False, False
        return False, True

    @staticmethod
    def _entry(listed: Head, head: Head, sha: str, size: int, shared: bool) -> dict:
        """The file's ``model.BucketFile``: ETag and time as the listing shows them (what the
        next backup compares), type, caching and metadata as the download did.  A file replaced
        between the listing and the download gets the download's ETag and time: those of the
        bytes stored (the listing's would call another version the same on restore)."""
        described = head if head.etag and head.etag != listed.etag else listed
        entry = {
            "key": head.key,
            "path": f"{mf.FILES_DIR}/{sha}",
            "bytes": size,
            "sha256": sha,
            "size": size,
            "content_sha256": sha,
            "content_type": head.content_type,
            "cache_control": head.cache_control,
            "metadata": dict(head.metadata),
            "etag": described.etag,
            "last_modified": described.last_modified,
        }
        if shared:
            entry["shared"] = True
        return entry


def _unchanged(before: Mapping, now: Head) -> bool:
    return (before.get("etag"), before.get("size"), before.get("last_modified")) == (
        now.etag,
        now.size,
        now.last_modified,
    )
