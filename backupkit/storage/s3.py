"""A repository under a prefix of an S3 bucket (AWS S3, Cloudflare R2, Backblaze B2, MinIO,
Supabase Storage's S3 endpoint), through botocore (boto3's core).

Names are ``/``-separated keys under the prefix; a "folder" is a key prefix that has
objects under it.  Configuration is botocore's own, as for boto3 and the AWS CLI
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``,
``AWS_PROFILE`` and the config files); nothing here reads or prints a secret, and every
failure becomes an ``OSError`` whose message is written here, never the server's text.

Writes stream (``s3io.Writer``: one ``PutObject``, or a multipart upload holding a few
parts in memory) and are exclusive and durable: a conditional write (``If-None-Match: *``)
either creates the object or fails with 412, so two hosts racing for ``.lock`` cannot
both win.  S3 has no rename, so ``rename`` copies server-side in an order that never shows
a prefix holding a manifest but lacking its files (see ``rename``); the repository
lists a prefix without ``manifest.json`` as unfinished (``atomic_rename`` is False).

Object Lock (``backup(..., object_lock_days=N)``): ``with_retention(mode, until)`` is a
view of the repository whose every new object (``PutObject``, ``CreateMultipartUpload``,
``CopyObject``) carries that retention.  A backup writes its staging prefix through the
plain storage, unlocked, and publishes it through the locked view: the server-side copies
that ``rename`` makes *are* the snapshot's objects, and each is created locked (no window
in which a published object is unlocked, no extra request per object), while the unlocked
staging sources are deleted as before.  Locking the staged objects instead would lock a
second copy of every byte: their versions could not be removed before the retention ends,
so each backup would store its data twice until then.  A bucket with Object Lock is
versioned: deleting a key without a version id only adds a delete marker (which a lock
does not forbid), and the locked versions stay, billed, until their retention ends and a
lifecycle rule (``NoncurrentVersionExpiration``) removes them; backupkit never deletes a
version.  Prune keeps a snapshot until the ``object_lock.retain_until`` its manifest
records (``retention.prune``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ConfigError
from .base import BLOCK, Entry, NotAPlainFile, Storage, check_name, valid_name
from .s3io import Reader, S3Error, Writer, etag_of
from .scratch import scratch

#: Bytes per multipart part (see ``s3io.Writer``); S3 wants at least 5 MiB but for the last.
PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20
#: CopyObject copies at most 5 GiB; larger objects are copied in parts of this size.
COPY_LIMIT = 5 << 30
COPY_PART = 512 << 20
#: Server-side copies in flight while a prefix is renamed (each is one request, no data through us).
COPY_THREADS = 8
#: Published last and unpublished first: a prefix holding the manifest holds every file.
MANIFEST, SIGNATURE = "manifest.json", "manifest.json.sig"

#: S3 Object Lock retention modes: GOVERNANCE can be lifted by a user allowed to bypass it,
#: COMPLIANCE by nobody (not even the account's root) until it ends.
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
#: Content-MD5 of an empty body (a CopyObject's), base64.
_EMPTY_MD5 = base64.b64encode(hashlib.md5(b"", usedforsecurity=False).digest()).decode()

_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
#: botocore's data loader (the service models, parsed from JSON), shared by every client this
#: process makes: a new session would parse them again, ~0.05-0.2 s of CPU per client.  A
#: forked backup worker inherits it already filled.  Credentials stay per session.
_loader: Any = None
_loader_lock = threading.Lock()


def _shared_loader() -> Any:
    global _loader
    with _loader_lock:
        if _loader is None:
            import botocore.loaders

            _loader = botocore.loaders.create_loader()
        return _loader


_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403"}


@dataclass
class _Node:
    """A folder in a listing: its files and sub-folders, and when anything under it last changed."""

    files: dict[str, Entry] = field(default_factory=dict)
    dirs: dict[str, _Node] = field(default_factory=dict)
    mtime: float = 0.0


class S3Storage(Storage):
    """Objects under ``prefix`` in ``bucket``.  ``endpoint_url``, ``region`` and ``profile``
    override botocore's configuration; ``part_size`` is the multipart part (>= 5 MiB)."""

    atomic_rename = False
    verified_writes = True  # every body goes with its Content-MD5, which S3 checks (s3io.Writer)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        part_size: int = PART_SIZE,
    ):
        prefix = prefix.strip("/")
        if not bucket or "/" in bucket or (prefix and check_name(prefix)):
            raise ValueError(f"not an S3 bucket and prefix: {bucket!r}, {prefix!r}")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's smallest part)")
        self.bucket, self.prefix = bucket, prefix
        self.endpoint_url, self.region, self.profile = endpoint_url, region, profile
        self.part_size = part_size
        self.location = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        #: (mode, retain-until) every object this storage creates carries; None: no Object Lock.
        self.retention: tuple[str, datetime] | None = None
        self._s3: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Storage({self.location!r})"

    def _identity(self) -> tuple[object, ...]:
        return (self.bucket, self.prefix, self.endpoint_url, self.region, self.profile)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Storage) and other._identity() == self._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    # Worker processes receive the storage pickled: the client (sockets, a lock) is made
    # again there, from the same configuration, on first use.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_s3"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- Object Lock ----------------------------------------------------------------------------

    def with_retention(self, mode: str, until: datetime) -> S3Storage:
        """This repository, but every object it creates (written or copied) is locked in ``mode``
        (``GOVERNANCE`` or ``COMPLIANCE``) until ``until`` (a time with a zone).  See the module
        docstring for how a backup uses it."""
        if mode not in LOCK_MODES:
            raise ValueError(f"Object Lock mode must be one of {', '.join(LOCK_MODES)}, not {mode!r}")
        if until.utcoffset() is None:
            raise ValueError(f"retain-until time {until} has no time zone")
        view = S3Storage(
            self.bucket,
            self.prefix,
            endpoint_url=self.endpoint_url,
            region=self.region,
            profile=self.profile,
            part_size=self.part_size,
        )
        view.retention = (mode, until)
        return view

    def _retention_args(self) -> dict[str, Any]:
        """The request parameters that lock a new object, or none."""
        if self.retention is None:
            return {}
        mode, until = self.retention
        return {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": until}

    def object_lock_enabled(self) -> bool | None:
        """Whether the bucket has Object Lock enabled; None when this client may not ask
        (``s3:GetBucketObjectLockConfiguration`` denied): then only a locked write can tell."""
        try:
            r = self._client().get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("ObjectLockConfigurationNotFoundError", "NotImplemented") or status == 501:
                return False  # none configured, or a store that does not offer Object Lock
            if code in _DENIED or status == 403:
                return None
            raise self._error(exc, "") from None
        except BotoCoreError as exc:
            raise self._error(exc, "") from None
        return r.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    # -- the client and its errors ----------------------------------------------------------

    def _client(self) -> Any:
        with self._lock:  # botocore sessions are not thread-safe while a client is being made
            if self._s3 is None:
                # botocore itself: boto3 would add its own imports (s3transfer, resources),
                # ~0.1 s of CPU in every process that touches the bucket, for nothing used here.
                import botocore.session
                from botocore.config import Config

                # The user's AWS_MAX_ATTEMPTS / AWS_RETRY_MODE win; otherwise bounded standard retries.
                user_retries = "AWS_MAX_ATTEMPTS" in os.environ or "AWS_RETRY_MODE" in os.environ
                # Every upload carries its Content-MD5, which S3 checks; a CRC32 besides (botocore's
                # default) would cost a second pass on each side for nothing.  The user's setting wins.
                user_checksum = "AWS_REQUEST_CHECKSUM_CALCULATION" in os.environ
                config = Config(
                    max_pool_connections=2 * COPY_THREADS,
                    retries=None if user_retries else {"mode": "standard", "max_attempts": 4},
                    request_checksum_calculation=None if user_checksum else "when_required",
                )
                session = botocore.session.Session(profile=self.profile)
                session.register_component("data_loader", _shared_loader())
                try:
                    client = session.create_client(
                        "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
                    )
                except ValueError:  # botocore's "Invalid endpoint: <the value>"; the value is not repeated
                    raise ConfigError(
                        "the S3 endpoint is not a URL (the storage's endpoint_url, or AWS_ENDPOINT_URL)",
                        hint="give it as https://host[:port], e.g. AWS_ENDPOINT_URL=https://s3.eu-central-1.amazonaws.com",
                    ) from None
                client.meta.events.register("before-call.s3.CopyObject", _md5_of_a_locked_copy)
                self._s3 = client
            return self._s3

    def _endpoint(self) -> str:
        """The endpoint for a message: scheme, host and port only (no user info, no query)."""
        try:
            parts = urlsplit(str(self._client().meta.endpoint_url))
            return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        except Exception:  # a message helper must not fail
            return "the configured endpoint"

    def _error(self, exc: Exception, name: str, method: str = "") -> OSError:
        """``exc`` from botocore (raised by client ``method``) as the ``OSError`` callers handle,
        with a message written here."""
        where = self.where(name)
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NOT_FOUND:
                return FileNotFoundError(2, "no such object", where)
            if code == "NoSuchUpload":  # completed or aborted already (or by the bucket's lifecycle rule)
                return FileNotFoundError(2, "no such multipart upload", where)
            # 409: a concurrent write to the key won while our conditional one was completing.
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                return FileExistsError(17, "already exists", where)
            if code == "NoSuchBucket":
                return S3Error(f"bucket {self.bucket} does not exist at {self._endpoint()}", where)
            if method.startswith("delete") and (code in _DENIED or status == 403):
                return S3Error(_DELETE_DENIED.format(code=code or status), where)
            if code in _DENIED or status == 403:
                return S3Error(f"access denied ({code or status}): check the credentials and the bucket policy", where)
            if self.retention is not None and code in ("InvalidRequest", "InvalidArgument"):
                return S3Error(
                    f"S3 refused to lock the object ({code}): the bucket needs Object Lock enabled "
                    "and the retain-until time must lie in the future",
                    where,
                )
            return S3Error(f"S3 refused the request ({code or 'HTTP'} {status})", where)
        name_of = type(exc).__name__
        if name_of in ("NoCredentialsError", "PartialCredentialsError"):
            return S3Error("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE", where)
        if name_of == "ProfileNotFound":
            return S3Error(f"AWS profile {self.profile or os.environ.get('AWS_PROFILE', '')!r} does not exist", where)
        if name_of in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
            return S3Error(f"cannot reach the S3 endpoint {self._endpoint()}", where)
        return S3Error(f"S3 request failed ({name_of})", where)

    def _call(self, method: str, name: str, **kwargs: Any) -> Any:
        """Client ``method`` on this bucket; errors as ``OSError`` about ``name``."""
        try:
            return getattr(self._client(), method)(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, name, method) from None

    def key(self, name: str) -> str:
        """The object key of storage name ``name`` ("" for the prefix itself)."""
        return f"{self.prefix}/{name}" if self.prefix and name else (name or self.prefix)

    def _objects(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, listing entry) of every object under folder ``prefix`` ("" for all)."""
        base = self.key(prefix)
        start = f"{base}/" if base else ""
        try:
            paginator = self._client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(start) :]
                    if rel and not check_name(rel):  # skips "folder/" markers and the like
                        yield (f"{prefix}/{rel}" if prefix else rel), obj
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, prefix) from None

    def _tree(self, prefix: str) -> _Node:
        """Everything under folder ``prefix`` in one listing, as nested folders."""
        root = _Node()
        for name, obj in self._objects(prefix):
            mtime = obj["LastModified"].timestamp()
            node = root
            parts = (name[len(prefix) + 1 :] if prefix else name).split("/")
            for seg in parts[:-1]:
                node.mtime = max(node.mtime, mtime)
                node = node.dirs.setdefault(seg, _Node())
            node.mtime = max(node.mtime, mtime)
            node.files[parts[-1]] = Entry(name, "file", obj["Size"], mtime, (obj.get("ETag", ""),))
        return root

    def _folder(self, prefix: str) -> _Node:
        """``_tree(prefix)``; ``FileNotFoundError`` / ``NotAPlainFile`` when it is no folder."""
        node = self._tree(valid_name(prefix) if prefix else "")
        if prefix and not node.files and not node.dirs:
            if self._head(prefix) is not None:
                raise NotAPlainFile(prefix, "is not a folder")
            raise FileNotFoundError(2, "no such folder", self.where(prefix))
        return node

    def _head(self, name: str) -> Entry | None:
        try:
            r = self._call("head_object", name, Key=self.key(name))
        except FileNotFoundError:
            return None
        return Entry(name, "file", r["ContentLength"], r["LastModified"].timestamp(), (r.get("ETag", ""),))

    def _has_objects(self, prefix: str) -> bool:
        r = self._call("list_objects_v2", prefix, Prefix=self.key(prefix) + "/", MaxKeys=1)
        return bool(r.get("Contents"))

    @staticmethod
    def _children(node: _Node, base: str) -> list[Entry]:
        dirs = [Entry(f"{base}/{n}" if base else n, "dir", 0, d.mtime) for n, d in node.dirs.items()]
        return sorted([*dirs, *node.files.values()], key=lambda e: (e.name, e.kind))

    # -- reading ------------------------------------------------------------------------------

    def open(self, name: str) -> BinaryIO:
        valid_name(name)
        try:
            r = self._call("get_object", name, Key=self.key(name))
        except FileNotFoundError:
            if self._has_objects(name):
                raise NotAPlainFile(name, "is a folder") from None
            raise
        return cast(BinaryIO, Reader(r["Body"], self, name))

    def stat(self, name: str) -> Entry:
        entry = self._head(valid_name(name))
        if entry is not None:
            return entry
        node = self._tree(name)
        if not node.files and not node.dirs:
            raise FileNotFoundError(2, "no such object or folder", self.where(name))
        return Entry(name, "dir", 0, node.mtime)

    def content_tag(self, entry: Entry) -> str | None:
        """The object's ETag: the MD5 of its bytes (a single PUT, a copy) or of its parts' MD5s
        (a multipart upload), where the store computes it so (not SSE-KMS, not every store)."""
        return etag_of(entry) or None

    def list(self, prefix: str = "") -> list[Entry]:
        return self._children(self._folder(prefix), prefix)

    def walk(self, prefix: str) -> Iterator[Entry]:
        """Every entry under ``prefix`` from one listing, depth first like a folder's walk."""

        def down(node: _Node, base: str) -> Iterator[Entry]:
            for entry in self._children(node, base):
                yield entry
                if entry.kind == "dir":
                    yield from down(node.dirs[entry.basename], entry.name)

        yield from down(self._folder(prefix), prefix)

    @contextlib.contextmanager
    def local_path(self, name: str) -> Iterator[Path]:
        """``name`` downloaded into a private scratch folder, removed on exit."""
        with scratch() as tmp, self.open(name) as src:
            base = name.rsplit("/", 1)[-1]
            with tmp.create(base) as dst:
                shutil.copyfileobj(src, dst, BLOCK)
            yield tmp.path(base)

    # -- writing ------------------------------------------------------------------------------

    def create(self, name: str) -> BinaryIO:
        # No HEAD first: the conditional write at close (If-None-Match: *) is what makes a
        # write exclusive, and a request per file before its first byte would hold up every
        # data file a backup streams by one round trip.  A taken name is refused at close.
        valid_name(name)
        return cast(BinaryIO, Writer(self, name))

    def _copy(self, src: str, dst: str, size: int) -> None:
        """Copy object ``src`` to ``dst`` inside the bucket, server-side."""
        source = {"Bucket": self.bucket, "Key": self.key(src)}
        lock = self._retention_args()  # a copy is a new object: it is locked as it is created
        if size <= COPY_LIMIT:
            self._call("copy_object", dst, Key=self.key(dst), CopySource=source, **lock)
            return
        upload = self._call("create_multipart_upload", dst, Key=self.key(dst), **lock)["UploadId"]
        try:
            parts = []
            for n, start in enumerate(range(0, size, COPY_PART), 1):
                r = self._call(
                    "upload_part_copy",
                    dst,
                    Key=self.key(dst),
                    UploadId=upload,
                    PartNumber=n,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{min(start + COPY_PART, size) - 1}",
                )
                parts.append({"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]})
            self._call(
                "complete_multipart_upload", dst, Key=self.key(dst), UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(OSError):
                self._call("abort_multipart_upload", dst, Key=self.key(dst), UploadId=upload)
            raise

    def rename(self, src: str, dst: str) -> None:
        """Copy every object of ``src`` to ``dst``, then delete the sources.

        Order: the data files (in parallel), then ``manifest.json.sig``, then
        ``manifest.json``; deleting starts with ``src``'s ``manifest.json``.  An
        interruption anywhere leaves at most one prefix with a manifest, and it is
        complete; a prefix without one is listed as unfinished and pruned when stale.
        When S3 refuses that first delete (a lock, a bucket policy), nothing of ``src`` is
        gone: the copies are removed again and ``src`` stays as it was, listed once.
        With ``retention`` set, every copy is created locked (see the module docstring).
        """
        valid_name(src)
        valid_name(dst)
        if self._head(dst) is not None or self._has_objects(dst):
            raise FileExistsError(17, "already exists", self.where(dst))
        try:
            files = [e for e in self.walk(src) if e.kind == "file"]
        except (FileNotFoundError, NotAPlainFile):
            files = []  # no folder: perhaps one object
        if not files:
            single = self._head(src)
            if single is None:
                raise FileNotFoundError(2, "no such object or folder", self.where(src))
            self._copy(src, dst, single.size)
            self._delete_or_undo([src], src, dst)
            return
        last = [f"{src}/{SIGNATURE}", f"{src}/{MANIFEST}"]
        first = [e for e in files if e.name not in last]
        ordered = sorted((e for e in files if e.name in last), key=lambda e: last.index(e.name))

        def copy(entry: Entry) -> None:
            self._copy(entry.name, dst + entry.name[len(src) :], entry.size)

        with ThreadPoolExecutor(COPY_THREADS) as pool:
            list(pool.map(copy, first))  # raises the first failure, after the others finished
        for entry in ordered:
            copy(entry)
        names = [e.name for e in reversed(ordered)] + [e.name for e in first]
        manifest = f"{src}/{MANIFEST}"
        self._delete_or_undo(names, manifest if manifest in names else None, dst)

    def _delete_or_undo(self, names: Sequence[str], sentinel: str | None, dst: str) -> None:
        """Delete the sources ``names`` of a rename to ``dst``.  ``sentinel`` is deleted alone and
        first (a manifest, or the one object renamed): when it is still there after a failure,
        nothing of the source is gone and ``dst`` is a duplicate, removed again (best effort)
        so that the rename failed as a whole and the source is listed once, as before."""
        try:
            self._delete(names)
        except OSError:
            with contextlib.suppress(OSError):
                if sentinel is not None and self._head(sentinel) is not None:
                    self.remove(dst)
            raise

    def _delete(self, names: Sequence[str]) -> None:
        """Delete ``names``; a manifest among them is deleted alone and first."""
        head = [n for n in names if n.endswith(f"/{MANIFEST}") or n == MANIFEST]
        for n in head:
            self._call("delete_object", n, Key=self.key(n))
        rest = [n for n in names if n not in head]
        for i in range(0, len(rest), 1000):  # DeleteObjects takes at most 1000 keys
            batch = rest[i : i + 1000]
            r = self._call(
                "delete_objects", batch[0], Delete={"Objects": [{"Key": self.key(n)} for n in batch], "Quiet": True}
            )
            if r.get("Errors"):
                failed = r["Errors"][0]
                code = str(failed.get("Code", "?"))
                why = _DELETE_DENIED.format(code=code) if code in _DENIED else f"cannot delete ({code})"
                raise S3Error(why, self.where(batch[0]))

    def remove(self, name: str) -> None:
        valid_name(name)
        names = [n for n, _ in self._objects(name)]
        if self._head(name) is not None:
            names.append(name)
        self._delete(names)  # a snapshot's manifest first: what remains never looks complete
        self._abort_uploads(name)

    def _abort_uploads(self, prefix: str) -> None:
        """Abort the unfinished multipart uploads under ``prefix``: a killed backup's parts are
        stored (and billed) but listed nowhere else, so removing its folder must end them too."""
        pages = self._client().get_paginator("list_multipart_uploads")
        try:
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.key(prefix) + "/"):
                for upload in page.get("Uploads", []):
                    self._call("abort_multipart_upload", prefix, Key=upload["Key"], UploadId=upload["UploadId"])
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, prefix) from None


_DELETE_DENIED = (
    "S3 refused to delete ({code}): an Object Lock retention or legal hold, or the bucket policy, forbids it"
)


def _md5_of_a_locked_copy(params: dict[str, Any], **_: Any) -> None:
    """botocore ``before-call`` hook of CopyObject: a request that creates a locked object must
    carry Content-MD5 (or a checksum) at some S3-compatible stores (and moto); a copy's body is
    empty, so its MD5 is that of nothing.  AWS accepts it, with or without."""
    headers = params.get("headers")
    if isinstance(headers, dict) and "x-amz-object-lock-mode" in headers and "Content-MD5" not in headers:
        headers["Content-MD5"] = _EMPTY_MD5
