"""The storage interface: one contract for the local, the in-memory and the S3 storage (a
real S3-compatible server, tests/s3server.py), and the repository's list, verify, pin,
prune and lock running on the in-memory one.

The in-memory storage holds real snapshots, copied there from a real backup of a
real PostgreSQL database; only the place the bytes live differs.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from helpers import load_small

import backupkit
from backupkit.errors import LockError, SnapshotDamaged
from backupkit.retention.policy import Policy
from backupkit.retention.prune import prune
from backupkit.snapshot import manifest as mf
from backupkit.snapshot.datafile import check_files, iter_blocks
from backupkit.snapshot.verify import verify
from backupkit.storage import pool
from backupkit.storage.base import NotAPlainFile, Storage
from backupkit.storage.local import LocalStorage
from backupkit.storage.location import SnapshotLocation, locate, open_storage
from backupkit.storage.lock import DirLock
from backupkit.storage.memory import MemoryStorage
from backupkit.storage.repository import copy_snapshot, list_snapshots, new_id, resolve, set_pin
from backupkit.storage.s3 import S3Storage

# -- the contract ---------------------------------------------------------------------------


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "s3":
        return S3Storage(request.getfixturevalue("s3_bucket"), "repo")
    return LocalStorage(tmp_path / "repo", create=True) if request.param == "local" else MemoryStorage()


def test_created_files_read_back_and_are_listed(storage):
    storage.write("a/b/one", b"1" * 10)
    with storage.create("a/two") as f:
        f.write(b"22")
    with storage.open("a/b/one") as f:
        assert f.read() == b"1" * 10
    assert [(e.name, e.kind) for e in storage.list()] == [("a", "dir")]
    assert [(e.name, e.kind) for e in storage.list("a")] == [("a/b", "dir"), ("a/two", "file")]
    assert [e.name for e in storage.walk("a")] == ["a/b", "a/b/one", "a/two"]
    assert storage.stat("a/two").size == 2 and storage.stat("a").kind == "dir"
    with storage.local_path("a/two") as path:
        assert path.read_bytes() == b"22"


def test_writes_are_write_once(storage):
    storage.write("x", b"first")
    with pytest.raises(FileExistsError):
        storage.write("x", b"second")
    with storage.open("x") as f:
        assert f.read() == b"first"


def test_a_write_that_fails_leaves_nothing(storage):
    with pytest.raises(RuntimeError), storage.create("half") as f:
        f.write(b"some")
        raise RuntimeError("interrupted")
    with pytest.raises(FileNotFoundError):
        storage.stat("half")
    storage.write("half", b"whole")  # the name is free again


def test_missing_names_and_folders(storage):
    storage.write("d/f", b"")
    with pytest.raises(FileNotFoundError):
        storage.open("nope")
    with pytest.raises(FileNotFoundError):
        storage.list("nope")
    with pytest.raises(NotAPlainFile):
        storage.open("d")


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", "./a", "a\\b", "a\0b"])
def test_names_outside_the_storage_are_refused(storage, name):
    with pytest.raises(ValueError):
        storage.open(name)
    with pytest.raises(ValueError):
        storage.create(name)


def test_rename_moves_a_prefix_and_never_overwrites(storage):
    storage.write(".tmp-1/manifest.json", b"{}")
    storage.write(".tmp-1/data/t", b"rows")
    storage.write("taken/x", b"")
    with pytest.raises(FileExistsError):
        storage.rename(".tmp-1", "taken")
    storage.rename(".tmp-1", "snap")
    assert [e.name for e in storage.walk("snap")] == ["snap/data", "snap/data/t", "snap/manifest.json"]
    with pytest.raises(FileNotFoundError):
        storage.list(".tmp-1")


def test_remove_takes_a_prefix_or_a_file_and_ignores_what_is_gone(storage):
    storage.write("s/a", b"")
    storage.write("s/b/c", b"")
    storage.write("keep", b"")
    storage.remove("s/a")
    storage.remove("s")
    storage.remove("s")
    assert [e.name for e in storage.list()] == ["keep"]


def test_local_storage_refuses_links_and_writes_privately(tmp_path):
    storage = LocalStorage(tmp_path / "repo", create=True)
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    storage.write("s/data/f", b"ok")
    (storage.root / "s" / "link").symlink_to(outside)
    (storage.root / "s" / "dirlink").symlink_to(storage.root / "s" / "data", target_is_directory=True)
    with pytest.raises(NotAPlainFile, match="symbolic link"):
        storage.open("s/link")
    with pytest.raises(NotAPlainFile, match="symbolic link"):
        storage.open("s/dirlink/f")
    assert {e.name: e.kind for e in storage.list("s")} == {"s/data": "dir", "s/dirlink": "link", "s/link": "link"}
    storage.remove("s/dirlink")
    assert (storage.root / "s" / "data" / "f").exists() and outside.read_bytes() == b"secret"
    assert stat.S_IMODE(os.stat(storage.root / "s" / "data" / "f").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(storage.root / "s" / "data").st_mode) == 0o700


def test_repository_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_storage(f"file://{tmp_path}") == LocalStorage(tmp_path)
    with pytest.raises(backupkit.ConfigError, match="gs:// repositories are not supported"):
        open_storage("gs://bucket/prefix")
    assert not (tmp_path / "gs:").exists()
    assert open_storage("s3://bucket/some/prefix/") == S3Storage("bucket", "some/prefix")
    assert open_storage("s3://bucket").where("x/y") == "s3://bucket/x/y"
    loc = locate("s3://bucket/repo/20261204T000000.000Z")
    assert (loc.storage, loc.id, loc.where("data")) == (
        S3Storage("bucket", "repo"),
        loc.id,
        f"s3://bucket/repo/{loc.id}/data",
    )
    for bad in ("s3://bucket/a/../b", "s3:///prefix", "s3://key:secret@bucket/x"):
        with pytest.raises(backupkit.ConfigError) as caught:
            open_storage(bad)
        assert "secret" not in str(caught.value)
    with pytest.raises(backupkit.ConfigError, match="names a bucket, not a snapshot"):
        locate("s3://bucket")
    assert not list(tmp_path.iterdir())
    loc = locate(tmp_path / "snap")
    assert (loc.storage, loc.id, loc.key("data/x")) == (LocalStorage(tmp_path), "snap", "snap/data/x")
    assert os.fspath(loc) == str(tmp_path / "snap")
    with pytest.raises(backupkit.StorageError):
        SnapshotLocation(MemoryStorage(), "snap").path  # noqa: B018 - the property raises


# -- the repository on the in-memory storage ----------------------------------------------------


@pytest.fixture(scope="module")
def real_snapshot(pg_server, tmp_path_factory):
    """One real backup of the small database, in a local folder."""
    dsn = pg_server.createdb("storage")
    try:
        load_small(dsn)
        return backupkit.backup(dsn, tmp_path_factory.mktemp("local"), label="src", progress=False).path
    finally:
        pg_server.dropdb(dsn)


def _clone_into(memory: MemoryStorage, source: SnapshotLocation, created_at: datetime, *, own: bool = False) -> str:
    """A copy of ``source`` in ``memory`` dated ``created_at`` (manifest rewritten and resealed).

    Shared data files go into ``memory``'s pool, as a backup puts them; with ``own`` into the
    snapshot's folder instead (its manifest then says none is shared), so damage stays its own."""
    sid = new_id(created_at, "m")
    m = mf.read(source)
    m.update(id=sid, label="m", created_at=created_at.isoformat())
    for entry in source.storage.walk(source.id):
        rel = entry.name[len(source.id) + 1 :]
        if entry.kind == "file" and rel != mf.MANIFEST:
            with source.storage.open(entry.name) as f:
                memory.write(f"{sid}/{rel}", f.read())
    for f in mf.all_files(m):
        if not f.get("shared"):
            continue
        data = source.storage.read(source.stored(f["path"]), f["bytes"])
        if own:
            del f["shared"]
            memory.write(f"{sid}/{f['path']}", data)
        elif pool.blob_name(f["sha256"]) not in memory.files:
            memory.write(pool.blob_name(f["sha256"]), data)
    mf.write(SnapshotLocation(memory, sid), m)
    return sid


def test_copy_into_memory_then_list_verify_and_read(real_snapshot):
    memory = MemoryStorage()
    loc = copy_snapshot(real_snapshot, memory)
    assert verify(loc, deep=True).ok
    (snap,), unfinished = list_snapshots(memory)
    local = list_snapshots(real_snapshot.parent)[0][0]
    assert (snap.id, snap.rows, snap.tables, snap.bytes) == (local.id, local.rows, local.tables, local.bytes)
    assert unfinished == [] and not any(k.startswith(".tmp-") for k in memory.files)
    assert resolve(memory, "latest") == loc
    table = mf.read(loc)["tables"][0]
    check_files(loc, table["files"])
    text = b"".join(b for f in table["files"] for b in iter_blocks(loc, f["path"], f["sha256"]))
    assert text.count(b"\n") == table["rows"]
    with pytest.raises(FileExistsError):
        copy_snapshot(real_snapshot, memory)


def test_verify_on_memory_finds_every_kind_of_damage(real_snapshot):
    memory = MemoryStorage()
    loc = copy_snapshot(real_snapshot, memory)
    m = mf.read(loc)
    files = [f["path"] for t in m["tables"] for f in t["files"]]
    flipped = bytearray(memory.files[loc.stored(files[0])])
    flipped[len(flipped) // 2] ^= 0xFF
    memory.files[loc.stored(files[0])] = bytes(flipped)
    del memory.files[loc.stored(files[-1])]
    memory.files[loc.key("data/stray")] = b"?"
    problems = verify(loc).problems
    assert f"{files[0]}: checksum mismatch (the file's content changed)" in problems
    assert f"missing file {files[-1]}" in problems
    assert "unexpected file data/stray (not in the manifest)" in problems
    with pytest.raises(SnapshotDamaged):
        check_files(loc, m["tables"][0]["files"])


def test_pin_and_prune_on_memory(real_snapshot):
    memory = MemoryStorage()
    source = locate(real_snapshot)
    now = datetime(2025, 11, 26, 12, 0, tzinfo=UTC)
    ids = [_clone_into(memory, source, now - timedelta(days=d)) for d in (0, 1, 2, 3)]
    set_pin(SnapshotLocation(memory, ids[3]), True)
    memory.write(".tmp-stale-0000/manifest.json", b"{}")
    memory.mtimes[".tmp-stale-0000/manifest.json"] -= 48 * 3600
    result = prune(memory, Policy(keep_last=1), now=now)
    assert result.removed == [ids[1], ids[2]] and set(result.kept) == {ids[0], ids[3]}
    assert result.stale == [".tmp-stale-0000"]
    snaps = {s.id: s for s in list_snapshots(memory)[0]}
    assert set(snaps) == {ids[0], ids[3]} and snaps[ids[3]].pinned
    assert not [k for k in memory.files if k.startswith((".trash-", ".tmp-"))]
    assert all(verify(s.location).ok for s in snaps.values())


def test_a_damaged_newest_snapshot_is_not_what_prune_keeps_alone(real_snapshot):
    memory = MemoryStorage()
    source = locate(real_snapshot)
    now = datetime(2025, 11, 26, 12, 0, tzinfo=UTC)
    newest, older = (_clone_into(memory, source, now - timedelta(days=d), own=d == 0) for d in (0, 1))
    name = next(k for k in memory.files if k.startswith(newest + "/data/"))
    memory.files[name] = memory.files[name][:-1]
    result = prune(memory, Policy(keep_last=1), now=now)
    assert set(result.kept) == {newest, older} and result.removed == []


def test_the_lock_works_on_memory():
    memory = MemoryStorage()
    with DirLock(memory, "backup"), pytest.raises(LockError, match="locked by pid"):
        DirLock(memory, "prune").acquire()
    with DirLock(memory, "prune") as lock:
        assert lock.took_over is None
    assert ".lock" not in memory.files


# -- storage errors cross process boundaries ------------------------------------------------------


def _fail_in_worker(kind: str) -> None:
    from backupkit.storage.s3io import S3Error

    if kind == "s3":
        raise S3Error("access denied (AccessDenied)", "s3://bucket/prefix/x.copy.zst")
    raise NotAPlainFile("t/x.copy.zst", "a symbolic link")


@pytest.mark.parametrize("kind", ["s3", "plain"])
def test_a_storage_error_in_a_worker_process_reaches_the_parent_as_itself(kind):
    """A backup's worker processes send their errors back pickled: an S3 refusal must arrive as
    that refusal (exit 8, its message), not as "a backup worker process died"."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from backupkit.storage.s3io import S3Error

    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=fork) as pool, pytest.raises(OSError) as err:
        pool.submit(_fail_in_worker, kind).result()

    if kind == "s3":
        assert type(err.value) is S3Error
        assert str(err.value) == "s3://bucket/prefix/x.copy.zst: access denied (AccessDenied)"
    else:
        assert type(err.value) is NotAPlainFile and (err.value.name, err.value.what) == (
            "t/x.copy.zst",
            "a symbolic link",
        )
        assert str(err.value).count("snapshot files must be plain files") == 1
