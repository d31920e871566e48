"""Repositories on S3-compatible storage, against a real S3 server started by the tests
(moto in server mode on 127.0.0.1, tests/s3server.py) and the real boto3 client.

A real backup streams into ``s3://bucket/repo``, lists, verifies and restores exactly;
snapshots copy local → S3 → local byte-identical; large files go up in parts; an
interrupted publish or delete never leaves anything listed as a snapshot, and prune
removes the debris; writes are exclusive even when two writers race; no error message
ever shows a secret.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import traceback
from datetime import UTC, datetime, timedelta

import pytest
from fingerprint import diff_fingerprints, fingerprint
from helpers import load_small, stored_file
from s3server import ACCESS_KEY, SECRET

import backupkit
from backupkit.errors import LockError, SnapshotError, StorageError
from backupkit.retention.policy import Policy
from backupkit.retention.prune import prune
from backupkit.snapshot import manifest as mf
from backupkit.snapshot.verify import verify
from backupkit.storage import lock as lockmod
from backupkit.storage import pool
from backupkit.storage.location import SnapshotLocation, locate, open_storage
from backupkit.storage.lock import DirLock
from backupkit.storage.repository import copy_snapshot, list_snapshots, new_id, resolve, set_pin
from backupkit.storage.s3 import MIN_PART_SIZE, S3Storage
from backupkit.storage.s3io import PARTS_IN_FLIGHT

MiB = 1 << 20


@pytest.fixture(scope="module")
def local_snapshot(pg_server, tmp_path_factory):
    """One real backup of the small database, in a local folder."""
    dsn = pg_server.createdb("s3src")
    try:
        load_small(dsn)
        return backupkit.backup(dsn, tmp_path_factory.mktemp("local"), label="src", progress=False).location
    finally:
        pg_server.dropdb(dsn)


def _contents(location: SnapshotLocation) -> dict[str, bytes]:
    """Every file of a snapshot, by its path inside the snapshot (shared ones read from the pool)."""
    out = {}
    for entry in location.storage.walk(location.id):
        if entry.kind == "file":
            with location.storage.open(entry.name) as f:
                out[entry.name[len(location.id) + 1 :]] = f.read()
    for f in mf.all_files(mf.read(location)):
        if f.get("shared"):
            out[f["path"]] = location.storage.read(location.stored(f["path"]), f["bytes"])
    return out


def _keys(client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _no_uploads_left(client, bucket: str) -> bool:
    return not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


# -- a whole backup on S3 -----------------------------------------------------------------------


def test_backup_to_s3_lists_verifies_and_restores_exactly(make_db, s3_bucket, s3_client):
    source, target = make_db("s3b"), make_db("s3r")
    load_small(source)
    url = f"s3://{s3_bucket}/repo"
    result = backupkit.backup(source, url, jobs=2, progress=False)  # workers get the storage pickled
    assert str(result.location) == f"{url}/{result.location.id}"
    assert isinstance(result.location.storage, S3Storage)

    (snap,), unfinished = list_snapshots(url)
    assert unfinished == [] and snap.id == result.location.id and snap.error is None and snap.rows == 22003
    assert verify(snap.location, deep=True).ok
    assert verify(f"{url}/{snap.id}", deep=True).ok  # the same snapshot, named by its URL
    assert resolve(url) == snap.location == locate(f"{url}/{snap.id}")
    keys = _keys(s3_client, s3_bucket)
    shared = {f"repo/{name}" for name in pool.referenced(mf.read(snap.location))}
    assert shared and shared <= set(keys)
    assert all(k.startswith(f"repo/{snap.id}/") for k in set(keys) - shared), keys  # no lock, no staging left
    assert f"repo/{snap.id}/manifest.json" in keys and _no_uploads_left(s3_client, s3_bucket)

    backupkit.restore(snap.location, target)
    a, b = fingerprint(source), fingerprint(target)
    assert a == b, "\n".join(diff_fingerprints(a, b)[:40])


def test_copy_local_to_s3_to_local_is_byte_identical(local_snapshot, s3_bucket, tmp_path):
    url = f"s3://{s3_bucket}/offsite"
    up = copy_snapshot(local_snapshot, url)
    assert up == SnapshotLocation(S3Storage(s3_bucket, "offsite"), local_snapshot.id)
    assert verify(up, deep=True).ok
    down = copy_snapshot(f"{url}/{local_snapshot.id}", tmp_path / "back")
    assert verify(down, deep=True).ok
    original = _contents(local_snapshot)
    assert _contents(up) == original and _contents(down) == original
    with pytest.raises(FileExistsError):
        copy_snapshot(local_snapshot, url)
    assert [s.id for s in list_snapshots(url)[0]] == [local_snapshot.id] and list_snapshots(url)[1] == []


def test_a_writer_verifies_by_size_on_s3_and_by_hash_on_disk(local_snapshot, s3_bucket, tmp_path):
    """S3 checked every body's Content-MD5 when it was written: the writer's verify checks sizes
    there, and a plain verify still reads everything.  On disk ``written`` changes nothing."""
    up = copy_snapshot(local_snapshot, f"s3://{s3_bucket}/w")
    rel = next(f["path"] for t in mf.read(up)["tables"] for f in t["files"])
    data = _contents(up)[rel]
    up.storage.remove(up.stored(rel))
    up.storage.write(up.stored(rel), bytes([data[0] ^ 1]) + data[1:])  # same size, other bytes
    assert verify(up, written=True).ok  # by size: what S3 stored is what was sent
    assert not verify(up).ok  # a plain verify reads it back and finds the change
    up.storage.remove(up.stored(rel))
    up.storage.write(up.stored(rel), data[:-1])
    assert f"{rel}: {len(data) - 1} bytes" in " ".join(verify(up, written=True).problems)
    local = tmp_path / "l"
    copy = copy_snapshot(local_snapshot, local)
    path = stored_file(copy.path, rel)
    raw = path.read_bytes()
    path.write_bytes(bytes([raw[0] ^ 1]) + raw[1:])
    assert not verify(copy, written=True).ok  # a local disk is always read back


def test_sizes_a_backup_saw_stored_are_not_asked_again(local_snapshot, s3_bucket):
    """A backup's verify takes the sizes its own writes confirmed (``confirmed``) instead of a
    HEAD per data file; a confirmed size that differs from the manifest is still a problem."""
    up = copy_snapshot(local_snapshot, f"s3://{s3_bucket}/confirmed")
    sizes = {up.stored(f["path"]): f["bytes"] for t in mf.read(up)["tables"] for f in t["files"]}
    asked: list[str] = []
    up.storage._client().meta.events.register(
        "before-parameter-build.s3.HeadObject", lambda params, **_: asked.append(params["Key"])
    )
    assert verify(up, written=True, confirmed=sizes).ok
    assert not set(asked) & {up.storage.key(n) for n in sizes}
    name = next(iter(sizes))
    problems = verify(up, written=True, confirmed={**sizes, name: sizes[name] + 1}).problems
    assert len(problems) == 1 and "manifest says" in problems[0]
    assert verify(up, written=True).ok and {up.storage.key(n) for n in sizes} <= set(asked)


def _clone(storage, source: SnapshotLocation, created_at: datetime) -> SnapshotLocation:
    """A copy of ``source`` in ``storage`` dated ``created_at`` (manifest rewritten and resealed)."""
    sid = new_id(created_at, "c")
    m = mf.read(source)
    m.update(id=sid, label="c", created_at=created_at.isoformat())
    shared = {f["path"]: pool.blob_name(f["sha256"]) for f in mf.all_files(m) if f.get("shared")}
    for rel, data in _contents(source).items():
        if rel in shared:
            with contextlib.suppress(FileExistsError):  # the clones share it
                storage.write(shared[rel], data)
        elif rel != mf.MANIFEST:
            storage.write(f"{sid}/{rel}", data)
    return mf.write(SnapshotLocation(storage, sid), m)


def test_pin_and_prune_on_s3(local_snapshot, s3_bucket, s3_client):
    url = f"s3://{s3_bucket}/repo"
    storage = open_storage(url)
    now = datetime(2025, 11, 26, 12, 0, tzinfo=UTC)
    ids = [_clone(storage, local_snapshot, now - timedelta(days=d)).id for d in (0, 1, 2)]
    assert set_pin(f"{url}/{ids[2]}")
    result = prune(url, Policy(keep_last=1), now=now)
    assert result.removed == [ids[1]] and set(result.kept) == {ids[0], ids[2]}
    snaps = {s.id: s for s in list_snapshots(url)[0]}
    assert set(snaps) == {ids[0], ids[2]} and snaps[ids[2]].pinned and not snaps[ids[0]].pinned
    assert all(verify(s.location).ok for s in snaps.values())
    assert not [k for k in _keys(s3_client, s3_bucket) if k.startswith(f"repo/{ids[1]}") or "/.trash-" in k]
    assert not set_pin(f"{url}/{ids[2]}", False) and not list_snapshots(url)[0][-1].pinned


# -- multipart, exclusive writes, pickling ----------------------------------------------------


def test_a_large_file_goes_up_in_parts_and_round_trips(s3_bucket, s3_client):
    storage = S3Storage(s3_bucket, "mp", part_size=MIN_PART_SIZE)
    data = os.urandom(12 * MiB + 123)
    with storage.create("big") as f:
        for i in range(0, len(data), MiB):
            f.write(data[i : i + MiB])
            assert len(f._buf) <= MIN_PART_SIZE and len(f._pending) <= PARTS_IN_FLIGHT  # memory stays flat
    entry = storage.stat("big")
    assert entry.size == len(data) and str(entry.version[0]).strip('"').endswith("-3")  # three parts
    with storage.open("big") as f:
        assert f.read(10) == data[:10]  # streamed: a reader may stop early
    with storage.open("big") as f:
        assert b"".join(iter(lambda: f.read(MiB), b"")) == data
    with storage.local_path("big") as path:
        assert path.read_bytes() == data
    storage.rename("big", "moved")
    with storage.open("moved") as f:
        assert f.read() == data
    assert _keys(s3_client, s3_bucket) == ["mp/moved"]

    with pytest.raises(RuntimeError), storage.create("half") as f:
        f.write(data)  # two parts uploaded already
        raise RuntimeError("interrupted")
    with pytest.raises(FileNotFoundError):
        storage.stat("half")
    assert _no_uploads_left(s3_client, s3_bucket)


@pytest.mark.parametrize("size", [10, 7 * MiB], ids=["put", "multipart"])
def test_two_writers_racing_for_one_name_one_wins(s3_bucket, s3_client, size):
    storage = S3Storage(s3_bucket, "race", part_size=MIN_PART_SIZE)
    first, second = storage.create("x"), storage.create("x")  # both saw the name free
    first.write(b"1" * size)
    second.write(b"2" * size)
    first.close()
    with pytest.raises(FileExistsError):
        second.close()  # the conditional write (If-None-Match: *) refuses it
    with storage.open("x") as f:
        assert f.read() == b"1" * size
    late = storage.create("x")  # no request before the first byte: a taken name is refused at close
    late.write(b"3" * size)
    with pytest.raises(FileExistsError):
        late.close()
    with storage.open("x") as f:
        assert f.read() == b"1" * size
    assert _no_uploads_left(s3_client, s3_bucket)


def test_the_lock_on_s3_refuses_a_second_holder_even_in_a_race(s3_bucket, monkeypatch):
    storage = S3Storage(s3_bucket, "repo")
    holder = DirLock(storage, "backup")
    holder.acquire()
    with pytest.raises(LockError, match="locked by pid"):
        DirLock(storage, "prune").acquire()
    # A race: the second taker saw no lock, and neither did its create's HEAD; the
    # conditional write decides, and the winner's lock is left alone.
    real_read, calls = lockmod.read_lock, []

    def read_lock_missing_it_once(repository):
        calls.append(repository)
        return None if len(calls) == 1 else real_read(repository)

    monkeypatch.setattr(lockmod, "read_lock", read_lock_missing_it_once)
    monkeypatch.setattr(S3Storage, "_head", lambda self, name: None)
    with pytest.raises(LockError, match="just locked by pid"):
        DirLock(storage, "prune").acquire()
    monkeypatch.undo()
    assert lockmod.read_lock(storage) == holder.info
    assert holder.release()


def test_the_storage_pickles_without_its_client(s3_bucket):
    storage = S3Storage(s3_bucket, "p")
    storage.write("f", b"x")
    clone = pickle.loads(pickle.dumps(storage))
    assert clone == storage and hash(clone) == hash(storage) and clone._s3 is None
    with clone.open("f") as f:
        assert f.read() == b"x"


def test_a_backup_worker_process_makes_one_s3_client_for_all_its_tasks(s3_bucket):
    # Each task reaches a worker process with the snapshot's location pickled again; making
    # a botocore client per task cost ~0.2 CPU-s each, a third of an S3 backup's overhead.
    from backupkit.capture import readers

    def task_target(prefix: str) -> SnapshotLocation:
        return pickle.loads(pickle.dumps(SnapshotLocation(S3Storage(s3_bucket, prefix), "snap")))

    first = readers._reused(task_target("repo"))
    first.storage.write("snap/a", b"a")  # the client is made, and used
    client = first.storage._s3
    again = readers._reused(task_target("repo"))
    assert again.storage is first.storage and again.storage._s3 is client
    assert again.storage.read("snap/a", 10) == b"a"
    other = readers._reused(task_target("other"))  # another snapshot: its own storage
    assert other.storage is not first.storage and other.storage.prefix == "other"
    # Its own client, made from the service models the process has already parsed.
    assert other.storage._client() is not client and other.storage._client()._loader is client._loader


# -- interrupted publish and delete ----------------------------------------------------------------


def test_an_interrupted_publish_is_never_a_snapshot_and_prune_removes_it(local_snapshot, s3_bucket, monkeypatch):
    url = f"s3://{s3_bucket}/repo"
    storage = open_storage(url)
    kept = copy_snapshot(local_snapshot, url)
    staging, new_id = ".tmp-20990101T000000.000Z-abcd1234", "20990101T000000.000Z"
    for rel, data in _contents(local_snapshot).items():
        storage.write(f"{staging}/{rel}", data)

    real_copy = S3Storage._copy

    def crash_at_the_manifest(self, src, dst, size):
        if src.endswith("/manifest.json"):
            raise OSError("simulated crash")  # every data file is copied by now
        real_copy(self, src, dst, size)

    monkeypatch.setattr(S3Storage, "_copy", crash_at_the_manifest)
    with pytest.raises(OSError, match="simulated crash"):
        storage.rename(staging, new_id)
    monkeypatch.undo()
    copied = {e.basename for e in storage.list(new_id)}
    assert "data" in copied and "manifest.json" not in copied
    assert "manifest.json" in {e.basename for e in storage.list(staging)}  # the staging copy is whole

    snaps, unfinished = list_snapshots(url)
    assert [s.id for s in snaps] == [kept.id]
    assert {u.name: u.kind for u in unfinished} == {staging: "tmp", new_id: "incomplete"}
    assert resolve(url, "latest") == kept

    now = datetime.now(UTC)
    assert prune(url, Policy(keep_last=5), now=now).stale == []  # fresh: perhaps still running
    result = prune(url, Policy(keep_last=5), now=now, stale_after_hours=0)
    assert sorted(result.stale) == sorted([staging, new_id]) and result.kept == [kept.id]
    assert [e.name for e in storage.list()] == [pool.POOL, kept.id]
    assert verify(kept, deep=True).ok


def test_an_interrupted_delete_leaves_no_snapshot_and_prune_finishes_it(local_snapshot, s3_bucket, monkeypatch):
    url = f"s3://{s3_bucket}/repo"
    storage = open_storage(url)
    doomed = copy_snapshot(local_snapshot, url)
    real_delete = S3Storage._delete

    def crash_after_the_manifest(self, names):
        real_delete(self, names[:1])  # the manifest goes first
        raise OSError("simulated crash")

    monkeypatch.setattr(S3Storage, "_delete", crash_after_the_manifest)
    with pytest.raises(OSError, match="simulated crash"):
        storage.rename(doomed.id, ".trash-x")  # what prune's trash() does
    monkeypatch.undo()
    snaps, unfinished = list_snapshots(url)
    assert snaps == [] and {u.name: u.kind for u in unfinished} == {".trash-x": "trash", doomed.id: "incomplete"}
    result = prune(url, Policy(keep_last=5), now=datetime.now(UTC), stale_after_hours=0)
    assert sorted(result.stale) == sorted([".trash-x", doomed.id])
    assert storage.list() == []


# -- errors -------------------------------------------------------------------------------------------


def _one_clean_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc)) + repr(exc) + str(getattr(exc, "hint", ""))
    assert SECRET not in text and ACCESS_KEY not in text
    assert "\n" not in str(exc)
    return str(exc)


def test_a_missing_bucket_or_endpoint_is_one_line_without_secrets(make_db, s3_server, monkeypatch):
    dsn = make_db("s3e")
    with pytest.raises(StorageError) as caught:
        backupkit.backup(dsn, "s3://no-such-bucket-here/repo", progress=False)
    assert "bucket no-such-bucket-here does not exist" in _one_clean_line(caught.value)
    with pytest.raises(SnapshotError) as caught:
        list_snapshots("s3://no-such-bucket-here/repo")
    assert "does not exist" in _one_clean_line(caught.value)
    assert "AWS_ENDPOINT_URL" in caught.value.hint and "permissions" not in caught.value.hint  # not a folder's

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError) as caught:
        backupkit.backup(dsn, "s3://bucket/repo", progress=False)
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{closed}" in _one_clean_line(caught.value)
