"""Faults of backups into an S3 repository (issue 16), with real processes against the real
S3 server of the tests (moto on 127.0.0.1, tests/s3server.py) and the real boto3 client.

kill -9 in the middle of the upload leaves nothing listed as a snapshot, and the next
prune removes every object of the killed run (its staging prefix and its lock); two
writers racing for one repository never both write: one holds the lock, the other fails
with ``LockError`` (exit 10) naming it.  Copy local → S3 → local is covered by
tests/test_s3.py (byte for byte, verified) and tests/test_copy.py (the command).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest
from helpers import TcpProxy, load_small, run_cli, wait_for

import backupkit
from backupkit.errors import LockError
from backupkit.snapshot import manifest as mf
from backupkit.snapshot.verify import verify
from backupkit.storage import pool
from backupkit.storage.repository import list_snapshots

#: The CLI with worker processes forced on and small chunks (a run of a few hundred files,
#: long enough to be caught in the middle).  argv[1] holds flags: "wait" reads one line of
#: stdin before the run starts (two children then start at the same moment); "hold" makes
#: the run, once every file is uploaded and before it verifies and publishes, print
#: "holding" and read one line of stdin (its lock held and its staging prefix written).
CHILD = r"""
import functools, importlib, os, sys
os.dup2(1, 2)  # the test reads stderr from the stdout pipe
import backupkit.capture.readers
backupkit.capture.readers.PROCESS_THRESHOLD = 0
mod = importlib.import_module("backupkit.capture.job")
mod.backup = functools.partial(mod.backup, chunk_bytes=128 * 1024)
if "hold" in sys.argv[1]:
    real_verify = mod.verify
    def verify(*args, **kwargs):
        print("holding", flush=True)
        sys.stdin.readline()
        return real_verify(*args, **kwargs)
    mod.verify = verify
from backupkit.cli import main
if "wait" in sys.argv[1]:
    sys.stdin.readline()
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def big_db(pg_server):
    """A database whose backup, in 128 kB chunks, uploads a few hundred objects (only read here)."""
    dsn = pg_server.createdb("s3faults")
    try:
        load_small(dsn)
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "CREATE TABLE big (id int PRIMARY KEY, pad text); "
                "INSERT INTO big SELECT i, md5(i::text) || md5((i * 7)::text) "
                "FROM generate_series(1, 400000) i"
            )
        yield dsn
    finally:
        pg_server.dropdb(dsn)


@pytest.fixture(scope="module")
def small_db(pg_server):
    """The small database of the tests (only read here)."""
    dsn = pg_server.createdb("s3small")
    try:
        load_small(dsn)
        yield dsn
    finally:
        pg_server.dropdb(dsn)


def start_backup(spawn, dsn: str, url: str, flags: str = "-"):
    return spawn(CHILD, flags, "backup", "--dsn", dsn, "--to", url, "--jobs", "2", "--quiet")


def tell(child, line: str = "go") -> None:
    child.stdin.write(line + "\n")
    child.stdin.flush()


def keys(client, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def uploaded(client, bucket: str) -> list[str]:
    """Keys of data files a backup has uploaded: under its staging prefix (``repo/.tmp-*/data/``),
    or, small files, straight into the repository's pool (``repo/.shared/``)."""
    return [
        k
        for k in keys(client, bucket)
        if (k.startswith("repo/.tmp-") and "/data/" in k) or k.startswith("repo/.shared/")
    ]


def catch_mid_upload(client, bucket: str, child, files: int = 20) -> None:
    """Wait until the backup has uploaded ``files`` data files."""
    if not wait_for(lambda: len(uploaded(client, bucket)) >= files or child.poll() is not None, 60, every=0.05):
        pytest.fail("no upload seen within 60 s")
    if child.poll() is not None:
        pytest.fail(f"the backup ended before it was caught uploading: {child.communicate()[0]}")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, parent in parents.items() if parent == p} - found
        found |= kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def settled(client, bucket: str) -> list[str]:
    """The bucket's keys once two listings 0.3 s apart agree (a request in flight has landed)."""
    before = keys(client, bucket)
    while True:
        time.sleep(0.3)
        now = keys(client, bucket)
        if now == before:
            return now
        before = now


def test_kill_9_mid_upload_leaves_no_snapshot_and_prune_removes_every_object(big_db, s3_bucket, s3_client, spawn):
    url = f"s3://{s3_bucket}/repo"
    child = start_backup(spawn, big_db, url)
    catch_mid_upload(s3_client, s3_bucket, child)
    tree = descendants(child.pid)
    assert tree  # the worker processes (PROCESS_THRESHOLD = 0)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert wait_for(lambda: not any(alive(p) for p in tree), 10), [p for p in tree if alive(p)]

    left = settled(s3_client, s3_bucket)
    prefixes = {k.split("/")[1] for k in left}
    signs = {p for p in prefixes if p.startswith(".lock.alive-")}
    # The lock and its holder's last sign of life, one staging prefix and the pool's new files.
    assert prefixes <= {".lock", ".shared"} | signs | {p for p in prefixes if p.startswith(".tmp-")}, left
    assert "repo/.lock" in left and any(k.startswith("repo/.shared/") for k in left), left
    assert len(signs) == 1, left
    (staging,) = prefixes - {".lock", ".shared"} - signs
    assert staging.startswith(".tmp-")
    lock = json.loads(s3_client.get_object(Bucket=s3_bucket, Key="repo/.lock")["Body"].read())
    assert lock["pid"] == child.pid and lock["purpose"] == "backup"

    # Nothing is listed as a snapshot: not by the library, not by the command.
    snaps, unfinished = list_snapshots(url)
    assert snaps == [] and [(u.name, u.kind) for u in unfinished] == [(staging, "tmp")]
    out = run_cli("list", url, "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert listed["snapshots"] == [] and [u["kind"] for u in listed["unfinished"]] == ["tmp"]
    assert staging in listed["unfinished"][0]["path"]
    out = run_cli("list", url)
    assert f"incomplete: {staging}" in out.stdout and "not a snapshot" in out.stdout

    # The next prune takes over the dead run's lock and removes its staging prefix.
    out = run_cli("prune", url, "--stale-after-hours", "0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"removed stale temporary folder {staging}" in out.stdout
    assert f"took over a stale lock left by pid {child.pid}" in out.stderr
    assert keys(s3_client, s3_bucket) == []  # no data, no lock: nothing of the killed run
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert list_snapshots(url) == ([], [])


#: A run's writer in the middle of a multipart upload (a chunk file larger than a part), in
#: a repository it locked and under a staging name, as a backup writes them.
MULTIPART_CHILD = r"""
import os, sys
from backupkit.storage.lock import DirLock
from backupkit.storage.s3 import MIN_PART_SIZE, S3Storage
storage = S3Storage(sys.argv[1], "repo", part_size=MIN_PART_SIZE)
DirLock(storage, "backup").acquire()
storage.write(sys.argv[2] + "/schema/pre-data.sql", b"-- schema")
writer = storage.create(sys.argv[2] + "/data/big.1.copy.zst")
writer.write(os.urandom(3 * MIN_PART_SIZE))  # two parts sent, a third one buffered
print("uploading", flush=True)
sys.stdin.read()
"""


def test_kill_9_mid_multipart_upload_leaves_no_upload_after_prune(s3_bucket, s3_client, spawn):
    staging = ".tmp-20990101T000000.000Z-abcd1234"
    child = spawn(MULTIPART_CHILD, s3_bucket, staging)
    assert child.stdout.readline().strip() == "uploading", child.communicate()[0]

    def parts_stored():
        uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
        return uploads and s3_client.list_parts(Bucket=s3_bucket, **_upload(uploads[0])).get("Parts")

    assert wait_for(parts_stored, 10)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert [(u.name, u.kind) for u in list_snapshots(f"s3://{s3_bucket}/repo")[1]] == [(staging, "tmp")]
    out = run_cli("prune", f"s3://{s3_bucket}/repo", "--stale-after-hours", "0")
    assert out.returncode == 0 and f"removed stale temporary folder {staging}" in out.stdout, out.stderr
    assert keys(s3_client, s3_bucket) == []
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")  # its parts are gone too


def _upload(upload: dict) -> dict:
    return {"Key": upload["Key"], "UploadId": upload["UploadId"]}


def test_two_backups_racing_for_one_s3_repository_one_fails_with_the_lock(small_db, s3_bucket, s3_client, spawn):
    url = f"s3://{s3_bucket}/repo"
    racers = [start_backup(spawn, small_db, url, "wait,hold") for _ in range(2)]
    time.sleep(1.5)  # both imported and waiting at the start line
    for child in racers:
        tell(child)
    # The loser stops at the lock; the winner goes on until it holds (every file uploaded).
    assert wait_for(lambda: any(c.poll() is not None for c in racers), 60)
    loser, winner = sorted(racers, key=lambda c: c.poll() is None)
    out = loser.communicate(timeout=10)[0]
    assert loser.returncode == 10, out
    assert out.startswith("error: ") and "Traceback" not in out, out
    assert f"locked by pid {winner.pid} on host" in out, out  # names the holder
    assert winner.stdout.readline().strip() == "holding"
    # Never two writers: one staging prefix, the winner's lock.
    prefixes = {k.split("/")[1] for k in keys(s3_client, s3_bucket)}  # the pool of shared files besides
    alive = {p for p in prefixes if p.startswith(".lock.alive-")}
    assert len(alive) == 1, prefixes  # the winner's sign of life; the loser left none
    prefixes -= alive
    assert len(prefixes - {".shared"}) == 2 and ".lock" in prefixes
    assert all(p.startswith((".lock", ".tmp-", ".shared")) for p in prefixes)
    lock = json.loads(s3_client.get_object(Bucket=s3_bucket, Key="repo/.lock")["Body"].read())
    assert lock["pid"] == winner.pid and lock["purpose"] == "backup"

    tell(winner)
    out = winner.communicate(timeout=60)[0]
    assert winner.returncode == 0, out
    (snap,), unfinished = list_snapshots(url)
    assert unfinished == [] and out.strip().endswith(snap.id)
    assert verify(snap.location, deep=True).ok
    shared = {f"repo/{name}" for name in pool.referenced(mf.read(snap.location))}
    left = set(keys(s3_client, s3_bucket)) - shared
    assert all(k.startswith(f"repo/{snap.id}/") for k in left)  # no lock, no staging left


def test_prune_copy_and_backup_during_a_backup_on_s3_fail_with_the_lock(
    small_db, s3_bucket, s3_client, spawn, tmp_path
):
    url = f"s3://{s3_bucket}/repo"
    local = backupkit.backup(small_db, tmp_path / "local", progress=False)  # to copy in, below
    child = start_backup(spawn, small_db, url, "hold")
    assert child.stdout.readline().strip() == "holding", child.communicate()[0]
    (staging,) = {k.split("/")[1] for k in keys(s3_client, s3_bucket) if k.startswith("repo/.tmp-")}
    before = keys(s3_client, s3_bucket)
    holder = f"locked by pid {child.pid} on host"

    # A prune that would remove any unfinished folder (stale after 0 hours): refused, exit 10.
    out = run_cli("prune", url, "--keep-last", "1", "--stale-after-hours", "0")
    assert out.returncode == 10, out.stdout + out.stderr
    assert out.stderr.startswith("error: ") and holder in out.stderr and "Traceback" not in out.stderr
    # A second backup, by the command and by the library, and a copy into the repository.
    out = run_cli("backup", "--dsn", small_db, "--to", url, "-q")
    assert out.returncode == 10 and holder in out.stderr, out.stdout + out.stderr
    with pytest.raises(LockError, match=holder):
        backupkit.backup(small_db, url, progress=False)
    out = run_cli("copy", tmp_path / "local", url)
    assert out.returncode == 10 and holder in out.stderr, out.stdout + out.stderr
    assert keys(s3_client, s3_bucket) == before  # none of them wrote or removed anything
    signs = {k.split("/")[1] for k in before if k.startswith("repo/.lock.alive-")}  # the holder's
    assert len(signs) == 1 and {k.split("/")[1] for k in before} == {".lock", staging, ".shared", *signs}

    tell(child)
    out = child.communicate(timeout=60)[0]
    assert child.returncode == 0, out
    (snap,), unfinished = list_snapshots(url)
    assert unfinished == [] and snap.id != local.location.id and verify(snap.location, deep=True).ok
    assert "repo/.lock" not in keys(s3_client, s3_bucket)


def test_a_prune_holding_the_lock_makes_a_backup_fail_then_the_backup_goes_ahead(small_db, s3_bucket, monkeypatch):
    """The other order: a prune holds the lock (paused in the middle); a backup fails at once."""
    from datetime import UTC, datetime

    from backupkit.retention import prune as prune_mod
    from backupkit.retention.policy import Policy

    url = f"s3://{s3_bucket}/repo"
    first = backupkit.backup(small_db, url, label="first", progress=False)
    inside, release, failures = threading.Event(), threading.Event(), []
    real_intact = prune_mod._intact_flags

    def paused_intact(snaps, now):
        inside.set()  # the prune holds the lock now
        release.wait(30)
        return real_intact(snaps, now)

    monkeypatch.setattr(prune_mod, "_intact_flags", paused_intact)

    def run_prune():
        try:
            prune_mod.prune(url, Policy(keep_last=5), now=datetime.now(UTC), stale_after_hours=0)
        except Exception as exc:  # reported below
            failures.append(exc)

    pruner = threading.Thread(target=run_prune)
    pruner.start()
    try:
        assert inside.wait(30)
        out = run_cli("backup", "--dsn", small_db, "--to", url, "-q")
        assert out.returncode == 10, out.stdout + out.stderr
        assert f"locked by pid {os.getpid()} on host" in out.stderr and "(prune, started" in out.stderr
    finally:
        release.set()
        pruner.join()
    assert failures == []
    again = run_cli("backup", "--dsn", small_db, "--to", url, "-q")
    assert again.returncode == 0, again.stderr
    second = again.stdout.strip().rsplit("/", 1)[-1]
    assert sorted(s.id for s in list_snapshots(url)[0]) == sorted([first.location.id, second])


class _LoseOneAnswer(TcpProxy):
    """A TCP proxy to an HTTP server that passes everything on, except the answer to the first
    request of ``method`` whose path ends with ``path_end`` (and whose query has ``query_has``): that
    request reaches the server, and the client's connection is closed before the answer reaches the
    client (a lost response).  Real sockets both ways; the client retries as it would on any network."""

    def __init__(self, endpoint: str, method: bytes, path_end: bytes, query_has: bytes = b""):
        self.method, self.path_end, self.query_has = method, path_end, query_has
        self.lost = threading.Event()
        super().__init__(endpoint)

    def serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        losing = threading.Event()

        def requests() -> None:
            with contextlib.suppress(OSError):
                while data := client.recv(1 << 16):
                    method, path, *_ = data.split(b"\r\n", 1)[0].split(b" ") + [b"", b""]
                    where, _, query = path.partition(b"?")
                    wanted = method == self.method and where.endswith(self.path_end) and self.query_has in query
                    if wanted and not self.lost.is_set():
                        losing.set()
                    upstream.sendall(data)

        threading.Thread(target=requests, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := upstream.recv(1 << 16):
                if losing.is_set():
                    if data.startswith(b"HTTP/1.1 100"):  # "100 Continue": the body is still to come
                        interim, _, data = data.partition(b"\r\n\r\n")
                        client.sendall(interim + b"\r\n\r\n")
                        if not data:
                            continue
                    self.lost.set()  # the final answer: the request was carried out
                    break
                client.sendall(data)
        for end in (client, upstream):  # shutdown: the other thread's recv returns, the client sees the close
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


def test_a_lock_whose_answer_was_lost_is_taken_not_refused_as_anothers(s3_server, s3_bucket):
    """The PUT of .lock lands but its answer is lost; the client sends it again and S3 refuses
    it (412: the name is taken, by our own lock).  That lock is ours: refusing it as another
    process's would block every run on the repository until it went stale."""
    from backupkit.storage.lock import DirLock, read_lock
    from backupkit.storage.s3 import S3Storage

    proxy = _LoseOneAnswer(s3_server, b"PUT", b"/.lock")
    try:
        storage = S3Storage(s3_bucket, "repo", endpoint_url=proxy.url)
        with DirLock(storage, "backup"):
            assert proxy.lost.is_set()  # the first answer was indeed lost, and the PUT sent again
            assert read_lock(storage)["pid"] == os.getpid()
        assert read_lock(storage) is None
    finally:
        proxy.close()


def test_a_multipart_file_whose_completion_answer_was_lost_is_kept(s3_server, s3_bucket):
    """CompleteMultipartUpload lands but its answer is lost, and the client sends it again.  The
    file is there, whole, and the writer's close succeeds: S3 may answer the retry itself (as
    this server does) or refuse it (412, or NoSuchUpload), and then the object holding exactly
    this upload (size and multipart ETag) is recognised as the writer's own."""
    from backupkit.storage.s3 import MIN_PART_SIZE, S3Storage

    data = os.urandom(2 * MIN_PART_SIZE + 123)
    proxy = _LoseOneAnswer(s3_server, b"POST", b"/big", query_has=b"uploadId=")
    try:
        storage = S3Storage(s3_bucket, "mp", endpoint_url=proxy.url, part_size=MIN_PART_SIZE)
        with storage.create("big") as f:
            f.write(data)
        assert proxy.lost.is_set()
        with storage.open("big") as f:
            assert f.read() == data
    finally:
        proxy.close()


def test_a_file_whose_answer_was_lost_is_kept_and_the_backup_goes_on(make_db, s3_server, s3_bucket, monkeypatch):
    """The PUT of the schema archive lands but its answer is lost; sent again, it is refused
    (412: the name holds it already).  The object holds exactly what was sent, so it is this
    PUT's: the backup goes on and the snapshot verifies, where a network blip failed the backup.
    (Data files go to the pool, whose writer already takes a name holding the same file.)"""
    dsn = make_db("lost")
    load_small(dsn)
    proxy = _LoseOneAnswer(s3_server, b"PUT", b"/schema/schema.dump")
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        res = backupkit.backup(dsn, f"s3://{s3_bucket}/repo", jobs=1, progress=False)
        assert proxy.lost.is_set()
        assert verify(res.location).ok
    finally:
        proxy.close()
