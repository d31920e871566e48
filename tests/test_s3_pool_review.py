"""A pool object on S3 overwritten with other bytes of the same size is never reused.

What the user saw: someone (a script, a sync tool, a mistaken copy) overwrote an object
``.shared/xx/<sha256>`` of an S3 repository with other bytes of the same size.  The next
``backupkit backup`` exited 0 and published a snapshot that ``backupkit verify`` called
DAMAGED from the start (exit 6): the backup had taken the pool object for its own file
because its size was right.  Now the backup compares what S3 tells of the object for free,
its ETag, with the MD5 of the bytes it wrote: the new snapshot keeps its own copy, verifies,
a warning names the pool object, and only the snapshots that used it are reported damaged.

Real backups of a real database into a real S3 server (moto), one per path by which a file
meets the pool: a small file put under its pool name directly, a large one uploaded in
parts and then moved into the pool by its writer, and ``pool.share`` of a staged file.
"""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from helpers import load_small, run_cli

import backupkit
from backupkit.storage import pool
from backupkit.storage.s3 import MIN_PART_SIZE, PART_SIZE, S3Storage

MiB = 1 << 20


@pytest.fixture(scope="module")
def source(pg_server):
    """The small database, and one row large enough that its data file goes up in parts."""
    dsn = pg_server.createdb("s3pool")
    try:
        load_small(dsn)
        with psycopg.connect(dsn) as conn:
            # ~22 MB of base64 of random bytes: still ~16 MB compressed, more than one part.
            conn.execute(
                "CREATE TABLE big (id int PRIMARY KEY, blob text); "
                "INSERT INTO big SELECT 1, encode(decode(string_agg(md5(random()::text), ''), 'hex'), 'base64') "
                "FROM generate_series(1, 1000000)"
            )
        yield dsn
    finally:
        pg_server.dropdb(dsn)


def flipped(body: bytes) -> bytes:
    """Other bytes of the same size: one bit changed in the middle."""
    raw = bytearray(body)
    raw[len(raw) // 2] ^= 0x01
    return bytes(raw)


def data_files(result) -> list[dict]:
    return [f for t in result.manifest["tables"] for f in t["files"]]


def overwrite_in_place(client, bucket: str, key: str) -> bytes:
    """Overwrite object ``key`` with other bytes of its size; its old bytes."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=flipped(body))
    return body


def backup_after_damage(dsn: str, url: str, client, bucket: str, entry: dict) -> None:
    """Overwrite ``entry``'s pool object with other bytes of its size, then run ``backupkit
    backup`` as a user does: it succeeds, its snapshot verifies holding its own copy of the
    file, and a warning names the pool object."""
    name = pool.blob_name(entry["sha256"])
    body = overwrite_in_place(client, bucket, f"repo/{name}")
    out = run_cli("backup", "--dsn", dsn, "--to", url, "-q")
    assert out.returncode == 0, out.stderr
    snapshot = out.stdout.strip().splitlines()[-1]
    report = backupkit.verify(snapshot, deep=True)
    assert report.ok, report.problems  # was: DAMAGED, "checksum mismatch" of the reused file
    own = next(f for t in report.manifest["tables"] for f in t["files"] if f["path"] == entry["path"])
    assert own.get("shared") is not True
    key = f"repo/{snapshot.rsplit('/', 1)[-1]}/{own['path']}"
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert name in out.stderr, out.stderr


def test_a_small_file_is_not_taken_from_a_pool_object_overwritten_with_bytes_of_its_size(source, s3_bucket, s3_client):
    """The path of most data files: put under its pool name directly (``pool.place``)."""
    url = f"s3://{s3_bucket}/repo"
    first = backupkit.backup(source, url, progress=False)
    entry = max((f for f in data_files(first) if f["bytes"] <= PART_SIZE), key=lambda f: f["bytes"])
    assert entry.get("shared") is True
    backup_after_damage(source, url, s3_client, s3_bucket, entry)
    assert run_cli("verify", first.location).returncode == 6


def test_a_large_file_is_reused_when_intact_and_not_when_overwritten(source, s3_bucket, s3_client):
    """A file larger than a part goes up in parts under its snapshot's name first: moved into
    the pool when new, reused when the pool's object holds its bytes, kept otherwise."""
    url = f"s3://{s3_bucket}/repo"
    first = backupkit.backup(source, url, progress=False)
    entry = max(data_files(first), key=lambda f: f["bytes"])
    assert entry["bytes"] > PART_SIZE and entry.get("shared") is True
    again = backupkit.backup(source, url, progress=False)
    reused = next(f for f in data_files(again) if f["path"] == entry["path"])
    assert reused.get("shared") is True and reused["sha256"] == entry["sha256"]
    assert not s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"repo/{again.id}/data/").get("Contents")
    backup_after_damage(source, url, s3_client, s3_bucket, entry)
    assert run_cli("verify", first.location).returncode == 6


# -- each path of the storage layer, against what the server stores ------------------------


@pytest.fixture
def storage(s3_bucket):
    return S3Storage(s3_bucket, "repo", part_size=MIN_PART_SIZE)


def written(storage: S3Storage, name: str, body: bytes, into_pool: bool = False) -> str:
    """Write ``body`` as ``name`` (put under its pool name when ``into_pool``); the writer's ``placed``."""
    with storage.create(name) as f:
        f.write(body)
        if into_pool:
            pool.place(f, hashlib.sha256(body).hexdigest())
    return pool.placed(f)


def pool_key(body: bytes) -> str:
    return f"repo/{pool.blob_name(hashlib.sha256(body).hexdigest())}"


@pytest.mark.parametrize("size", [MiB, 2 * MIN_PART_SIZE + 1], ids=["one-put", "in-parts"])
def test_a_writer_reuses_a_pool_object_only_when_its_etag_is_of_the_same_bytes(storage, s3_client, size):
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert written(storage, "a/data/f", body, into_pool=True) == pool.ADDED
    # Put, or copied there after the upload in parts: either way its ETag is the bytes' MD5.
    found = storage.stat(pool.blob_name(hashlib.sha256(body).hexdigest()))
    assert (found.size, storage.content_tag(found)) == (size, hashlib.md5(body).hexdigest())
    assert not s3_client.list_objects_v2(Bucket=storage.bucket, Prefix="repo/a/").get("Contents")
    assert written(storage, "b/data/f", body, into_pool=True) == pool.PRESENT
    overwrite_in_place(s3_client, storage.bucket, pool_key(body))
    assert written(storage, "c/data/f", body, into_pool=True) == ""  # stays under its own name
    assert storage.read("c/data/f", size) == body


def test_share_reuses_a_pool_object_only_when_its_etag_is_of_the_same_bytes(storage, s3_client):
    """``pool.share`` of a staged file (a Storage bucket's file, a copied snapshot's)."""
    body = bytes(range(251)) * 4000
    sha = hashlib.sha256(body).hexdigest()
    written(storage, "a/data/f", body)
    assert pool.share(storage, "a/data/f", sha, len(body)) == pool.ADDED
    written(storage, "b/data/f", body)
    assert pool.share(storage, "b/data/f", sha, len(body)) == pool.PRESENT
    with pytest.raises(FileNotFoundError):
        storage.stat("b/data/f")  # dropped: the pool's object is the same file
    overwrite_in_place(s3_client, storage.bucket, pool_key(body))
    written(storage, "c/data/f", body)
    assert pool.share(storage, "c/data/f", sha, len(body)) == pool.KEPT
    assert storage.read("c/data/f", len(body)) == body


def test_share_of_a_file_uploaded_in_parts_keeps_it_when_the_etags_cannot_be_compared(storage, s3_client):
    """A staged file uploaded in parts has the ETag of its parts; a pool object made by a copy
    has its content's MD5.  ``share`` cannot tell from them whether the bytes are the same,
    so the snapshot keeps its own copy: space, never a snapshot damaged from the start."""
    body = bytes(range(253)) * (2 * MIN_PART_SIZE // 253 + 1)
    sha = hashlib.sha256(body).hexdigest()
    written(storage, "a/data/f", body)
    assert pool.share(storage, "a/data/f", sha, len(body)) == pool.ADDED
    written(storage, "b/data/f", body)
    assert pool.share(storage, "b/data/f", sha, len(body)) == pool.KEPT
    assert storage.read("b/data/f", len(body)) == body
