"""A Storage endpoint that is not S3, and a files restore that cannot succeed: refused before anything changes.

What users saw:

- ``BACKUPKIT_STORAGE_ENDPOINT=https://<project>.supabase.co`` (without ``/storage/v1/s3``,
  or any URL that is not an S3 API): HEAD bucket answered 404, so every bucket looked
  missing; ``restore --files-only --dry-run`` said "would create bucket(s) ...", and a real
  run sent CreateBucket and the files to that other service.  A site answering every path
  with a page (200) looked like a bucket holding the files, and the restore "uploaded" them
  to it.  A backup said "listing the buckets: no such file", or backed up no bucket at all
  and exited 0.  A wrong endpoint is now one line, exit 13, with a hint naming the S3
  endpoint's form, before any request that changes something; a bucket truly missing on an
  S3 endpoint is still created.
- ``restore SNAP --dsn DSN --storage-bucket NAME`` of an encrypted snapshot (which holds no
  bucket files) restored the whole database, then failed with exit 2: half of what was
  asked, and a database changed by a command that reported an error.  The same for a
  snapshot without bucket files, or without the bucket named.  Now refused before the
  database is touched, in one line, exit 2; the dry run says the same.

Real components: the moto S3 server of the suite for Storage's S3 API, a real HTTP server
(Python's ``http.server`` on 127.0.0.1) for the service that is not S3, embedded PostgreSQL.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
import test_buckets
from helpers import run_cli
from test_buckets import drop_bucket, put, read, small_db

import backupkit
from backupkit.buckets.endpoint import Endpoint
from backupkit.errors import BucketError
from backupkit.snapshot import encryption

# The fixtures of tests/test_buckets.py, shared.
storage_env = test_buckets.storage_env
buckets = test_buckets.buckets

#: Pages a URL that is not the S3 endpoint answers with: a web server's 404, Supabase's API
#: gateway for a path it has no route for (JSON), and a site that answers every path with a
#: page: HTML5 (no XML), or well-formed, so that an XML parser reads it without complaint.
NOT_S3 = {
    "404-html": (404, "text/html", b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>"),
    "404-json": (404, "application/json", b'{"message":"no Route matched with those values"}'),
    "200-html5": (200, "text/html", b"<!doctype html><meta charset=utf-8><title>Acme</title><p>Welcome"),
    "200-page": (200, "text/html", b"<html><head><title>Acme</title></head><body><p>Welcome</p></body></html>"),
}


@dataclass
class NotS3:
    """A real HTTP server answering every request with one page; it records each request."""

    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)

    def changing(self) -> list[tuple[str, str]]:
        """The requests that would change something on an S3 service (create a bucket, upload)."""
        return [r for r in self.requests if r[0] not in ("GET", "HEAD")]


@contextlib.contextmanager
def serving(status: int, content_type: str, body: bytes) -> Iterator[NotS3]:
    """A real HTTP server on 127.0.0.1 answering every request with one page."""
    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append((self.command, self.path))
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield NotS3(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(params=sorted(NOT_S3))
def not_s3(request) -> Iterator[NotS3]:
    with serving(*NOT_S3[request.param]) as server:
        yield server


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def says_not_s3(err: str, url: str) -> None:
    line = one_error(err)
    assert "not an S3 endpoint" in line and url.removeprefix("http://") in line, err
    assert "/storage/v1/s3" in err, err  # the hint names the endpoint's form


def test_a_storage_endpoint_that_cannot_be_used_stops_the_restore_before_the_database(
    make_db, storage_env, s3_client, buckets, tmp_path
):
    """Asked for the database and its files, a restore whose Storage endpoint was unreachable
    or not an S3 API restored the database first and failed after: half of what was asked,
    the first half into a live project.  Now the endpoint is asked first; nothing is touched."""
    dsn = small_db(make_db)
    name = buckets()
    put(s3_client, name, "a.bin", b"a file", "text/plain")
    snapshot = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False).path
    with serving(*NOT_S3["404-html"]) as page:
        for case, url in {"unreachable": "http://127.0.0.1:1", "not_s3": page.url}.items():
            target = make_db("tgt_" + case)

            out = run_cli("restore", snapshot, "--dsn", target, "--storage-bucket", name, "--storage-endpoint", url)

            assert out.returncode == 13, (case, out.stderr)
            assert out.stdout == "" and url.removeprefix("http://") in one_error(out.stderr), (case, out.stderr)
            with psycopg.connect(target) as conn:
                tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
            assert tables == (0,), case
        assert page.changing() == []


# -- 1. an endpoint that is not S3 --------------------------------------------------------------------


def test_a_files_restore_to_a_url_that_is_not_s3_is_refused_before_any_bucket_is_made(
    make_db, storage_env, s3_client, buckets, not_s3, tmp_path
):
    """The dry run said "would create bucket(s) NAME" and the real run sent CreateBucket (a
    PUT) and the files to a service that is not Storage's S3 API."""
    name = buckets()
    put(s3_client, name, "a.png", os.urandom(500), "image/png")
    snapshot = backupkit.backup(small_db(make_db), tmp_path / "repo", storage_buckets=[name], progress=False).path
    elsewhere = ("--storage-endpoint", not_s3.url)

    dry = run_cli("restore", snapshot, "--files-only", "--storage-bucket", name, *elsewhere, "--dry-run", "-q")
    real = run_cli("restore", snapshot, "--files-only", "--storage-all-buckets", *elsewhere, "-q")

    assert dry.returncode == 13, dry.stdout + dry.stderr
    says_not_s3(dry.stderr, not_s3.url)
    assert "would" not in dry.stdout
    assert real.returncode == 13, real.stdout + real.stderr
    says_not_s3(real.stderr, not_s3.url)
    assert not_s3.requests and not_s3.changing() == []


def test_the_library_tells_a_missing_bucket_from_an_endpoint_that_is_not_s3(storage_env, buckets, not_s3):
    there = buckets()
    real = Endpoint.from_env()

    assert real.has_bucket(there) is True
    assert real.has_bucket(f"{there}-gone") is False
    with pytest.raises(BucketError) as caught:
        Endpoint.from_env(url=not_s3.url).has_bucket(there)
    assert "not an S3 endpoint" in str(caught.value) and "/storage/v1/s3" in (caught.value.hint or "")
    assert not_s3.changing() == []


def test_a_backup_from_a_url_that_is_not_s3_says_so(make_db, storage_env, not_s3, tmp_path):
    """The backup said "listing the buckets: no such file at ..." or "the Storage endpoint
    refused the request", and for a site answering every path with a well-formed page it
    backed up no bucket and exited 0 (``--storage-all-buckets``: none were listed)."""
    repo = tmp_path / "repo"

    out = run_cli(
        "backup", "--dsn", small_db(make_db), "--to", repo, "--storage-all-buckets", "--storage-endpoint", not_s3.url
    )

    assert out.returncode == 13, out.stdout + out.stderr
    says_not_s3(out.stderr, not_s3.url)
    assert not list(repo.glob("2*"))  # no snapshot


def test_a_bucket_missing_on_the_s3_endpoint_is_still_created(make_db, storage_env, s3_client, buckets, tmp_path):
    name = buckets()
    put(s3_client, name, "a.txt", b"hello", "text/plain")
    snapshot = backupkit.backup(small_db(make_db), tmp_path / "repo", storage_buckets=[name], progress=False).path
    drop_bucket(s3_client, name)

    dry = run_cli("restore", snapshot, "--files-only", "--storage-bucket", name, "--dry-run", "-q")
    real = run_cli("restore", snapshot, "--files-only", "--storage-bucket", name, "-q")

    assert dry.returncode == 0, dry.stderr
    assert f"would be created bucket(s) {name}" in dry.stdout
    assert real.returncode == 0, real.stderr
    assert f"created bucket(s) {name}" in real.stdout
    assert read(s3_client, name, "a.txt")["data"] == b"hello"


# -- 2. a database-and-files restore that cannot restore the files -------------------------------------


def tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relname = 'notes'")]


def test_an_encrypted_snapshot_with_storage_bucket_is_refused_before_the_database_is_restored(
    make_db, storage_env, tmp_path
):
    """``restore SNAP --dsn DSN --storage-bucket NAME --identity KEY`` restored the database,
    then: "error: this snapshot is encrypted; it holds no Storage bucket files" (exit 2)."""
    identity = tmp_path / "age.txt"
    recipient = encryption.keygen(identity)
    snapshot = backupkit.backup(small_db(make_db), tmp_path / "repo", recipients=[recipient], progress=False).path
    target = make_db("enc_target")

    for choice in (("--storage-bucket", "avatars"), ("--storage-all-buckets",)):
        for dry_run in ((), ("--dry-run",)):
            args = ("restore", snapshot, "--dsn", target, *choice, "--identity", identity, *dry_run, "-q")
            out = run_cli(*args)

            assert out.returncode == 2, (args, out.stdout, out.stderr)
            assert "encrypted" in one_error(out.stderr), out.stderr
            assert out.stdout == ""  # no "restored ..." and no dry-run plan: nothing was or would be done
            assert tables(target) == []
    # Without the files it restores as always.
    assert run_cli("restore", snapshot, "--dsn", target, "--identity", identity, "-q").returncode == 0
    assert tables(target) == ["notes"]


def test_a_snapshot_without_the_bucket_asked_for_is_refused_before_the_database_is_restored(
    make_db, storage_env, s3_client, buckets, tmp_path
):
    """The same half restore for a snapshot without bucket files, or without the bucket named."""
    dsn = small_db(make_db)
    name = buckets()
    put(s3_client, name, "a.txt", b"hello", "text/plain")
    plain = backupkit.backup(dsn, tmp_path / "repo", progress=False).path
    with_files = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False).path
    target = make_db("nofiles_target")

    for snapshot, choice, words in (
        (plain, ("--storage-all-buckets",), "no Storage bucket files"),
        (with_files, ("--storage-bucket", "another"), "has no bucket another"),
    ):
        for dry_run in ((), ("--dry-run",)):
            out = run_cli("restore", snapshot, "--dsn", target, *choice, *dry_run, "-q")

            assert out.returncode == 2, (snapshot, choice, out.stdout, out.stderr)
            assert words in one_error(out.stderr), out.stderr
            assert out.stdout == ""
            assert tables(target) == []


def test_a_rate_limit_page_is_a_busy_endpoint_not_a_wrong_one(storage_env):
    """A gateway in front of Storage's S3 API answers 429 with a JSON page when the project is
    rate-limited: that was called "not an S3 endpoint", sending the user to change a right URL."""
    page = b'{"message":"API rate limit exceeded"}'
    with serving(429, "application/json", page) as busy, pytest.raises(BucketError) as caught:
        Endpoint.from_env(url=busy.url).has_bucket("anything")
    assert "not an S3 endpoint" not in str(caught.value)
    assert "429" in str(caught.value)
