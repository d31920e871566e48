"""Putting a snapshot's Storage bucket files back (``restore --storage-bucket``).

Into the same project or another one: a missing bucket is created (public when the
snapshot's was), and with a database connection its ``storage.buckets`` settings
(public, size limit, MIME types) are set as the snapshot recorded them; Supabase's S3
API cannot set the last two.  A file already there is left alone when it is the same
(its bytes, and the type, caching and metadata the snapshot recorded) or newer than the
snapshot's copy, unless ``overwrite``; each decision is reported.  Every file is
checked against its SHA-256 before it becomes visible: a small one is read whole and
hashed first, a big one is uploaded in parts and the upload completed only when the hash
matched, so a damaged snapshot never lands in a bucket.
A dry run makes the same decisions and changes nothing: no bucket, row or file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from ..errors import BucketError, ConfigError, SnapshotDamaged, SnapshotError
from ..pg.dsn import connect
from ..runtime.progress import byte_bar, wanted
from ..runtime.signals import sigterm_as_interrupt
from ..snapshot import manifest as mf
from ..storage.location import locate
from .endpoint import PART, Endpoint, Head
from .reconcile import has_storage_tables

log = logging.getLogger("backupkit")

#: What ``decide`` says to do with one file.
UPLOAD, SAME, NEWER = "upload", "same", "newer"


def decide(entry: Mapping, there: Head | None, overwrite: bool, same_bytes: bool = False) -> str:
    """``UPLOAD`` the snapshot's file, or leave the target's: the ``SAME`` file (size and
    ETag, or ``same_bytes``: its SHA-256 is the snapshot's, and the type, caching and
    metadata the snapshot recorded), or a ``NEWER`` one (changed at or after the snapshot
    copy's time, to the second: HEAD's times have whole seconds, so a tie is kept;
    replaced only with ``overwrite``)."""
    if there is None:
        return UPLOAD
    if there.size == entry["size"] and (there.etag == entry["etag"] or same_bytes) and _described_alike(entry, there):
        return SAME
    if not overwrite and _when(there.last_modified) >= _when(entry["last_modified"]):
        return NEWER
    return UPLOAD


def _described_alike(entry: Mapping, there: Head) -> bool:
    """Whether the target file has the type, caching and metadata the snapshot recorded: the
    same bytes served as another type (or uncached, or without their metadata) break the app
    as surely as other bytes.  What the snapshot did not record is not compared (a restore
    does not set it either, and the server may fill in its own default)."""
    wanted = [(entry.get("content_type"), there.content_type), (entry.get("cache_control"), there.cache_control)]
    if any(mine is not None and mine != theirs for mine, theirs in wanted):
        return False
    return not entry.get("metadata") or dict(entry["metadata"]) == dict(there.metadata)


def _when(iso: str) -> datetime:
    # Whole seconds: Supabase lists times to the millisecond and HEAD gives an HTTP date, so a
    # copy of 12:00:00.700 and a target changed at 12:00:00.900 (HEAD: 12:00:00) are a tie, kept.
    try:
        return datetime.fromisoformat(iso).replace(microsecond=0)
    except ValueError:  # no time recorded: the target's copy may be anything, keep it
        return datetime.min.replace(tzinfo=UTC)


def needs_hash(entry: Mapping, there: Head | None) -> bool:
    """Whether only the target file's bytes can tell it is the snapshot's: the same size, but
    another ETag (a multipart upload's ETag depends on its part sizes, not only the bytes)."""
    return there is not None and there.size == entry["size"] and there.etag != entry["etag"]


@dataclass
class FilesRestored:
    """What ``restore_files`` did, per file ("bucket/key"); with ``dry_run``, what it would do."""

    uploaded: list[str] = field(default_factory=list)
    same: list[str] = field(default_factory=list)
    kept_newer: list[str] = field(default_factory=list)
    created_buckets: list[str] = field(default_factory=list)
    bytes: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "uploaded": self.uploaded,
            "same": self.same,
            "kept_newer": self.kept_newer,
            "created_buckets": self.created_buckets,
            "bytes": self.bytes,
            "dry_run": self.dry_run,
        }


def chosen(manifest: Mapping, buckets: Sequence[str] | None, prefixes: Sequence[str]) -> list[tuple[dict, list[dict]]]:
    """The snapshot's buckets named in ``buckets`` (None: all), each with its files under one
    of ``prefixes`` (none: all); ConfigError when the snapshot is encrypted (it holds no bucket
    files), has none, or lacks a bucket named."""
    if manifest.get("encryption"):
        raise ConfigError(
            "this snapshot is encrypted; it holds no Storage bucket files",
            hint="restore its database without `storage_buckets`; back the files up in a separate, unencrypted run",
        )
    there = {b["name"]: b for b in (manifest.get("storage") or {}).get("buckets", [])}
    if not there:
        raise ConfigError(
            "the snapshot has no Storage bucket files",
            hint="back them up with `backupkit backup --storage-bucket NAME` (or --storage-all-buckets)",
        )
    names = sorted(there) if buckets is None else list(dict.fromkeys(buckets))
    missing = [n for n in names if n not in there]
    if missing:
        raise ConfigError(
            f"the snapshot has no bucket {', '.join(missing)}", hint=f"it has: {', '.join(sorted(there))}"
        )
    return [
        (there[n], [f for f in there[n]["files"] if not prefixes or f["key"].startswith(tuple(prefixes))])
        for n in names
    ]


def check_request(
    snapshot: mf.SnapshotArg,
    buckets: Sequence[str] | None,
    prefixes: Sequence[str] = (),
    endpoint: Endpoint | None = None,
) -> None:
    """ConfigError when ``restore_files`` would refuse ``snapshot``'s ``buckets`` (encrypted, no
    bucket files, a bucket it lacks); reads the manifest only.  With ``endpoint``, also asks it
    whether each chosen bucket is there (changing nothing): BucketError when it cannot be
    reached, is not an S3 API or refuses the keys.

    A restore of the database and the files runs it before the database is touched: the
    files were refused, or their endpoint found wrong, only after the database was restored,
    half of what was asked.  A manifest that cannot be read is left to the restore, which
    says all that is wrong with the snapshot."""
    try:
        manifest = mf.read(locate(snapshot))
    except SnapshotError:
        return
    work = chosen(manifest, buckets, prefixes)
    if endpoint is not None:
        for bucket, _ in work:  # a missing bucket is fine: the restore makes it
            endpoint.has_bucket(bucket["name"])


def restore_files(
    snapshot: mf.SnapshotArg,
    endpoint: Endpoint | None = None,
    *,
    buckets: Sequence[str] | None = None,
    prefixes: Sequence[str] = (),
    overwrite: bool = False,
    dsn: str | None = None,
    progress: bool | None = None,
    dry_run: bool = False,
) -> FilesRestored:
    """Upload ``snapshot``'s bucket files (``buckets``: names, None for all; ``prefixes``:
    only keys starting with one) to ``endpoint`` (default: ``BACKUPKIT_STORAGE_*``).

    With ``dsn`` (the target project's database) each bucket's ``storage.buckets`` row
    gets the snapshot's settings; the database is reached before any bucket is touched.
    Restore the database first, then the files: Supabase Storage updates a file's
    ``storage.objects`` row when the file is uploaded.  ``dry_run``: decide every file
    as a restore would (reading the endpoint), change nothing, and say what would be done.
    """
    location = locate(snapshot)
    work = chosen(mf.read(location), buckets, prefixes)
    endpoint = endpoint or Endpoint.from_env()
    done = FilesRestored(dry_run=dry_run)
    # SIGTERM (systemd, docker, timeout) stops it like Ctrl-C: an unfinished multipart upload
    # is aborted on the way out instead of staying in the bucket, unseen and billed.
    with sigterm_as_interrupt():
        missing = _prepare_buckets(endpoint, work, dsn, done)
        _put_files(location, endpoint, work, missing, overwrite, done, wanted(progress))
    for name in done.kept_newer if not dry_run else ():
        log.warning("storage: kept %s: it changed after the snapshot (pass `overwrite` to replace it)", name)
    return done


def _prepare_buckets(
    endpoint: Endpoint, work: list[tuple[dict, list[dict]]], dsn: str | None, done: FilesRestored
) -> set[str]:
    """Make the buckets the target lacks and, with ``dsn``, set their settings (not in a dry
    run, which only notes them in ``done``); the names of the buckets that were missing."""
    missing = {bucket["name"] for bucket, _ in work if not endpoint.has_bucket(bucket["name"])}
    # Connected before any bucket is made, so a DSN that cannot be used fails with nothing changed.
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(connect(dsn)) if dsn is not None else None
        for bucket, _ in work:
            if bucket["name"] in missing:
                if not done.dry_run:
                    endpoint.create_bucket(bucket["name"], public=bool((bucket.get("settings") or {}).get("public")))
                done.created_buckets.append(bucket["name"])
        if conn is not None and not done.dry_run:
            # After the buckets are made: Supabase Storage's CreateBucket adds their rows itself.
            write_settings(conn, [b for b, _ in work])
    return missing


def _put_files(
    location: Any,
    endpoint: Endpoint,
    work: list[tuple[dict, list[dict]]],
    missing: set[str],
    overwrite: bool,
    done: FilesRestored,
    show: bool,
) -> None:
    """Decide every file of ``work`` and upload those to upload (not in a dry run), noting each in ``done``."""
    total = sum(f["size"] for _, files in work for f in files)
    with byte_bar(total, "files", show) as bar:
        for bucket, files in work:
            for f in files:
                name = f"{bucket['name']}/{f['key']}"
                there = None if bucket["name"] in missing else endpoint.head(bucket["name"], f["key"])
                same = needs_hash(f, there) and endpoint.sha256(bucket["name"], f["key"]) == f["content_sha256"]
                action = decide(f, there, overwrite, same)
                if action == UPLOAD:
                    if not done.dry_run:
                        _upload(location, endpoint, bucket["name"], f)
                    done.uploaded.append(name)
                    done.bytes += f["size"]
                else:
                    (done.same if action == SAME else done.kept_newer).append(name)
                bar.update(f["size"])


def _upload(location: Any, endpoint: Endpoint, bucket: str, f: Mapping) -> None:
    head = Head(
        f["key"],
        f["size"],
        f["etag"],
        f["last_modified"],
        f.get("content_type"),
        f.get("cache_control"),
        dict(f.get("metadata") or {}),
    )
    try:
        body = mf.open_file(location, f["path"])
    except OSError as exc:
        raise SnapshotError(f"{location.where(f['path'])}: cannot be read ({exc.strerror or exc})") from None
    with body:
        digest = hashlib.sha256()

        def check() -> None:
            if digest.hexdigest() != f["sha256"]:
                raise SnapshotDamaged(
                    f"{location.where(f['path'])} ({bucket}/{f['key']}) does not match its SHA-256; "
                    "it was not uploaded",
                    hint="run `backupkit verify` on the snapshot",
                )

        endpoint.upload(bucket, f["key"], _Hashing(body, digest), f["size"], head, before_commit=check)


class _Hashing:
    """A reader that hashes what passes through it."""

    def __init__(self, raw: Any, digest: Any):
        self._raw, self._digest = raw, digest

    def read(self, n: int = PART) -> bytes:
        data = self._raw.read(n)
        self._digest.update(data)
        return bytes(data)


def write_settings(conn: psycopg.Connection, buckets: Sequence[Mapping]) -> None:
    """Give each bucket's ``storage.buckets`` row the snapshot's settings (a row is made when
    the bucket has none), in one transaction on ``conn``; nothing when the target database has
    no ``storage.buckets``.  BucketError when the row cannot be written."""
    try:
        with conn.transaction():
            if not has_storage_tables(conn):
                log.warning("storage: the target database has no storage.buckets; bucket settings not restored")
                return
            for b in buckets:
                s = b.get("settings")
                if s is None:
                    continue
                conn.execute(
                    "INSERT INTO storage.buckets (id, name, public, file_size_limit, allowed_mime_types)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET public = excluded.public,"
                    " file_size_limit = excluded.file_size_limit, allowed_mime_types = excluded.allowed_mime_types",
                    [b["name"], b["name"], s["public"], s["file_size_limit"], s["allowed_mime_types"]],
                )
    except psycopg.Error as exc:
        reason = (exc.diag.message_primary if isinstance(exc, psycopg.DatabaseError) else None) or str(exc)
        raise BucketError(
            f"cannot set the buckets' settings in storage.buckets: {reason}",
            hint="connect as a role that may write storage.buckets (the project's postgres role), "
            "or restore the files without a DSN",
        ) from None
