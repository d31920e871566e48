"""Streams of ``S3Storage``: a reader of a GET's body and a writer that uploads as it goes.

The writer keeps memory flat whatever the file's size: it buffers one part
(``part_size``, 8 MiB by default) and has at most ``PARTS_IN_FLIGHT`` more being
uploaded by its threads; a small file is one conditional ``PutObject``.  Nothing
appears under the name until the writer is closed without an error
(``CompleteMultipartUpload`` with ``If-None-Match: *``); otherwise the upload is aborted.

A file can be ``redirect``-ed to another name before it is closed: the repository's pool
stores data files under their hash (``storage.pool.place``), known only once the last
byte is written.  A file still one unsent part goes there in one ``PutObject``; a larger
one is uploaded under its own name, then copied there server-side by the writer itself.
Either way the writer knows the MD5 of its bytes (and of its parts), so a name taken
already is accepted only when its ETag is one of those (``holds``): a pool object
overwritten with other bytes of the same size is never taken for this file.

A store whose ETags are not MD5s (SSE-KMS on AWS, some S3-compatible stores) never
matches: the file then stays under its own name, and the snapshot keeps its own copy.
That costs space where the pool object was intact; taking an ETag that does not match
for a match could cost a snapshot.

Through a storage with ``retention`` (``S3Storage.with_retention``) the object is created
locked: ``PutObject`` or ``CreateMultipartUpload`` carries the Object Lock mode and
retain-until time, and every request with a body carries its Content-MD5, which S3
requires of uploads to a locked object whatever the client's checksum settings.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import io
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .base import AbortOnError, Entry, valid_name

if TYPE_CHECKING:
    from .s3 import S3Storage

#: Parts uploaded concurrently by one writer (besides the one being filled): the upload
#: keeps going while the next part is produced, and memory stays below (1 + this) parts.
PARTS_IN_FLIGHT = 3


class S3Error(OSError):
    """S3 could not be used (unreachable, no credentials, access denied, no such bucket).

    ``errno`` is None so that every caller shows the message written here.
    """

    def __init__(self, message: str, where: str):
        super().__init__(None, message, where)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"

    def __reduce__(self) -> tuple[type[S3Error], tuple[str, str]]:
        # A backup worker process sends it back pickled: OSError's own way calls
        # S3Error(None, message, where), which fails, and the pool then reports a dead worker.
        return (S3Error, (str(self.strerror), str(self.filename)))


class Reader(io.RawIOBase):
    """The body of a GET, streamed; network failures become ``OSError``."""

    def __init__(self, body: Any, storage: S3Storage, name: str):
        self._body, self._storage, self._name = body, storage, name

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except (ClientError, BotoCoreError) as exc:
            raise self._storage._error(exc, self._name) from None
        except Exception as exc:  # urllib3's own (a reset connection)
            raise S3Error(f"reading stopped ({type(exc).__name__})", self._storage.where(self._name)) from None

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            except Exception:  # closing a broken connection: nothing left to do
                pass
        super().close()


def _multipart_etag(parts: list[dict[str, Any]]) -> str | None:
    """The ETag S3 gives an object completed from ``parts``: the MD5 of their MD5s, ``-N``; None
    when a part's ETag is not an MD5 (some S3-compatible stores, encrypted uploads)."""
    try:
        digests = b"".join(bytes.fromhex(str(p["ETag"]).strip('"')) for p in parts)
    except ValueError:
        return None
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"


def etag_of(entry: Entry) -> str:
    """The ETag S3 gave object ``entry`` (``S3Storage`` keeps it as its ``version``), unquoted."""
    return str(entry.version[0] if entry.version else "").strip('"')


def holds(found: Entry, size: int, etags: Collection[str]) -> bool:
    """Whether object ``found`` holds the ``size`` bytes whose possible ETags are ``etags``
    (the MD5 of the whole, as a ``PutObject`` or ``CopyObject`` gives it; that of the parts,
    as a multipart upload does), in lowercase hex.  Any other ETag is not known to be of
    those bytes: a store whose ETags are not MD5s never matches."""
    return found.size == size and etag_of(found).lower() in etags


class Writer(AbortOnError, io.RawIOBase):
    """A new object, uploaded while it is written; see the module docstring."""

    def __init__(self, storage: S3Storage, name: str):
        self._s, self._name, self._key = storage, name, storage.key(name)
        self._buf = bytearray()
        self._upload: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._pending: collections.deque[Future[dict[str, Any]]] = collections.deque()
        self._sent = 0  # bytes handed to parts
        #: MD5 of the bytes handed to parts (of the whole file, once closed), and of each part.
        self._whole = hashlib.md5(usedforsecurity=False)
        self._digests: dict[int, bytes] = {}
        self._redirect: str | None = None
        #: After ``close``, for a redirected file: ``"added"`` (stored under the new name),
        #: ``"present"`` (that name held the same bytes already), or ``""`` (under its own name).
        self.placed = ""

    def redirect(self, name: str) -> bool:
        """Store the file under ``name`` instead of its own, when it is closed (False: closed
        already).  ``name`` is taken only if free, or holding these very bytes by its ETag (a
        content-addressed name: the same file); otherwise the file stays under its own name.
        ``placed`` says which, after ``close``.  A file sent in parts is uploaded under its own
        name first, then copied to ``name`` server-side."""
        if self.closed:
            return False
        self._redirect = valid_name(name)
        return True

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed file")
        view = memoryview(data).cast("B")
        n, size = len(view), self._s.part_size
        while view:
            if len(self._buf) >= size:  # a full part, and more is coming: it is not the last
                self._send_part()
            take = size - len(self._buf)
            self._buf += view[:take]
            view = view[take:]
        return n

    def _md5(self, body: bytes) -> dict[str, Any]:
        """Content-MD5 of ``body``: S3 refuses a body that does not match it, so a completed
        upload holds exactly the bytes sent (``S3Storage.verified_writes``), whatever the
        client's own checksum settings; locked objects require it anyway."""
        return {"ContentMD5": base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()}

    def _put_part(self, number: int, body: bytes) -> dict[str, Any]:
        md5 = self._md5(body)
        self._digests[number] = base64.b64decode(md5["ContentMD5"])
        r = self._s._call(
            "upload_part", self._name, Key=self._key, UploadId=self._upload, PartNumber=number, Body=body, **md5
        )
        return {"PartNumber": number, "ETag": r["ETag"]}

    def _send_part(self) -> None:
        if self._upload is None:
            self._upload = self._s._call(
                "create_multipart_upload", self._name, Key=self._key, **self._s._retention_args()
            )["UploadId"]
            self._pool = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="backupkit-s3-part")
        assert self._pool is not None
        while len(self._pending) >= PARTS_IN_FLIGHT:
            self._pending.popleft().result()  # waits for room; raises the first failure
        part = self._pool.submit(self._put_part, len(self._parts) + 1, bytes(self._buf))
        self._whole.update(self._buf)  # while the part goes up: hashlib lets go of the GIL
        self._sent += len(self._buf)
        self._parts.append(part)
        self._pending.append(part)
        self._buf.clear()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._upload is None:
                body = bytes(self._buf)
                lock = {**self._s._retention_args(), **self._md5(body)}
                if self._redirect is None or not self._put_redirected(body, lock):
                    self._put_new(body, lock)
            else:
                self._send_part()
                self._complete([p.result() for p in self._parts])
                self._upload = None
                if self._redirect is not None:
                    self._move_redirected()
        except BaseException:
            self.abort()
            raise
        self._stop()
        super().close()

    def _put_new(self, body: bytes, lock: dict[str, Any]) -> None:
        """PUT ``body`` under this writer's name, which must be new (``FileExistsError``).

        A refusal of a name that holds exactly ``body`` (size, and the ETag S3 gives a single
        PUT: the body's MD5) is this PUT's own: it landed, its answer was lost on the way, and
        the client sent it again.  Failing the backup for it would fail it for a network blip.
        """
        try:
            self._s._call("put_object", self._name, Key=self._key, Body=body, IfNoneMatch="*", **lock)
        except FileExistsError:
            found = self._s._head(self._name)
            if found is None or not holds(found, len(body), {hashlib.md5(body, usedforsecurity=False).hexdigest()}):
                raise

    def _complete(self, parts: list[dict[str, Any]]) -> None:
        """Complete the upload of ``parts`` under this writer's name, which must be new.

        As with ``_put_new``: when the answer to a completion that landed is lost, the client
        sends it again, and S3 may refuse it (412: the name is taken; or NoSuchUpload: the
        upload is over).  A name holding exactly this upload (its size, and the ETag S3 gives
        a multipart object: the MD5 of its parts' MD5s, then ``-`` and their number) is ours.
        """
        try:
            self._s._call(
                "complete_multipart_upload",
                self._name,
                Key=self._key,
                UploadId=self._upload,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except (FileExistsError, FileNotFoundError):
            found = self._s._head(self._name)
            etag = _multipart_etag(parts)
            if etag is None or found is None or found.size != self._sent or str(found.version[0]).strip('"') != etag:
                raise

    def _put_redirected(self, body: bytes, lock: dict[str, Any]) -> bool:
        """Put ``body`` under the redirected name; False when that name is not known to hold
        ``body`` (see the module docstring): its ETag is not ``body``'s MD5."""
        assert self._redirect is not None
        try:
            self._s._call(
                "put_object", self._redirect, Key=self._s.key(self._redirect), Body=body, IfNoneMatch="*", **lock
            )
            self.placed = "added"
            return True
        except FileExistsError:
            found = self._s._head(self._redirect)
            if found is not None and holds(found, len(body), {hashlib.md5(body, usedforsecurity=False).hexdigest()}):
                self.placed = "present"
                return True
            return False

    def _move_redirected(self) -> None:
        """After a multipart upload under this writer's name: copy it to the redirected name
        when that is free, or drop it when that name holds these bytes (by its ETag); otherwise
        it stays under its own name.  Both MD5s are this writer's own, never the server's."""
        assert self._redirect is not None
        found = self._s._head(self._redirect)
        if found is None:
            self._s._copy(self._name, self._redirect, self._sent)
            self.placed = "added"
        elif holds(found, self._sent, self._etags()):
            self.placed = "present"
        else:
            return
        self._s._call("delete_object", self._name, Key=self._key)

    def _etags(self) -> set[str]:
        """The ETags an object holding this multipart file's bytes can have: the MD5 of the whole
        (made by ``CopyObject``) and that of its parts' MD5s, ``-N`` (a multipart upload)."""
        digests = b"".join(self._digests[n] for n in sorted(self._digests))
        parts = f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(self._digests)}"
        return {self._whole.hexdigest(), parts}

    def _stop(self) -> None:
        self._buf = bytearray()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._parts.clear()
        self._pending.clear()

    def abort(self) -> None:
        """Close without keeping anything (an unfinished multipart upload is aborted)."""
        self._stop()  # no part is still being sent when the upload is aborted
        if self._upload is not None:
            upload, self._upload = self._upload, None
            try:
                self._s._call("abort_multipart_upload", self._name, Key=self._key, UploadId=upload)
            except OSError:
                pass  # left for the bucket's lifecycle rule; the object was never created
        super().close()

    def __del__(self) -> None:
        # IOBase would close (commit) a writer dropped unclosed; a dropped writer is a failed one.
        try:
            self.abort()
        except Exception:
            pass
