"""Storage files come back exactly and nothing is lost: faults found in review of ``backupkit.buckets``.

Same real components as tests/test_buckets.py: a moto S3 server for Supabase Storage's S3
API, a Supabase-shaped PostgreSQL for ``storage.objects``.  Where another client changes
the bucket "while the backup runs", the endpoint handed to the backup is the real one with
that client's real request made between its listing and its reads (``Meanwhile``), so the
interleaving is exact instead of left to timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import test_buckets
from helpers import run_cli, stored_file, wait_for
from test_buckets import MiB, files_by_key, put, read, small_db, streamed_sha256, upload_generated

import backupkit
from backupkit.buckets.endpoint import Endpoint, Head
from backupkit.buckets.restore import NEWER, decide, restore_files

# The fixtures of tests/test_buckets.py, shared.
storage_env = test_buckets.storage_env
buckets = test_buckets.buckets


@dataclass
class Meanwhile(Endpoint):
    """The Storage endpoint, where ``then()`` (another client's request) runs right after
    each bucket is listed and before any of its files is read."""

    then: Callable[[], object] = field(default=lambda: None, repr=False, compare=False)

    def list(self, bucket: str, prefix: str = ""):  # type: ignore[override]
        listed = list(super().list(bucket, prefix))
        self.then()
        yield from listed


def test_a_file_deleted_while_the_backup_reads_the_bucket_is_reported_not_fatal(
    supabase_project, storage_env, s3_client, buckets, tmp_path
):
    """A user deletes an avatar between the backup's listing and its read of that file (on
    Supabase the same happens for every storage.objects row whose file is missing: its S3
    listing comes from the table).  The backup failed with "no such file ... run again"
    (exit 13, no snapshot at all, and again on every run of a busy project); it now
    completes without the file, and the snapshot says so (a row without its file)."""
    source = supabase_project.app_project()
    avatars = buckets("avatars")
    alice = os.urandom(1024)
    put(s3_client, avatars, "alice/avatar.png", alice, "image/png")
    put(s3_client, avatars, "bob/avatar.jpg", os.urandom(2048), "image/jpeg")
    endpoint = Meanwhile.from_env()
    endpoint.then = lambda: s3_client.delete_object(Bucket=avatars, Key="bob/avatar.jpg")

    res = backupkit.backup(
        source,
        tmp_path / "repo",
        schemas=["public", "storage"],
        storage_buckets=["avatars"],
        storage_endpoint=endpoint,
        progress=False,
    )

    files = files_by_key(res.manifest, "avatars")
    assert list(files) == ["alice/avatar.png"]
    assert stored_file(res.path, files["alice/avatar.png"]).read_bytes() == alice
    assert res.manifest["storage"]["mismatches"] == [
        {"kind": "row_without_file", "bucket": "avatars", "key": "bob/avatar.jpg", "row": None, "file": None}
    ]
    assert any("bob/avatar.jpg" in w for w in res.warnings), res.warnings
    assert backupkit.verify(res.path).ok


def test_a_file_replaced_while_the_backup_reads_it_is_recorded_as_the_bytes_read(
    make_db, storage_env, s3_client, buckets, tmp_path
):
    """A file is replaced (same size, other bytes) between the backup's listing and its read:
    the snapshot stored the new bytes under the old version's ETag.  A later
    ``restore --storage-overwrite`` into a bucket holding the old version then called it
    "already there" and left bytes the snapshot does not have."""
    dsn = small_db(make_db)
    name = buckets()
    old, new = os.urandom(5000), os.urandom(5000)
    put(s3_client, name, "doc.bin", old, "application/octet-stream")
    endpoint = Meanwhile.from_env()
    endpoint.then = lambda: put(s3_client, name, "doc.bin", new, "application/octet-stream")

    snap = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], storage_endpoint=endpoint, progress=False)
    assert stored_file(snap.path, files_by_key(snap.manifest, name)["doc.bin"]).read_bytes() == new
    put(s3_client, name, "doc.bin", old, "application/octet-stream")  # the app reverts it

    done = restore_files(snap.path, buckets=[name], overwrite=True, progress=False)

    assert done.uploaded == [f"{name}/doc.bin"] and done.same == []
    assert read(s3_client, name, "doc.bin")["data"] == new


def test_the_same_bytes_with_another_content_type_or_metadata_are_not_the_same_file(
    make_db, storage_env, s3_client, buckets, tmp_path
):
    """After the snapshot the file's bytes were uploaded again without their type, caching
    and metadata (a tool that keeps only bytes).  Restore called it "already there", even
    with ``--storage-overwrite``: the bucket kept serving the image as
    application/octet-stream, and nothing said so."""
    dsn = small_db(make_db)
    name = buckets()
    data = os.urandom(3000)
    put(s3_client, name, "a.png", data, "image/png", Metadata={"by": "alice"}, CacheControl="max-age=60")
    snap = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False).path
    test_buckets.next_second()
    put(s3_client, name, "a.png", data, "application/octet-stream")

    kept = restore_files(snap, buckets=[name], progress=False)

    assert (kept.same, kept.kept_newer) == ([], [f"{name}/a.png"])

    done = restore_files(snap, buckets=[name], overwrite=True, progress=False)

    assert done.uploaded == [f"{name}/a.png"]
    assert read(s3_client, name, "a.png") == {
        "data": data,
        "content_type": "image/png",
        "cache_control": "max-age=60",
        "metadata": {"by": "alice"},
    }
    again = restore_files(snap, buckets=[name], progress=False)
    assert again.same == [f"{name}/a.png"]  # what the restore wrote is the snapshot's file


def test_a_target_file_changed_in_the_same_second_as_the_snapshot_copy_is_kept():
    """Supabase Storage's S3 listing gives times to the millisecond (storage.objects.updated_at),
    HeadObject to the second (an HTTP date).  A target file changed after the snapshot's copy
    but within the same second (HEAD 12:00:00 against a copy of 12:00:00.700) looked older,
    and restore overwrote it without ``--storage-overwrite``."""
    entry = {"size": 5, "etag": "aaa", "last_modified": "2025-03-01T12:00:00.700000+00:00"}
    there = Head("k", 6, "bbb", "2025-03-01T12:00:00+00:00")

    assert decide(entry, there, overwrite=False) == NEWER


def test_sigterm_during_a_files_restore_leaves_no_hidden_parts_and_a_second_run_completes(
    make_db, storage_env, s3_client, buckets, tmp_path
):
    """``systemctl stop`` (SIGTERM) while ``restore --files-only`` uploads a big file: the
    process died on the spot (no message, exit -15), and the unfinished multipart upload
    stayed in the bucket, invisible and billed, never cleaned up.  Now it stops like Ctrl-C
    (exit 130), aborts the upload, and running it again restores the file."""
    dsn = small_db(make_db)
    name = buckets()
    sha = upload_generated(s3_client, name, "big.bin", parts=8, part_size=8 * MiB)
    snap = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False).path
    s3_client.delete_object(Bucket=name, Key="big.bin")
    env = {k: v for k, v in os.environ.items() if k not in ("BACKUPKIT_DSN", "DATABASE_URL", "SUPABASE_DB_URL")}
    args = ("restore", str(snap), "--files-only", "--storage-bucket", name, "-q")
    child = subprocess.Popen(
        [sys.executable, "-m", "backupkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        started = wait_for(lambda: s3_client.list_multipart_uploads(Bucket=name).get("Uploads"), 300)
        assert started, "the restore never began its upload"
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert child.returncode == 130, err
    assert "interrupted" in err
    assert not s3_client.list_multipart_uploads(Bucket=name).get("Uploads")

    again = run_cli(*args)

    assert again.returncode == 0, again.stderr
    assert streamed_sha256(s3_client, name, "big.bin") == (64 * MiB, sha)


def test_a_file_too_big_for_10000_parts_of_8_mib_is_uploaded_whole():
    """Restoring a file over 78 GiB (10,000 parts of 8 MiB; Supabase takes files up to 500 GB):
    the upload stopped after part 10,000, and the file was refused as "does not match its
    SHA-256" (a snapshot ``verify`` calls intact), so it could never be restored.  The part
    size now grows with the file; the bytes themselves cannot be sent in a test."""
    from backupkit.buckets import endpoint

    for size in (endpoint.PART + 1, 80 << 30, 500 * 10**9, 5 << 40):
        part = endpoint.part_size(size)
        assert part >= endpoint.PART and part % endpoint.BLOCK == 0
        assert -(-size // part) <= endpoint.MAX_PARTS, size
    assert endpoint.part_size(1 << 30) == endpoint.PART  # the memory of ordinary files stays as it was


DEFERRED = r"""
import os, signal
from backupkit.runtime.signals import deferred, sigterm_as_interrupt

with sigterm_as_interrupt():
    try:
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            print("the request ran to its end", flush=True)
        print("not reached", flush=True)
    except KeyboardInterrupt:
        print("interrupted after it", flush=True)
"""


def test_a_sigterm_during_the_request_that_creates_an_upload_waits_for_its_answer():
    """SIGTERM while CreateMultipartUpload was under way: the server made the upload, the
    interrupt came before its id did, and nothing could abort it (found by a CI run of the
    test above).  The request now runs to its end, then the interrupt takes effect."""
    out = subprocess.run([sys.executable, "-c", DEFERRED], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["the request ran to its end", "interrupted after it"]
