"""Supabase Storage bucket files beside the database (``backup --storage-bucket``, issue #17).

The Storage endpoint is a real S3-compatible server started by the suite (moto in server
mode, tests/s3server.py) standing in for Supabase Storage's S3 API, and the database a
Supabase-shaped project built from Supabase's own SQL (tests/supabase_platform.py) whose
``storage.objects`` rows describe the files.  Nothing is mocked: files go up and down over
HTTP with boto3, the CLI runs in subprocesses, and peak memory is read from ``wait4``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from botocore.exceptions import ClientError
from helpers import TcpProxy, run_cli, stored_file
from supabase_platform import supautils_policy_grants
from test_snapshot_model import problems as model_problems

import backupkit
from backupkit.buckets.restore import restore_files
from backupkit.errors import SnapshotDamaged
from backupkit.snapshot import model
from backupkit.storage import pool

#: A distinctive Storage secret: it must never reach a snapshot, stdout or stderr.
STORAGE_SECRET = "st0rage-s3cr3t-" + uuid.uuid4().hex
STORAGE_KEY_ID = "STORAGEKEYBACKUPKIT1"
STORAGE_ENV = (
    "BACKUPKIT_STORAGE_ENDPOINT",
    "BACKUPKIT_STORAGE_KEY_ID",
    "BACKUPKIT_STORAGE_SECRET",
    "BACKUPKIT_STORAGE_REGION",
)
APP_SCHEMAS = ["public", "auth", "storage"]
#: storage.objects columns a restore must give back as they were.
OBJECT_ROWS = (
    "SELECT id, bucket_id, name, owner, owner_id, metadata, user_metadata, created_at, version"
    " FROM storage.objects ORDER BY bucket_id, name"
)
BUCKET_ROW = "SELECT id, name, public, file_size_limit, allowed_mime_types FROM storage.buckets WHERE id = %s"
MiB = 1 << 20


# -- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def storage_env(s3_server, monkeypatch):
    """BACKUPKIT_STORAGE_* pointing at the test's S3 server, as a user configures Supabase Storage."""
    monkeypatch.setenv("BACKUPKIT_STORAGE_ENDPOINT", s3_server)
    monkeypatch.setenv("BACKUPKIT_STORAGE_KEY_ID", STORAGE_KEY_ID)
    monkeypatch.setenv("BACKUPKIT_STORAGE_SECRET", STORAGE_SECRET)
    monkeypatch.setenv("BACKUPKIT_STORAGE_REGION", "us-east-1")
    return s3_server


def drop_bucket(client, name: str) -> None:
    """Remove ``name`` and everything in it (unfinished uploads too) if it exists."""
    try:
        uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchBucket":
            return
        raise
    for u in uploads:
        client.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
    for key in keys(client, name):
        client.delete_object(Bucket=name, Key=key)
    client.delete_bucket(Bucket=name)


def keys(client, bucket: str) -> list[str]:
    out, token = [], {}
    while True:
        page = client.list_objects_v2(Bucket=bucket, **token)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return sorted(out)
        token = {"ContinuationToken": page["NextContinuationToken"]}


@pytest.fixture
def buckets(s3_client):
    """Factory of buckets on the test server, each removed (with its files) after the test.

    ``buckets("avatars")`` makes the bucket the Supabase fixture's rows name: bucket names are
    global on the server, so a test owns it for its duration (one test at a time per process,
    and each xdist worker has its own server)."""
    made: list[str] = []

    def make(name: str | None = None) -> str:
        name = name or f"sb-{uuid.uuid4().hex[:16]}"
        drop_bucket(s3_client, name)  # a leftover of an earlier, failed test
        s3_client.create_bucket(Bucket=name)
        made.append(name)
        return name

    yield make
    for name in made:
        drop_bucket(s3_client, name)


def put(client, bucket: str, key: str, data: bytes, content_type: str, **extra) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type, **extra)


def read(client, bucket: str, key: str) -> dict:
    r = client.get_object(Bucket=bucket, Key=key)
    return {
        "data": r["Body"].read(),
        "content_type": r.get("ContentType"),
        "cache_control": r.get("CacheControl"),
        "metadata": r.get("Metadata"),
    }


def missing(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return True
        raise
    return False


def next_second() -> None:
    """Wait until the wall clock's second changes: S3 times a file to the second, and a file
    changed "after the snapshot" must look newer than the snapshot's copy."""
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.02)


def pool_files(repo: Path) -> set[str]:
    root = Path(repo) / pool.POOL
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def files_by_key(manifest: dict, bucket: str) -> dict[str, dict]:
    [b] = [b for b in manifest["storage"]["buckets"] if b["name"] == bucket]
    return {f["key"]: f for f in b["files"]}


def no_secret_in(*texts: str | bytes) -> None:
    for t in texts:
        assert (STORAGE_SECRET.encode() if isinstance(t, bytes) else STORAGE_SECRET) not in t


def snapshot_bytes(snapshot: Path) -> bytes:
    """Every byte of a snapshot folder (small snapshots only)."""
    return b"".join(p.read_bytes() for p in sorted(Path(snapshot).rglob("*")) if p.is_file())


def flip_a_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def small_db(make_db) -> str:
    dsn = make_db("bkt")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 100) i")
    return dsn


def rows(dsn: str, query: str = OBJECT_ROWS, args: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


# -- round trip on a Supabase project ---------------------------------------------------------------


def test_a_project_and_its_files_back_up_and_restore_into_a_new_project(
    supabase_project, storage_env, s3_client, buckets, tmp_path
):
    source = supabase_project.app_project()
    with psycopg.connect(supabase_project.admin(source), autocommit=True) as conn:
        conn.execute(
            "UPDATE storage.buckets SET file_size_limit = 5242880, allowed_mime_types = '{image/png,image/jpeg}'"
            " WHERE id = 'avatars'"
        )
    avatars = buckets("avatars")
    alice, bob = os.urandom(1024), os.urandom(2048)
    # What the app project's storage.objects rows describe: sizes and types match.
    put(
        s3_client,
        avatars,
        "alice/avatar.png",
        alice,
        "image/png",
        Metadata={"uploaded-by": "alice", "crop": "square"},
        CacheControl="max-age=3600",
    )
    put(s3_client, avatars, "bob/avatar.jpg", bob, "image/jpeg", Metadata={"uploaded-by": "bob"})

    res = backupkit.backup(
        source, tmp_path / "backups", schemas=APP_SCHEMAS, storage_buckets=["avatars"], progress=False
    )

    storage = res.manifest["storage"]
    assert storage["endpoint"] == storage_env
    assert storage["objects_rows"] is True and storage["mismatches"] == []
    [bucket] = storage["buckets"]
    assert bucket["name"] == "avatars" and bucket["bytes"] == 3072
    assert bucket["settings"] == {
        "public": True,
        "file_size_limit": 5242880,
        "allowed_mime_types": ["image/png", "image/jpeg"],
    }
    assert [f["key"] for f in bucket["files"]] == ["alice/avatar.png", "bob/avatar.jpg"]
    files = files_by_key(res.manifest, "avatars")
    for key, data, ctype, meta in (
        ("alice/avatar.png", alice, "image/png", {"uploaded-by": "alice", "crop": "square"}),
        ("bob/avatar.jpg", bob, "image/jpeg", {"uploaded-by": "bob"}),
    ):
        f = files[key]
        sha = hashlib.sha256(data).hexdigest()
        assert (f["sha256"], f["content_sha256"], f["size"], f["path"]) == (sha, sha, len(data), f"files/{sha}")
        assert (f["content_type"], f["metadata"]) == (ctype, meta)
        assert stored_file(res.path, f).read_bytes() == data
    assert files["alice/avatar.png"]["cache_control"] == "max-age=3600"
    assert (res.storage_files_read, res.storage_bytes_read) == (2, 3072)
    assert backupkit.verify(res.path).ok
    no_secret_in(snapshot_bytes(res.path), (res.path / "manifest.json").read_text())
    source_rows = rows(supabase_project.admin(source))
    assert [r[1:3] for r in source_rows] == [("avatars", "alice/avatar.png"), ("avatars", "bob/avatar.jpg")]
    source_bucket = rows(supabase_project.admin(source), BUCKET_ROW, ("avatars",))

    # The files and their bucket are lost; the project is rebuilt in a new one.
    drop_bucket(s3_client, avatars)
    target = supabase_project.new_project()
    with supautils_policy_grants(supabase_project, target):
        backupkit.restore(res.path, target)
    with psycopg.connect(supabase_project.admin(target), autocommit=True) as conn:
        # Someone edited the bucket meanwhile: the file restore puts the snapshot's settings back.
        conn.execute(
            "UPDATE storage.buckets SET public = false, file_size_limit = NULL, allowed_mime_types = NULL"
            " WHERE id = 'avatars'"
        )

    done = restore_files(res.path, dsn=target, progress=False)

    assert done.created_buckets == ["avatars"]
    assert sorted(done.uploaded) == ["avatars/alice/avatar.png", "avatars/bob/avatar.jpg"]
    assert (done.same, done.kept_newer, done.bytes) == ([], [], 3072)
    assert keys(s3_client, avatars) == ["alice/avatar.png", "bob/avatar.jpg"]
    assert read(s3_client, avatars, "alice/avatar.png") == {
        "data": alice,
        "content_type": "image/png",
        "cache_control": "max-age=3600",
        "metadata": {"uploaded-by": "alice", "crop": "square"},
    }
    got = read(s3_client, avatars, "bob/avatar.jpg")
    assert (got["data"], got["content_type"], got["metadata"]) == (bob, "image/jpeg", {"uploaded-by": "bob"})
    grants = s3_client.get_bucket_acl(Bucket=avatars)["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/global/AllUsers") and g["Permission"] == "READ" for g in grants)
    assert rows(supabase_project.admin(target)) == source_rows
    assert rows(supabase_project.admin(target), BUCKET_ROW, ("avatars",)) == source_bucket


def test_restore_with_dsn_and_storage_bucket_restores_the_database_then_its_files(
    supabase_project, storage_env, s3_client, buckets, tmp_path
):
    """``backupkit restore SNAP --dsn DSN --storage-bucket NAME``: one command, rows and files."""
    source = supabase_project.app_project()
    avatars = buckets("avatars")
    alice, bob = os.urandom(1024), os.urandom(2048)
    put(s3_client, avatars, "alice/avatar.png", alice, "image/png")
    put(s3_client, avatars, "bob/avatar.jpg", bob, "image/jpeg")
    out = run_cli(
        "backup",
        "--dsn",
        source,
        "--to",
        tmp_path / "repo",
        *("--schema", "public", "--schema", "auth", "--schema", "storage"),
        "--storage-bucket",
        "avatars",
        "-q",
    )
    assert out.returncode == 0, out.stderr
    snapshot = out.stdout.strip().splitlines()[-1]
    drop_bucket(s3_client, avatars)
    target = supabase_project.new_project()

    with supautils_policy_grants(supabase_project, target):
        restored = run_cli("restore", snapshot, "--dsn", target, "--storage-bucket", "avatars", "-q")

    assert restored.returncode == 0, restored.stderr
    assert "files: 2 uploaded" in restored.stdout and "created bucket(s) avatars" in restored.stdout
    assert read(s3_client, avatars, "alice/avatar.png")["data"] == alice
    assert read(s3_client, avatars, "bob/avatar.jpg")["data"] == bob
    assert rows(supabase_project.admin(target)) == rows(supabase_project.admin(source))
    no_secret_in(out.stdout, out.stderr, restored.stdout, restored.stderr)


# -- a second backup copies only what changed -------------------------------------------------------


def test_a_second_backup_reads_and_stores_only_the_changed_file(make_db, storage_env, s3_client, buckets, tmp_path):
    dsn = small_db(make_db)
    name = buckets()
    same, before, after = os.urandom(300_000), os.urandom(200_000), os.urandom(200_000)
    put(s3_client, name, "docs/same.bin", same, "application/octet-stream")
    put(s3_client, name, "docs/changes.bin", before, "application/octet-stream")
    repo = tmp_path / "repo"

    first = backupkit.backup(dsn, repo, storage_buckets=[name], progress=False)
    assert (first.storage_files_read, first.storage_bytes_read) == (2, 500_000)
    pooled = pool_files(repo)
    next_second()
    put(s3_client, name, "docs/changes.bin", after, "application/octet-stream")  # same size, new bytes

    second = backupkit.backup(dsn, repo, storage_buckets=[name], progress=False)

    assert (second.storage_files_read, second.storage_bytes_read) == (1, 200_000)
    new_sha = hashlib.sha256(after).hexdigest()
    assert pool_files(repo) - pooled == {new_sha}  # the database did not change: its files are shared
    one, two = files_by_key(first.manifest, name), files_by_key(second.manifest, name)
    assert two["docs/same.bin"] == one["docs/same.bin"]
    assert two["docs/changes.bin"]["sha256"] == new_sha != one["docs/changes.bin"]["sha256"]
    assert stored_file(second.path, two["docs/changes.bin"]).read_bytes() == after
    assert stored_file(first.path, one["docs/changes.bin"]).read_bytes() == before
    assert stored_file(second.path, two["docs/same.bin"]).read_bytes() == same
    for snap in (first.path, second.path):
        report = backupkit.verify(snap)
        assert report.ok, report.problems

    # Pruning the first snapshot keeps the file the second one carried over from it.
    pruned = backupkit.prune(repo, backupkit.Policy(keep_last=1), now=datetime.now(UTC))
    assert not first.path.exists() and second.path.exists(), pruned
    assert pool_files(repo) >= {one["docs/same.bin"]["sha256"], new_sha}
    assert hashlib.sha256(before).hexdigest() not in pool_files(repo)
    assert backupkit.verify(second.path).ok
    drop_bucket(s3_client, name)
    assert len(restore_files(second.path, progress=False).uploaded) == 2
    assert read(s3_client, name, "docs/same.bin")["data"] == same
    assert read(s3_client, name, "docs/changes.bin")["data"] == after


def test_diff_sql_and_the_report_show_the_files_of_two_snapshots(make_db, storage_env, s3_client, buckets, tmp_path):
    dsn = small_db(make_db)
    name = buckets()
    put(s3_client, name, "kept.txt", b"kept", "text/plain")
    put(s3_client, name, "changed.txt", b"before", "text/plain")
    put(s3_client, name, "removed.txt", b"removed", "text/plain")
    repo = tmp_path / "repo"
    old = backupkit.backup(dsn, repo, storage_buckets=[name], progress=False)
    next_second()
    put(s3_client, name, "changed.txt", b"after!", "text/plain")
    put(s3_client, name, "added.png", b"\x89PNG new", "image/png")
    s3_client.delete_object(Bucket=name, Key="removed.txt")
    new = backupkit.backup(dsn, repo, storage_buckets=[name], progress=False)

    diff = backupkit.diff_snapshots(old.path, new.path, progress=False)

    assert diff["storage_files"] == {
        name: {"added": ["added.png"], "removed": ["removed.txt"], "changed": ["changed.txt"]}
    }
    assert diff["same"] is False
    out = run_cli("diff", old.path, new.path, "--exit-code")
    assert out.returncode == 12, out.stderr
    assert f"bucket {name}: files 1 added, 1 removed, 1 changed" in out.stdout
    assert "  changed: changed.txt" in out.stdout
    html = tmp_path / "report.html"
    assert run_cli("diff", old.path, new.path, "--html", html).returncode == 0
    assert "Storage bucket files" in html.read_text() and "removed.txt" in html.read_text()
    # The same snapshot twice: nothing differs, files included.
    assert backupkit.diff_snapshots(new.path, new.path, progress=False)["storage_files"] == {}

    with backupkit.open_snapshot(new.path) as con:
        listed = con.sql(
            "SELECT bucket, key, size, sha256, content_type FROM backupkit.storage_files ORDER BY key"
        ).fetchall()
    assert listed == [
        (name, key, len(data), hashlib.sha256(data).hexdigest(), ctype)
        for key, data, ctype in (
            ("added.png", b"\x89PNG new", "image/png"),
            ("changed.txt", b"after!", "text/plain"),
            ("kept.txt", b"kept", "text/plain"),
        )
    ]
    shown = run_cli("sql", new.path, "SELECT count(*) * 1000 + sum(size) AS n FROM backupkit.storage_files")
    assert shown.returncode == 0 and "3018" in shown.stdout, shown.stdout  # 3 files, 8 + 6 + 4 bytes

    from backupkit import notebook as nb

    shown_in_report = nb.storage_files_table(diff)
    assert sorted(map(tuple, shown_in_report[["what", "key"]].values.tolist())) == [
        ("added", "added.png"),
        ("changed", "changed.txt"),
        ("removed", "removed.txt"),
    ]


# -- reconciliation with storage.objects ------------------------------------------------------------


def test_rows_and_files_that_disagree_are_reported_by_backup_and_verify(
    supabase_project, storage_env, s3_client, buckets, tmp_path
):
    source = supabase_project.app_project()
    with psycopg.connect(supabase_project.admin(source), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO storage.objects (bucket_id, name, owner_id, metadata) VALUES"
            " ('avatars', 'dave/avatar.png', '33333333-3333-3333-3333-333333333333',"
            ' \'{"size": 10, "mimetype": "image/png"}\')'
        )
    avatars = buckets("avatars")
    put(s3_client, avatars, "alice/avatar.png", os.urandom(1024), "image/webp")  # the row says image/png
    put(s3_client, avatars, "bob/avatar.jpg", os.urandom(1000), "image/jpeg")  # the row says 2048 bytes
    put(s3_client, avatars, "carol/avatar.gif", os.urandom(500), "image/gif")  # no row
    # dave/avatar.png: a row, no file
    repo = tmp_path / "repo"

    out = run_cli("backup", "--dsn", source, "--to", repo, "--schema", "public", "--storage-bucket", "avatars", "-q")

    assert out.returncode == 0, out.stderr
    expected = [
        {
            "kind": "content_type",
            "bucket": "avatars",
            "key": "alice/avatar.png",
            "row": "image/png",
            "file": "image/webp",
        },
        {"kind": "size", "bucket": "avatars", "key": "bob/avatar.jpg", "row": "2048", "file": "1000"},
        {"kind": "file_without_row", "bucket": "avatars", "key": "carol/avatar.gif", "row": None, "file": None},
        {"kind": "row_without_file", "bucket": "avatars", "key": "dave/avatar.png", "row": None, "file": None},
    ]
    snapshot = Path(out.stdout.strip().splitlines()[-1])
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert manifest["storage"]["objects_rows"] is True
    assert manifest["storage"]["mismatches"] == expected
    # The section is what docs/snapshot-format.md says, and this backup writes every key of it.
    seen: set[tuple[str, str]] = set()
    assert model_problems(manifest["storage"], model.Buckets, "storage", seen) == []
    classes = (model.Buckets, model.Bucket, model.BucketFile, model.BucketSettings, model.Mismatch)
    assert {(c.__name__, f.name) for c in classes for f in model.fields(c)} - seen == set()
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: storage: avatars/")]
    assert len(warnings) == 4, out.stderr
    for m, line in zip(expected, warnings, strict=True):
        assert m["key"] in line
    assert "the row's content type is image/png, the file's image/webp" in warnings[0]
    assert "the row's size is 2048, the file's 1000" in warnings[1]
    assert "a file, but no storage.objects row" in warnings[2]
    assert "a storage.objects row, but no file" in warnings[3]

    checked = run_cli("verify", snapshot, "--json")
    assert checked.returncode == 0, checked.stderr  # facts about the project, not damage to the snapshot
    assert json.loads(checked.stdout)["storage_mismatches"] == expected
    shown = run_cli("verify", snapshot)
    assert shown.returncode == 0
    assert "storage: 4 mismatch(es)" in shown.stdout
    assert all(m["key"] in shown.stdout for m in expected)
    assert backupkit.verify(snapshot).storage_mismatches == expected
    no_secret_in(out.stdout, out.stderr, checked.stdout, shown.stdout, snapshot_bytes(snapshot))


@pytest.mark.parametrize("dedup", [True, False])
def test_equal_files_empty_files_and_odd_keys_round_trip(make_db, storage_env, s3_client, buckets, tmp_path, dedup):
    """Equal contents under several keys and in two buckets are stored once per snapshot (one
    ``files/<sha256>``); an empty file and keys with spaces, ``+``, ``%`` and non-ASCII survive."""
    dsn = small_db(make_db)
    one, two = buckets(), buckets()
    same = os.urandom(50_000)
    for k in ("a", "b", "c", "d", "e", "f"):
        put(s3_client, one, f"x/{k}", same, "text/plain")
    put(s3_client, two, "y", same, "text/plain")
    put(s3_client, two, "empty", b"", "text/plain")
    put(s3_client, two, "my photo (1)+ü%.png", b"odd", "image/png")

    res = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[two, one], progress=False, dedup=dedup)

    assert [b["name"] for b in res.manifest["storage"]["buckets"]] == sorted([one, two])
    paths = {f["path"] for b in res.manifest["storage"]["buckets"] for f in b["files"]}
    assert len(paths) == 3  # same, empty, odd
    report = backupkit.verify(res.path)
    assert report.ok, report.problems
    drop_bucket(s3_client, one)
    drop_bucket(s3_client, two)

    done = restore_files(res.path, progress=False)

    assert sorted(done.created_buckets) == sorted([one, two]) and len(done.uploaded) == 9
    assert [read(s3_client, one, f"x/{k}")["data"] for k in "abcdef"] == [same] * 6
    assert read(s3_client, two, "y")["data"] == same
    assert read(s3_client, two, "empty")["data"] == b""
    assert read(s3_client, two, "my photo (1)+ü%.png") == {
        "data": b"odd",
        "content_type": "image/png",
        "cache_control": None,
        "metadata": {},
    }


# -- restore_files: newer files, prefixes, damage ---------------------------------------------------


def test_restore_keeps_newer_files_unless_told_and_restores_only_the_prefixes_asked(
    make_db, storage_env, s3_client, buckets, tmp_path
):
    dsn = small_db(make_db)
    name = buckets()
    a, b, c = os.urandom(4000), os.urandom(5000), os.urandom(6000)
    put(s3_client, name, "docs/a.txt", a, "text/plain", Metadata={"v": "1"})
    put(s3_client, name, "docs/b.txt", b, "text/plain")
    put(s3_client, name, "img/c.png", c, "image/png")
    snap = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False).path
    for key in ("docs/a.txt", "docs/b.txt", "img/c.png"):
        s3_client.delete_object(Bucket=name, Key=key)

    done = restore_files(snap, buckets=[name], prefixes=["docs/"], progress=False)

    assert done.uploaded == [f"{name}/docs/a.txt", f"{name}/docs/b.txt"] and done.created_buckets == []
    assert keys(s3_client, name) == ["docs/a.txt", "docs/b.txt"]
    assert read(s3_client, name, "docs/a.txt")["data"] == a

    next_second()
    put(s3_client, name, "docs/a.txt", b"edited after the snapshot", "text/plain")

    done = restore_files(snap, buckets=[name], progress=False)

    assert done.kept_newer == [f"{name}/docs/a.txt"]
    assert done.same == [f"{name}/docs/b.txt"]
    assert done.uploaded == [f"{name}/img/c.png"] and done.bytes == 6000
    assert read(s3_client, name, "docs/a.txt")["data"] == b"edited after the snapshot"
    assert read(s3_client, name, "img/c.png")["data"] == c

    done = restore_files(snap, buckets=[name], overwrite=True, progress=False)

    assert done.uploaded == [f"{name}/docs/a.txt"] and done.kept_newer == []
    assert sorted(done.same) == [f"{name}/docs/b.txt", f"{name}/img/c.png"]
    got = read(s3_client, name, "docs/a.txt")
    assert (got["data"], got["metadata"], got["content_type"]) == (a, {"v": "1"}, "text/plain")


def test_a_damaged_file_in_the_snapshot_never_reaches_the_bucket(make_db, storage_env, s3_client, buckets, tmp_path):
    dsn = small_db(make_db)
    name = buckets()
    small, changed = os.urandom(10_000), os.urandom(20_000)
    big = os.urandom(9 * MiB)  # more than one PUT part: uploaded in parts
    put(s3_client, name, "a/small.bin", small, "application/octet-stream")
    put(s3_client, name, "b/changed.bin", changed, "application/octet-stream")
    put(s3_client, name, "c/big.bin", big, "application/octet-stream")
    res = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False)
    files = files_by_key(res.manifest, name)
    for key in files:
        flip_a_byte(stored_file(res.path, files[key]))
    s3_client.delete_object(Bucket=name, Key="a/small.bin")
    s3_client.delete_object(Bucket=name, Key="c/big.bin")
    next_second()
    put(s3_client, name, "b/changed.bin", b"the live file", "text/plain")

    for prefix in ("a/", "b/", "c/"):
        with pytest.raises(SnapshotDamaged) as caught:
            restore_files(res.path, buckets=[name], prefixes=[prefix], overwrite=True, progress=False)
        assert prefix in str(caught.value) and "SHA-256" in str(caught.value)

    assert missing(s3_client, name, "a/small.bin")
    assert missing(s3_client, name, "c/big.bin")
    assert read(s3_client, name, "b/changed.bin")["data"] == b"the live file"
    assert not s3_client.list_multipart_uploads(Bucket=name).get("Uploads")  # the parts were dropped
    assert not backupkit.verify(res.path).ok


def test_running_a_restore_again_finds_the_files_it_restored_the_same(
    make_db, storage_env, s3_client, buckets, tmp_path
):
    """An interrupted restore is run again: what the first run put back is already there."""
    dsn = small_db(make_db)
    name = buckets()
    sha = upload_generated(s3_client, name, "big.bin", parts=2, part_size=5 * MiB)  # as an uploader sends it
    snap = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False).path
    s3_client.delete_object(Bucket=name, Key="big.bin")
    assert restore_files(snap, buckets=[name], progress=False).uploaded == [f"{name}/big.bin"]
    assert streamed_sha256(s3_client, name, "big.bin") == (10 * MiB, sha)
    next_second()

    again = restore_files(snap, buckets=[name], progress=False)

    assert (again.same, again.kept_newer, again.uploaded) == ([f"{name}/big.bin"], [], [])


# -- the command line -------------------------------------------------------------------------------


def test_backup_without_storage_settings_is_a_config_error_naming_them(make_db, s3_server, monkeypatch, tmp_path):
    for var in STORAGE_ENV:
        monkeypatch.delenv(var, raising=False)
    repo = tmp_path / "repo"
    out = run_cli("backup", "--dsn", small_db(make_db), "--to", repo, "--storage-bucket", "x")
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "BACKUPKIT_STORAGE_ENDPOINT" in errors[0], out.stderr
    assert not repo.exists()


def _moto_auth(server: str, count: str) -> None:
    """Turn moto's request authentication on ("0": from the next request) or off ("inf")."""
    request = urllib.request.Request(
        f"{server}/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_a_wrong_storage_secret_fails_with_one_line_and_leaves_no_snapshot(
    make_db, storage_env, s3_client, buckets, monkeypatch, tmp_path
):
    import boto3

    dsn = small_db(make_db)
    name = buckets()
    put(s3_client, name, "f.txt", b"hello", "text/plain")
    iam = boto3.client("iam", region_name="us-east-1")
    user = f"storage-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="all-s3",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("BACKUPKIT_STORAGE_KEY_ID", key["AccessKeyId"])
    repo = tmp_path / "repo"
    _moto_auth(storage_env, "0")
    try:
        right = boto3.client("s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        assert right.get_object(Bucket=name, Key="f.txt")["Body"].read() == b"hello"  # the key is good
        out = run_cli("backup", "--dsn", dsn, "--to", repo, "--storage-bucket", name)
    finally:
        _moto_auth(storage_env, "inf")

    assert out.returncode == 13, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "access denied" in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    no_secret_in(out.stdout, out.stderr)
    listed = run_cli("list", repo, "--json")
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    assert listing["snapshots"] == [] and listing["unfinished"] == []


def test_backup_and_files_only_restore_on_the_command_line(make_db, storage_env, s3_client, buckets, tmp_path):
    dsn = small_db(make_db)
    name = buckets()
    one, two = os.urandom(1234), os.urandom(4321)
    put(s3_client, name, "u/1.bin", one, "application/octet-stream", Metadata={"k": "v"})
    put(s3_client, name, "u/2.bin", two, "application/octet-stream")
    repo = tmp_path / "repo"

    out = run_cli("backup", "--dsn", dsn, "--to", repo, "--storage-bucket", name, "-v")

    assert out.returncode == 0, out.stderr
    assert "2 files of 1 bucket(s)" in out.stderr
    snapshot = out.stdout.strip().splitlines()[-1]
    s3_client.delete_object(Bucket=name, Key="u/1.bin")
    # The endpoint and key id as options; the secret only from the environment.
    env = {"BACKUPKIT_STORAGE_ENDPOINT": "", "BACKUPKIT_STORAGE_KEY_ID": ""}
    options = ("--storage-endpoint", storage_env, "--storage-key-id", STORAGE_KEY_ID)

    restored = run_cli("restore", snapshot, "--files-only", "--storage-bucket", name, *options, "--json", env=env)

    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout) == {
        "files": {
            "uploaded": [f"{name}/u/1.bin"],
            "same": [f"{name}/u/2.bin"],
            "kept_newer": [],
            "created_buckets": [],
            "bytes": 1234,
            "dry_run": False,
        }
    }
    got = read(s3_client, name, "u/1.bin")
    assert (got["data"], got["metadata"]) == (one, {"k": "v"})
    no_secret_in(out.stdout, out.stderr, restored.stdout, restored.stderr)


def test_a_dry_run_of_a_files_restore_says_what_it_would_do_and_changes_nothing(
    make_db, storage_env, s3_client, buckets, tmp_path
):
    dsn = small_db(make_db)
    kept, gone = buckets(), buckets()
    one, two = os.urandom(1000), os.urandom(2000)
    put(s3_client, kept, "a.bin", one, "application/octet-stream")
    put(s3_client, kept, "b.bin", two, "application/octet-stream")
    put(s3_client, gone, "c.bin", one, "application/octet-stream")
    snapshot = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[kept, gone], progress=False).path
    s3_client.delete_object(Bucket=kept, Key="a.bin")
    drop_bucket(s3_client, gone)

    out = run_cli("restore", snapshot, "--files-only", "--storage-all-buckets", "--dry-run", "--json", "-q")

    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["files"] == {
        "uploaded": sorted([f"{kept}/a.bin", f"{gone}/c.bin"]),
        "same": [f"{kept}/b.bin"],
        "kept_newer": [],
        "created_buckets": [gone],
        "bytes": 2000,
        "dry_run": True,
    }
    assert missing(s3_client, kept, "a.bin")
    with pytest.raises(ClientError):
        s3_client.head_bucket(Bucket=gone)

    words = run_cli("restore", snapshot, "--files-only", "--storage-bucket", kept, "--dry-run", "-q")

    assert words.returncode == 0, words.stderr
    assert "files (dry run): 1 would be uploaded" in words.stdout
    assert missing(s3_client, kept, "a.bin")


def test_a_database_and_files_restore_prints_one_json_document(make_db, storage_env, s3_client, buckets, tmp_path):
    dsn = small_db(make_db)
    name = buckets()
    put(s3_client, name, "a.bin", b"a file", "text/plain")
    snapshot = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False).path
    s3_client.delete_object(Bucket=name, Key="a.bin")
    target = make_db("bkt_target")

    out = run_cli("restore", snapshot, "--dsn", target, "--storage-bucket", name, "--json", "-q")

    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)  # one document: the restore's, with its files inside
    assert document["rows_loaded"] == 100 and document["files"]["uploaded"] == [f"{name}/a.bin"]
    assert read(s3_client, name, "a.bin")["data"] == b"a file"


class _DropUploads(TcpProxy):
    """A TCP proxy to the S3 server that lets reads through and cuts the connection at the
    first PUT (an endpoint lost while files are uploaded).  Real sockets both ways."""

    def serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)

        def answers() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(1 << 16):
                    client.sendall(data)
            client.close()

        threading.Thread(target=answers, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := client.recv(1 << 16):
                if data.startswith(b"PUT "):
                    break
                upstream.sendall(data)
        client.close()
        upstream.close()


def test_a_restore_whose_files_fail_still_reports_the_database_it_restored(
    make_db, storage_env, s3_client, buckets, tmp_path
):
    """The database part is committed before the files go: when the Storage endpoint is lost
    while they upload, the output still says what was restored, and the exit code says what failed."""
    dsn = small_db(make_db)
    name = buckets()
    put(s3_client, name, "a.bin", b"a file", "text/plain")
    snapshot = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False).path
    s3_client.delete_object(Bucket=name, Key="a.bin")
    proxy = _DropUploads(storage_env)
    lost = ("--storage-endpoint", proxy.url)
    try:
        words = run_cli("restore", snapshot, "--dsn", make_db("tgt_words"), "--storage-bucket", name, *lost, "-q")
        document = run_cli("restore", snapshot, "--dsn", make_db("tgt_json"), "--storage-bucket", name, *lost, "--json")
    finally:
        proxy.close()

    assert words.returncode == 13, words.stderr
    assert words.stdout.startswith("restored 1 tables, 100 rows")
    assert document.returncode == 13, document.stderr
    assert json.loads(document.stdout)["rows_loaded"] == 100 and "files" not in json.loads(document.stdout)
    assert "a.bin" not in keys(s3_client, name)


def test_a_files_restore_whose_database_cannot_be_used_changes_nothing_and_leaks_no_password(
    make_db, storage_env, s3_client, buckets, tmp_path
):
    dsn = small_db(make_db)
    name = buckets()
    put(s3_client, name, "a.bin", b"a file", "text/plain")
    snapshot = backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False).path
    drop_bucket(s3_client, name)
    password = "s3%zzcr3t-" + uuid.uuid4().hex  # not valid percent-encoding: psycopg's own error quotes it
    unusable = f"postgresql://someone:{password}@127.0.0.1:1/nowhere"

    out = run_cli("restore", snapshot, "--files-only", "--storage-bucket", name, "--dsn", unusable)

    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert password not in out.stdout + out.stderr
    with pytest.raises(ClientError):  # the bucket was not made
        s3_client.head_bucket(Bucket=name)

    refused = run_cli(
        "restore", snapshot, "--files-only", "--storage-bucket", name, "--dsn", "postgresql://someone@127.0.0.1:1/x"
    )

    assert refused.returncode == 3, refused.stderr
    with pytest.raises(ClientError):
        s3_client.head_bucket(Bucket=name)


# -- a 1 GiB file, in flat memory -------------------------------------------------------------------

#: Starts a command from a tiny process (no psycopg, boto3 or moto in it) and reports the
#: command's peak RSS from wait4: Linux counts a parent's RSS high-water mark at fork (and
#: vfork) into a child's ru_maxrss, so the test's own Python, which holds the S3 server,
#: cannot start the measured command itself (see benchmarks/launch.py).
LAUNCHER = """
import json, os, sys
argv = json.loads(sys.argv[1])
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
sys.stderr.flush()
with open(sys.argv[2], "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "rss_kib": usage.ru_maxrss}, f)
"""


def measured(
    tmp_path: Path, *args: str, command: tuple[str, ...] = ("-m", "backupkit")
) -> tuple[subprocess.CompletedProcess, float, float]:
    """``python -m backupkit ARGS`` with (its result, its peak RSS in MB, seconds)."""
    result = tmp_path / f"rss-{uuid.uuid4().hex[:6]}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("BACKUPKIT_DSN", "DATABASE_URL", "SUPABASE_DB_URL")}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-S", "-I", "-c", LAUNCHER, json.dumps([sys.executable, *command, *args]), result],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=900,
    )
    seconds = time.monotonic() - started
    report = json.loads(result.read_text())
    out.returncode = report["code"]
    return out, report["rss_kib"] / 1024, seconds


def upload_generated(client, bucket: str, key: str, parts: int, part_size: int) -> str:
    """Upload ``parts * part_size`` pseudo-random bytes in parts (one part in memory at a
    time): a 1 MiB random block, each copy stamped with its number.  Their SHA-256."""
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType="video/mp4")["UploadId"]
    done, n = [], 0
    for number in range(1, parts + 1):
        chunk = bytearray()
        for _ in range(part_size // MiB):
            chunk += n.to_bytes(8, "big") + block[8:]
            n += 1
        digest.update(chunk)
        r = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=bytes(chunk))
        done.append({"PartNumber": number, "ETag": r["ETag"]})
        del chunk
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})
    return digest.hexdigest()


def streamed_sha256(client, bucket: str, key: str) -> tuple[int, str]:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: body.read(MiB), b""):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def test_a_1_gib_file_backs_up_and_restores_in_flat_memory(make_db, storage_env, s3_client, buckets, tmp_path):
    # The measurement sees a child's memory (else a pass below would mean nothing).
    _, hungry_mb, _ = measured(tmp_path, command=("-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"))
    assert hungry_mb > 200
    dsn = small_db(make_db)
    name = buckets()
    size = 1 << 30
    started = time.monotonic()
    sha = upload_generated(s3_client, name, "videos/big.mp4", parts=16, part_size=64 * MiB)
    uploaded_s = time.monotonic() - started
    repo = tmp_path / "repo"

    out, backup_mb, backup_s = measured(tmp_path, "backup", "--dsn", dsn, "--to", str(repo), "--storage-bucket", name)

    assert out.returncode == 0, out.stderr
    snapshot = Path(out.stdout.strip().splitlines()[-1])
    [entry] = json.loads((snapshot / "manifest.json").read_text())["storage"]["buckets"][0]["files"]
    assert (entry["size"], entry["sha256"]) == (size, sha)
    assert stored_file(snapshot, entry).stat().st_size == size
    s3_client.delete_object(Bucket=name, Key="videos/big.mp4")

    restored, restore_mb, restore_s = measured(
        tmp_path, "restore", str(snapshot), "--files-only", "--storage-bucket", name, "--json", "-q"
    )

    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["files"]["uploaded"] == [f"{name}/videos/big.mp4"]
    assert streamed_sha256(s3_client, name, "videos/big.mp4") == (size, sha)
    assert s3_client.head_object(Bucket=name, Key="videos/big.mp4")["ContentType"] == "video/mp4"
    timing = (
        f"upload {uploaded_s:.1f}s, backup {backup_s:.1f}s {backup_mb:.0f} MB, restore {restore_s:.1f}s {restore_mb:.0f} MB, "
        f"total {time.monotonic() - started:.1f}s"
    )
    print(timing)
    assert backup_mb < 150, timing
    assert restore_mb < 150, timing


class _HoldReads(TcpProxy):
    """A TCP proxy to the S3 server that holds back every request for ``key`` until ``release``;
    ``held`` is set once one is being held.  Real sockets both ways."""

    def __init__(self, endpoint: str, key: str):
        self.key = key.encode()
        self.held, self.go = threading.Event(), threading.Event()
        super().__init__(endpoint)

    def serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)

        def answers() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(1 << 16):
                    client.sendall(data)
            client.close()

        threading.Thread(target=answers, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := client.recv(1 << 16):
                line = data.split(b"\r\n", 1)[0]
                if line.startswith(b"GET ") and self.key in line:
                    self.held.set()
                    self.go.wait(60)
                upstream.sendall(data)
        upstream.close()

    def release(self) -> None:
        self.go.set()
        self.close()


def test_the_database_is_let_go_before_the_bucket_files_are_copied(
    make_db, storage_env, s3_client, buckets, tmp_path, monkeypatch
):
    """The backup held its consistent moment's transaction, and its ACCESS SHARE lock on every
    table, while it copied the bucket files: for a bucket of an hour, an hour in which a
    migration's ALTER TABLE (and every query queued behind it) waited, and VACUUM could clean
    up nothing.  The rows it needs are read first; then the session ends."""
    dsn = small_db(make_db)
    name = buckets()
    put(s3_client, name, "slow/file.bin", os.urandom(1000), "application/octet-stream")
    proxy = _HoldReads(storage_env, "slow/file.bin")
    monkeypatch.setenv("BACKUPKIT_STORAGE_ENDPOINT", proxy.url)
    result: dict = {}
    run = threading.Thread(
        target=lambda: result.update(
            done=backupkit.backup(dsn, tmp_path / "repo", storage_buckets=[name], progress=False)
        )
    )
    run.start()
    try:
        assert proxy.held.wait(60), "the backup never read the file"
        others = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND (backend_xmin IS NOT NULL OR state LIKE 'idle in transaction%%')"
        )
        locks = "SELECT count(*) FROM pg_locks WHERE relation = 'notes'::regclass AND pid <> pg_backend_pid()"
        assert rows(dsn, others) == [(0,)]
        assert rows(dsn, locks) == [(0,)]
        with psycopg.connect(dsn, autocommit=True) as conn:  # a migration gets its lock at once
            conn.execute("SET lock_timeout = '2s'")
            conn.execute("ALTER TABLE notes ADD COLUMN later text")
    finally:
        proxy.release()
        run.join(120)
    assert "done" in result
    assert backupkit.verify(result["done"].path).ok
    assert [
        c["name"] for c in next(t for t in result["done"].manifest["tables"] if t["name"] == "notes")["columns"]
    ] == [
        "id",
        "body",
    ]
