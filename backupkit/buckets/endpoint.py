"""The Storage endpoint: Supabase Storage's S3-compatible API (or any S3 service standing in).

Configured apart from the repository's own S3 settings, because the two are usually
different services with different keys: ``BACKUPKIT_STORAGE_ENDPOINT``
(``https://<project>.supabase.co/storage/v1/s3``), ``BACKUPKIT_STORAGE_KEY_ID``,
``BACKUPKIT_STORAGE_SECRET`` and ``BACKUPKIT_STORAGE_REGION`` (the project's region).
The secret is read from the environment only, never from an argument (it would show in
``ps``), and is never printed, logged or written into a snapshot: ``repr`` and every
message name the endpoint by scheme, host and port alone.

Every failure becomes a ``BucketError`` whose message is written here, never the server's.
A URL that is not an S3 API (the project's URL without ``/storage/v1/s3``, a web page) is
told apart from a missing bucket or file by what it answers: S3 answers every GET with its
XML, a document or an ``<Error>`` whose code names the reason; anything else is
"not an S3 endpoint", found before any bucket is made or file written.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from ..errors import BucketError, ConfigError
from ..runtime.signals import deferred

#: Environment variables, by the ``Endpoint`` field each sets.
ENV = {
    "url": "BACKUPKIT_STORAGE_ENDPOINT",
    "key_id": "BACKUPKIT_STORAGE_KEY_ID",
    "secret": "BACKUPKIT_STORAGE_SECRET",
    "region": "BACKUPKIT_STORAGE_REGION",
}
#: Bytes per read of a file's body (memory per transfer stays about this).
BLOCK = 1 << 20
#: Parts of a multipart upload: S3 wants at least 5 MiB each, 10,000 at most.
PART = 8 << 20
MAX_PARTS = 10_000

_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403"}
#: What a request may raise: S3's answers, transport failures, and (not a BotoCoreError) a
#: 200 whose body is not XML, as a web page's.
_FAILS = (ClientError, BotoCoreError, ResponseParserError)
#: Statuses a proxy in front of S3 answers without S3's XML while the service is down or
#: rate-limits the project: a busy endpoint, not a wrong one.
_GATEWAY = {429, 502, 503, 504}
#: The S3 endpoint's form, for the hint when a URL is not one.
S3_FORM = "https://<project ref>.supabase.co/storage/v1/s3"


@dataclass(frozen=True)
class Head:
    """What the endpoint says about one file (HeadObject or a listing)."""

    key: str
    size: int
    etag: str
    last_modified: str  # ISO 8601, UTC
    content_type: str | None = None
    cache_control: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Endpoint:
    """One S3-compatible Storage endpoint and the keys to use it (the secret stays hidden)."""

    url: str
    key_id: str
    secret: str = field(repr=False)
    region: str = "us-east-1"
    _client: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @classmethod
    def from_env(
        cls, url: str | None = None, key_id: str | None = None, region: str | None = None, secret: str | None = None
    ) -> Endpoint:
        """The endpoint from arguments, else ``BACKUPKIT_STORAGE_*``; ConfigError naming what is missing."""
        values = {
            "url": url or os.environ.get(ENV["url"]),
            "key_id": key_id or os.environ.get(ENV["key_id"]),
            "secret": secret or os.environ.get(ENV["secret"]),
            "region": region or os.environ.get(ENV["region"]) or "us-east-1",
        }
        missing = [ENV[k] for k in ("url", "key_id", "secret") if not values[k]]
        if missing:
            raise ConfigError(
                f"Storage buckets need {', '.join(missing)}",
                hint="in the Supabase dashboard: Project Settings > Storage > S3 Connection "
                "(the endpoint, and an access key pair)",
            )
        parts = urlsplit(str(values["url"]))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{ENV['url']} is not an http(s) URL",
                hint="use the S3 endpoint, e.g. https://<project>.supabase.co/storage/v1/s3",
            )
        return cls(**values)  # type: ignore[arg-type]

    @property
    def where(self) -> str:
        """The endpoint for messages and manifests: scheme, host, port and path, nothing secret."""
        p = urlsplit(self.url)
        return f"{p.scheme}://{p.hostname}" + (f":{p.port}" if p.port else "") + p.path.rstrip("/")

    def client(self) -> Any:
        """The boto3 client (made once; path-style addressing, which Supabase Storage needs)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.url,
                    aws_access_key_id=self.key_id,
                    aws_secret_access_key=self.secret,
                    region_name=self.region,
                    config=Config(
                        s3={"addressing_style": "path"},
                        retries={"mode": "standard", "max_attempts": 4},
                        max_pool_connections=16,
                    ),
                )
            return self._client

    def not_s3(self, answer: str) -> BucketError:
        """The endpoint answered, but not as an S3 API does (``answer``: what it gave instead)."""
        return BucketError(
            f"{self.where} is not an S3 endpoint ({answer})",
            hint=f"set {ENV['url']} (or `storage_endpoint`) to the project's S3 endpoint, {S3_FORM} "
            "(Supabase dashboard: Project Settings > Storage > S3 Connection)",
        )

    def error(self, exc: Exception, bucket: str, key: str = "") -> BucketError:
        """A botocore failure as one line about ``bucket``/``key`` (never the server's text)."""
        what = f"{bucket}/{key}" if key else f"bucket {bucket}" if bucket else "listing the buckets"
        if isinstance(exc, ResponseParserError):  # a 200 whose body is no XML: a web page
            return self.not_s3("it answered with a page that is not S3's XML")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if not _s3_error(exc) and status not in _GATEWAY:
                # botocore gives a 200 whose body is not XML (a web page) as a 500, after retries.
                return self.not_s3(
                    f"it answered HTTP {status} without an S3 error code"
                    if status != 500
                    else "it answered with a page that is not S3's XML"
                )
            if code == "NoSuchBucket":
                return BucketError(f"{what}: no such bucket at {self.where}", hint="check the bucket's name")
            if code in _NOT_FOUND:
                return BucketError(f"{what}: no such file at {self.where}", hint="it was removed meanwhile; run again")
            if code in _DENIED or status == 403:
                return BucketError(
                    f"{what}: access denied at {self.where} ({code or status})",
                    hint=f"check {ENV['key_id']} and {ENV['secret']} (an S3 access key of this project)",
                )
            return BucketError(f"{what}: the Storage endpoint refused the request ({code or 'HTTP'} {status})")
        if type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
            return BucketError(f"cannot reach the Storage endpoint {self.where}", hint=f"check {ENV['url']}")
        return BucketError(f"{what}: Storage request failed ({type(exc).__name__})")

    def call(self, method: str, bucket: str, key: str = "", **kwargs: Any) -> Any:
        """Client ``method`` on ``bucket`` (and ``key``); failures as ``BucketError``."""
        if key:
            kwargs["Key"] = key
        try:
            return getattr(self.client(), method)(Bucket=bucket, **kwargs)
        except _FAILS as exc:
            raise self.error(exc, bucket, key) from None

    # -- reading -----------------------------------------------------------------------------

    def buckets(self) -> list[str]:
        """Every bucket's name."""
        try:
            listing = self.client().list_buckets()
        except _FAILS as exc:
            raise self.error(exc, "") from None
        if "Buckets" not in listing:  # S3 always has the element; a page that parsed as XML lacks it
            raise self.not_s3("its answer to ListBuckets is not S3's")
        return sorted(b["Name"] for b in listing["Buckets"])

    def has_bucket(self, bucket: str) -> bool:
        """Whether ``bucket`` exists; BucketError when the endpoint is not an S3 API.

        A GET of the bucket's listing (one key), not HeadBucket: HEAD's 404 has no body, so
        a missing bucket and a URL that is not an S3 API (the project's URL without
        ``/storage/v1/s3``) looked the same, and every bucket looked missing.  To the GET,
        S3 answers NoSuchBucket in its XML for a missing bucket."""
        try:
            listing = self.client().list_objects_v2(Bucket=bucket, MaxKeys=1)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) == "NoSuchBucket":
                return False
            raise self.error(exc, bucket) from None
        except (BotoCoreError, ResponseParserError) as exc:
            raise self.error(exc, bucket) from None
        if "Name" not in listing:  # S3's ListBucketResult always names the bucket
            raise self.not_s3("its answer to a bucket listing is not S3's")
        return True

    def list(self, bucket: str, prefix: str = "") -> Iterator[Head]:
        """Every file in ``bucket`` under ``prefix``, in key order, as the listing describes it
        (key, size, ETag, time; no type or metadata)."""
        token: dict[str, str] = {}
        while True:
            page = self.call("list_objects_v2", bucket, Prefix=prefix, **token)
            for o in page.get("Contents", []):
                yield Head(o["Key"], int(o["Size"]), str(o.get("ETag", "")).strip('"'), _iso(o.get("LastModified")))
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def head(self, bucket: str, key: str) -> Head | None:
        """What the endpoint says about ``key``; None when there is no such file."""
        r = self._if_there("head_object", bucket, key)
        return None if r is None else _head(key, r)

    def open(self, bucket: str, key: str) -> tuple[Head, BinaryIO]:
        """The file's description and its body, streamed."""
        r = self.call("get_object", bucket, key)
        return _head(key, r), r["Body"]

    def open_if_there(self, bucket: str, key: str) -> tuple[Head, BinaryIO] | None:
        """``open``, or None when there is no such file (any other failure is a ``BucketError``)."""
        r = self._if_there("get_object", bucket, key)
        return None if r is None else (_head(key, r), r["Body"])

    def _if_there(self, method: str, bucket: str, key: str) -> dict[str, Any] | None:
        """Client ``method``'s answer for ``key``, or None when there is no such file."""
        try:
            return getattr(self.client(), method)(Bucket=bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _NOT_FOUND:
                return None
            raise self.error(exc, bucket, key) from None
        except (BotoCoreError, ResponseParserError) as exc:
            raise self.error(exc, bucket, key) from None

    def sha256(self, bucket: str, key: str) -> str:
        """SHA-256 of the file's bytes, read in blocks."""
        digest = hashlib.sha256()
        _, body = self.open(bucket, key)
        with body:
            for block in iter(lambda: body.read(BLOCK), b""):
                digest.update(block)
        return digest.hexdigest()

    # -- writing -----------------------------------------------------------------------------

    def create_bucket(self, bucket: str, public: bool = False) -> None:
        """Make ``bucket``, public (``x-amz-acl: public-read``, which Supabase Storage reads as
        its public flag) or not; its other settings live in ``storage.buckets``."""
        self.call("create_bucket", bucket, **({"ACL": "public-read"} if public else {}))

    def upload(
        self, bucket: str, key: str, body: Any, size: int, head: Head, before_commit: Callable[[], None]
    ) -> None:
        """Write ``size`` bytes read from ``body`` as ``key`` with ``head``'s type, caching and
        metadata.  ``before_commit()`` runs once everything is read and before the file becomes
        visible; raising there leaves the target as it was.  A file up to ``PART`` bytes is one
        PutObject (held in memory), a bigger one parts of ``part_size(size)`` bytes."""
        extra: dict[str, Any] = {"Metadata": dict(head.metadata)}
        if head.content_type:
            extra["ContentType"] = head.content_type
        if head.cache_control:
            extra["CacheControl"] = head.cache_control
        if size <= PART:
            data = body.read(size + 1)
            before_commit()
            self.call("put_object", bucket, key, Body=data, **extra)
            return
        with deferred():  # a Ctrl-C or SIGTERM now would leave an upload whose id never arrived
            upload = self.call("create_multipart_upload", bucket, key, **extra)["UploadId"]
        part = part_size(size)
        try:
            parts = []
            for number in range(1, MAX_PARTS + 1):
                chunk = body.read(part)
                if not chunk:
                    break
                r = self.call("upload_part", bucket, key, UploadId=upload, PartNumber=number, Body=chunk)
                parts.append({"PartNumber": number, "ETag": r["ETag"]})
            before_commit()
            self.call("complete_multipart_upload", bucket, key, UploadId=upload, MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            except _FAILS:
                pass  # the first failure is the one to report
            raise


def part_size(size: int) -> int:
    """Bytes per part for a file of ``size``: ``PART``, or whole MiB more when ``PART`` would
    need more than S3's ``MAX_PARTS`` (files over 78 GiB; Supabase takes up to 500 GB): the
    parts beyond were never sent, and the file was refused as not matching its SHA-256."""
    least = -(-size // MAX_PARTS)
    return max(PART, -(-least // BLOCK) * BLOCK)


def _s3_error(exc: ClientError) -> bool:
    """Whether the failure is an S3 service's answer: an ``<Error>`` document with a code
    (botocore puts the bare HTTP status, or nothing, where the body had none).  HEAD answers
    have no body on any S3 service: their status is all there is, and it is taken as S3's."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return exc.operation_name.startswith("Head") or (bool(code) and not code.isdigit())


def _iso(when: Any) -> str:
    return when.astimezone(UTC).isoformat() if when is not None else ""


def _head(key: str, r: Mapping[str, Any]) -> Head:
    return Head(
        key=key,
        size=int(r.get("ContentLength", 0)),
        etag=str(r.get("ETag", "")).strip('"'),
        last_modified=_iso(r.get("LastModified")),
        content_type=r.get("ContentType"),
        cache_control=r.get("CacheControl"),
        metadata=dict(r.get("Metadata") or {}),
    )
