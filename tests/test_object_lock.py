"""S3 Object Lock: snapshots whose objects cannot be deleted before a date, and prune that waits.

Against the real S3 server of the tests (moto in server mode, tests/s3server.py) and the
real boto3 client, with buckets created with Object Lock enabled.  moto 5 answers
GetObjectRetention with an error, so an object's retention is read from HEAD
(``ObjectLockMode`` / ``ObjectLockRetainUntilDate``), which carries the same; and it does
not apply the retention of a CreateMultipartUpload to the object, so for multipart writes
the requests are checked instead.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError
from fingerprint import diff_fingerprints, fingerprint
from helpers import load_small, run_cli
from test_snapshot_model import problems

import backupkit
from backupkit.errors import ConfigError, StorageError
from backupkit.retention.policy import Policy
from backupkit.retention.prune import prune
from backupkit.snapshot import manifest as mf
from backupkit.snapshot import model
from backupkit.snapshot.verify import verify
from backupkit.storage import pool
from backupkit.storage import s3 as s3mod
from backupkit.storage.location import SnapshotLocation, open_storage
from backupkit.storage.repository import list_snapshots
from backupkit.storage.s3 import MIN_PART_SIZE, S3Storage

MiB = 1 << 20


@pytest.fixture
def locked_bucket(s3_client):
    """A new bucket with Object Lock enabled (and so versioned), no default retention."""
    name = f"bk-lock-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def _keys(client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _versions(client, bucket: str) -> list[dict]:
    return client.list_object_versions(Bucket=bucket).get("Versions", [])


def _lock_of(client, bucket: str, key: str, version: str | None = None) -> tuple[str | None, datetime | None]:
    extra = {"VersionId": version} if version else {}
    head = client.head_object(Bucket=bucket, Key=key, **extra)
    return head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")


# -- a locked backup --------------------------------------------------------------------------------


def test_a_locked_backup_locks_every_object_and_verifies_and_restores(make_db, locked_bucket, s3_client):
    source, target = make_db("olb"), make_db("olr")
    load_small(source)
    url = f"s3://{locked_bucket}/repo"
    cli = run_cli("backup", "--dsn", source, "--to", url, "--object-lock-days", "3", "--object-lock-mode", "compliance")
    assert cli.returncode == 0, cli.stderr
    assert "locked (COMPLIANCE) until" in cli.stderr
    (snap,), unfinished = list_snapshots(url)
    assert unfinished == [] and snap.error is None

    manifest = mf.read(snap.location)
    lock = manifest["object_lock"]
    until = datetime.fromisoformat(lock["retain_until"])
    created = datetime.fromisoformat(manifest["created_at"])
    assert lock["mode"] == "COMPLIANCE" and until.microsecond == 0
    assert timedelta(days=3) <= until - created < timedelta(days=3, seconds=1)
    seen: set[tuple[str, str]] = set()  # object_lock is as snapshot.model (and the docs) describe it
    assert problems(manifest, model.Manifest, "manifest", seen) == []
    assert {("Manifest", "object_lock"), ("ObjectLock", "mode"), ("ObjectLock", "retain_until")} <= seen

    keys = _keys(s3_client, locked_bucket)
    assert keys and all(k.startswith(f"repo/{snap.id}/") for k in keys), keys  # no staging, no lock left
    assert f"repo/{snap.id}/manifest.json" in keys and any("/data/" in k for k in keys)
    for key in keys:  # every object of the snapshot, manifest and signature included
        assert _lock_of(s3_client, locked_bucket, key) == ("COMPLIANCE", until), key
    # The staged objects were written unlocked (their versions stay behind a delete marker).
    staged = [v for v in _versions(s3_client, locked_bucket) if "/.tmp-" in v["Key"]]
    assert staged and all(_lock_of(s3_client, locked_bucket, v["Key"], v["VersionId"])[0] is None for v in staged)

    # A locked object version cannot be deleted: S3 itself refuses.
    manifest_version = s3_client.head_object(Bucket=locked_bucket, Key=f"repo/{snap.id}/manifest.json")["VersionId"]
    with pytest.raises(ClientError, match="AccessDenied"):
        s3_client.delete_object(Bucket=locked_bucket, Key=f"repo/{snap.id}/manifest.json", VersionId=manifest_version)

    assert verify(snap.location, deep=True).ok
    assert run_cli("verify", f"{url}/{snap.id}").returncode == 0
    backupkit.restore(snap.location, target)
    a, b = fingerprint(source), fingerprint(target)
    assert a == b, "\n".join(diff_fingerprints(a, b)[:40])


# -- prune --------------------------------------------------------------------------------------------


def test_prune_keeps_a_locked_snapshot_until_its_date_then_removes_it(make_db, locked_bucket, s3_client, monkeypatch):
    source = make_db("olp")
    load_small(source)
    url = f"s3://{locked_bucket}/repo"
    locked = backupkit.backup(source, url, object_lock_days=2, progress=False)
    assert locked.manifest["object_lock"]["mode"] == "GOVERNANCE"  # the default
    assert not pool.referenced(locked.manifest)  # a locked snapshot's files are its own, all locked
    plain = backupkit.backup(source, url, progress=False)
    assert "object_lock" not in plain.manifest
    assert _lock_of(s3_client, locked_bucket, f"repo/{plain.id}/manifest.json") == (None, None)
    until = datetime.fromisoformat(locked.manifest["object_lock"]["retain_until"])
    reason = f"object lock until {until:%Y-%m-%d %H:%M:%S} UTC"

    # keep_last 1 would remove the older, locked snapshot: it is kept, with the lock as its reason.
    result = prune(url, Policy(keep_last=1), now=datetime.now(UTC))
    decisions = {d["id"]: d for d in result.decisions}
    assert decisions[locked.id]["action"] == "keep" and decisions[locked.id]["reasons"] == [reason]
    assert decisions[plain.id]["reasons"] == ["last 1/1", "newest intact snapshot"]  # the policy, unchanged
    assert result.removed == [] and sorted(result.kept) == sorted([locked.id, plain.id])

    cli = run_cli("prune", url, "--keep-last", "1")
    assert cli.returncode == 0, cli.stderr
    assert reason in cli.stdout and "removed 0 snapshot(s), kept 2" in cli.stdout
    cli = run_cli("prune", url, "--keep-last", "1", "--json", "--dry-run")
    assert json.loads(cli.stdout)["removed"] == []
    assert {s.id for s in list_snapshots(url)[0]} == {locked.id, plain.id}

    # After the date, S3 refusing the delete anyway (a bucket policy, a legal hold) is reported
    # for that snapshot, which stays whole and listed once: the copy made to trash it is undone.
    after = until + timedelta(minutes=1)
    real_call = S3Storage._call

    def refuse_deletes_of_the_locked_snapshot(self, method, name, **kwargs):
        if method.startswith("delete") and name.startswith(locked.id):
            denied = {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}
            raise self._error(ClientError(denied, method), name, method)
        return real_call(self, method, name, **kwargs)

    monkeypatch.setattr(S3Storage, "_call", refuse_deletes_of_the_locked_snapshot)
    with pytest.raises(StorageError) as caught:
        prune(url, Policy(keep_last=1), now=after)
    monkeypatch.undo()
    message = str(caught.value)
    assert f"could not remove {locked.id}: S3 refused to delete (AccessDenied): an Object Lock" in message
    assert "\n" not in message
    snaps, unfinished = list_snapshots(url)
    assert {s.id for s in snaps} == {locked.id, plain.id} and unfinished == []
    assert verify(SnapshotLocation(open_storage(url), locked.id), deep=True).ok

    # Once the retention has passed, prune removes it like any other.
    result = prune(url, Policy(keep_last=1), now=after)
    assert result.removed == [locked.id] and result.kept == [plain.id]
    assert [s.id for s in list_snapshots(url)[0]] == [plain.id]
    keys = set(_keys(s3_client, locked_bucket)) - {f"repo/{name}" for name in pool.referenced(plain.manifest)}
    assert keys and all(k.startswith(f"repo/{plain.id}/") for k in keys), keys
    # Deleting a key in a versioned bucket adds a delete marker: the locked versions stay
    # until a lifecycle rule removes noncurrent versions after their retention.
    kept_versions = [v for v in _versions(s3_client, locked_bucket) if v["Key"].startswith(f"repo/{locked.id}/")]
    assert kept_versions and not any(v["IsLatest"] for v in kept_versions)
    assert verify(SnapshotLocation(open_storage(url), plain.id)).ok


# -- refused before anything is written ------------------------------------------------------------------


def test_a_bucket_without_object_lock_is_one_clear_line_and_nothing_is_written(make_db, s3_bucket, s3_client):
    dsn = make_db("olx")
    with pytest.raises(ConfigError) as caught:
        backupkit.backup(dsn, f"s3://{s3_bucket}/repo", object_lock_days=1, progress=False)
    message = str(caught.value)
    assert f"bucket {s3_bucket} has none: create the bucket with Object Lock enabled" in message
    assert "\n" not in message and "--object-lock-enabled-for-bucket" in (caught.value.hint or "")
    assert _keys(s3_client, s3_bucket) == []  # not even the lock

    cli = run_cli("backup", "--dsn", dsn, "--to", f"s3://{s3_bucket}/repo", "--object-lock-days", "1")
    assert cli.returncode == 2
    assert cli.stderr.startswith("error: --object-lock-days needs a bucket with Object Lock"), cli.stderr
    assert _keys(s3_client, s3_bucket) == []


def test_object_lock_options_are_checked_before_anything_is_touched(tmp_path, s3_server):
    dsn = "postgresql://nobody@127.0.0.1:1/none"  # never connected to
    with pytest.raises(ConfigError, match=r"^object_lock_days needs an S3 repository \(s3://bucket/prefix\)"):
        backupkit.backup(dsn, tmp_path / "repo", object_lock_days=1)
    assert not (tmp_path / "repo").exists()  # the local folder is not even made
    for days, mode, match in [
        (0, None, "object_lock_days must be above 0"),
        (-1, None, "object_lock_days must be above 0"),
        (float("nan"), None, "object_lock_days must be a number"),
        (True, None, "object_lock_days must be a number"),
        (40000, None, "at most 36500"),
        (1, "forever", "object_lock_mode must be GOVERNANCE or COMPLIANCE"),
        (None, "COMPLIANCE", "object_lock_mode needs `object_lock_days`"),
    ]:
        with pytest.raises(ConfigError, match=match):
            backupkit.backup(dsn, "s3://some-bucket/repo", object_lock_days=days, object_lock_mode=mode)
    cli = run_cli("backup", "--dsn", dsn, "--to", str(tmp_path / "repo"), "--object-lock-days", "1")
    assert cli.returncode == 2 and cli.stderr.startswith("error: --object-lock-days needs an S3 repository")


# -- the storage's locked view ----------------------------------------------------------------------------


def test_the_locked_view_locks_writes_and_copies_and_nothing_else(locked_bucket, s3_client, monkeypatch):
    plain = S3Storage(locked_bucket, "v", part_size=MIN_PART_SIZE)
    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    view = plain.with_retention("GOVERNANCE", until)
    assert view == plain and plain.retention is None  # the same repository; the original is untouched
    view.write("small", b"x")
    plain.write("unlocked", b"y")
    assert _lock_of(s3_client, locked_bucket, "v/small") == ("GOVERNANCE", until)
    assert _lock_of(s3_client, locked_bucket, "v/unlocked") == (None, None)

    plain.write("dir/a", b"a")
    plain.write("dir/manifest.json", b"{}")
    view.rename("dir", "published")  # copies created locked, unlocked sources deleted
    assert _keys(s3_client, locked_bucket) == ["v/published/a", "v/published/manifest.json", "v/small", "v/unlocked"]
    for key in ("v/published/a", "v/published/manifest.json"):
        assert _lock_of(s3_client, locked_bucket, key) == ("GOVERNANCE", until)
    plain.rename("published", "trash")  # a plain rename (prune's) never locks
    assert _lock_of(s3_client, locked_bucket, "v/trash/a") == (None, None)

    # Multipart: the upload is created with the retention, every part carries its Content-MD5
    # (S3 insists for locked objects), and so does a multipart copy's creation.
    headers: list[dict] = []
    recorded = plain.with_retention("COMPLIANCE", until)
    recorded._client().meta.events.register(
        "before-send.s3.*", lambda request, **_: headers.append({k.lower(): v for k, v in request.headers.items()})
    )
    data = os.urandom(MIN_PART_SIZE + MiB)
    recorded.write("big", data)
    locking = [h for h in headers if b"COMPLIANCE" in (h.get("x-amz-object-lock-mode") or b"")]
    assert len(locking) == 1  # CreateMultipartUpload
    parts = [h for h in headers if "content-md5" in h]
    assert len(parts) == 2  # both parts
    with recorded.open("big") as f:
        assert f.read() == data

    monkeypatch.setattr(s3mod, "COPY_LIMIT", MiB)  # copy "big" in parts, as a file over 5 GiB would be
    monkeypatch.setattr(s3mod, "COPY_PART", MIN_PART_SIZE)
    headers.clear()
    recorded.rename("big", "big2")
    assert [h for h in headers if b"COMPLIANCE" in (h.get("x-amz-object-lock-mode") or b"")]
    with plain.open("big2") as f:
        assert f.read() == data

    with pytest.raises(ValueError, match="mode"):
        plain.with_retention("FOREVER", until)
    with pytest.raises(ValueError, match="time zone"):
        plain.with_retention("GOVERNANCE", until.replace(tzinfo=None))


def test_a_locked_copy_into_a_bucket_without_object_lock_says_so(s3_bucket, s3_client):
    plain = S3Storage(s3_bucket, "v")
    assert plain.object_lock_enabled() is False
    plain.write("dir/a", b"a")
    plain.write("dir/manifest.json", b"{}")
    view = plain.with_retention("GOVERNANCE", datetime.now(UTC) + timedelta(days=1))
    with pytest.raises(OSError, match="the bucket needs Object Lock enabled"):
        view.rename("dir", "published")
    assert _keys(s3_client, s3_bucket) == ["v/dir/a", "v/dir/manifest.json"]  # the source is whole
