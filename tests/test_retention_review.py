"""Review of retention and repository concurrency: prune, pin, the lock, ``copy``, as an
operator runs them, on local folders and on S3 (moto, tests/s3server.py).

One real backup series of the small database is taken per module; tests build their
repositories from it with the real commands or with whole-snapshot copies.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import TcpProxy, load_small, run_cli, snapshot_dirs

import backupkit
from backupkit.snapshot import manifest as mf
from backupkit.storage import pool
from backupkit.storage.repository import copy_snapshot, list_snapshots


@pytest.fixture(scope="module")
def repo(pg_server, tmp_path_factory) -> tuple[Path, list[str]]:
    """Two real snapshots of the small database in a local repository (ids oldest first)."""
    dsn = pg_server.createdb("retreview")
    try:
        load_small(dsn)
        root = tmp_path_factory.mktemp("repo")
        ids = [backupkit.backup(dsn, root, label=f"n{i}", progress=False).id for i in range(2)]
    finally:
        pg_server.dropdb(dsn)
    return root, ids


def _reseal(snapshot: Path, **changes) -> None:
    """Rewrite a snapshot's manifest with ``changes``, sealed as a backup seals it."""
    m = mf.read(snapshot)
    m.update(changes)
    (snapshot / mf.MANIFEST).unlink()
    fd = os.open(snapshot / mf.MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(mf.seal(m), indent=2, ensure_ascii=False))


# -- copy ------------------------------------------------------------------------------------------


def test_copy_rerun_after_a_publish_interrupted_on_s3_finishes_the_job(repo, s3_bucket, s3_client):
    """On S3 a publish is a copy of every object, the manifest last: a copy killed there leaves
    the snapshot's prefix without a manifest (``incomplete``).  Running the copy again must
    finish it, not fail on "already exists" until a prune a day later."""
    root, ids = repo
    url = f"s3://{s3_bucket}/offsite"
    copy_snapshot(root / ids[0], url)
    s3_client.delete_object(Bucket=s3_bucket, Key=f"offsite/{ids[0]}/{mf.MANIFEST}")  # the state a kill leaves
    assert [(u.name, u.kind) for u in list_snapshots(url)[1]] == [(ids[0], "incomplete")]

    out = run_cli("copy", root, url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"copied {ids[0]}" in out.stdout and f"copied {ids[1]}" in out.stdout
    assert "Traceback" not in out.stderr and "already exists" not in out.stderr
    snaps, unfinished = list_snapshots(url)
    assert sorted(s.id for s in snaps) == sorted(ids) and unfinished == []
    for sid in ids:
        check = run_cli("verify", f"{url}/{sid}", "--deep")
        assert check.returncode == 0, check.stdout + check.stderr


def test_copy_never_calls_a_different_snapshot_of_the_same_id_already_there(repo, tmp_path):
    """The target holds another snapshot under the id being copied (another database's backup, a
    restored folder, a damaged manifest): copy must say so and fail (exit 7), not report it
    "already there" while the source's snapshot never left the machine."""
    root, ids = repo
    target = tmp_path / "offsite"
    target.mkdir(mode=0o700)
    shutil.copytree(root / ".shared", target / ".shared")
    shutil.copytree(root / ids[1], target / ids[0])  # other contents under ids[0]
    _reseal(target / ids[0], id=ids[0])
    assert backupkit.verify(target / ids[0]).ok  # a good snapshot, just not the source's one
    before = (target / ids[0] / mf.MANIFEST).read_bytes()

    out = run_cli("copy", root, target, "--json")
    assert out.returncode == 7, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["copied"] == [ids[1]] and data["present"] == []
    assert "different snapshot of this id" in data["unreadable"][ids[0]]
    assert (target / ids[0] / mf.MANIFEST).read_bytes() == before  # never overwritten

    text = run_cli("copy", root, target)
    assert text.returncode == 7
    assert f"{ids[0]}: already in" not in text.stdout
    assert f"error: {ids[0]} was not copied: the target already holds a different snapshot" in text.stderr

    (target / ids[0] / mf.MANIFEST).write_text("{")  # a damaged copy of that id
    again = run_cli("copy", root, target, "--json")
    assert again.returncode == 7, again.stdout + again.stderr
    assert "cannot be read" in json.loads(again.stdout)["unreadable"][ids[0]]
    assert json.loads(again.stdout)["present"] == [ids[1]]  # the identical one is still "there"
    assert [p.name for p in snapshot_dirs(target)] == sorted(ids)


def test_copy_heals_a_rotten_shared_file_in_the_target_instead_of_blaming_the_source(repo, tmp_path):
    """A file of the target's pool no longer holds its bytes (bit rot): the next copy of a snapshot
    using it must not report the intact source as damaged (exit 7) night after night; it puts the
    good bytes back, and the target's older snapshot using that file verifies again."""
    root, ids = repo
    target = tmp_path / "offsite"
    copy_snapshot(root / ids[0], target)
    both = set(pool.referenced(mf.read(root / ids[0]))) & set(pool.referenced(mf.read(root / ids[1])))
    rotten = target / sorted(both)[0]
    data = bytearray(rotten.read_bytes())
    data[len(data) // 2] ^= 0x01
    rotten.chmod(0o600)
    rotten.write_bytes(bytes(data))
    assert run_cli("verify", target / ids[0]).returncode == 6  # what the operator sees first

    out = run_cli("copy", root, target, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == {"copied": [ids[1]], "present": [ids[0]], "unreadable": {}}
    for sid in ids:
        check = run_cli("verify", target / sid, "--deep")
        assert check.returncode == 0, check.stdout + check.stderr


class _HoldStagedWrites(TcpProxy):
    """A TCP proxy to the S3 server that holds the first upload into a ``.tmp-`` folder (a
    copy half-way) until ``release``; ``held`` is set once it is being held.  Real sockets."""

    def __init__(self, endpoint: str):
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
                if line.startswith(b"PUT ") and b".tmp-" in line and not self.held.is_set():
                    self.held.set()
                    self.go.wait(60)
                upstream.sendall(data)
        upstream.close()

    def release(self) -> None:
        self.go.set()
        self.close()


def test_sigterm_stops_a_copy_like_ctrl_c_leaving_no_lock_and_no_half_copy(repo, s3_bucket, s3_client, s3_server):
    """systemd's stop, `timeout` or a cancelled CI job send SIGTERM: it killed `copy` (and
    `prune`) outright, leaving the repository's lock, which another host waits out for
    hours, and a half-written .tmp- folder.  Now it ends them as Ctrl-C does."""
    root, ids = repo
    url = f"s3://{s3_bucket}/offsite"
    proxy = _HoldStagedWrites(s3_server)
    env = {k: v for k, v in os.environ.items() if k not in ("BACKUPKIT_DSN", "DATABASE_URL", "SUPABASE_DB_URL")}
    env["AWS_ENDPOINT_URL"] = proxy.url
    copy = subprocess.Popen(
        [sys.executable, "-m", "backupkit", "copy", str(root), url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.held.wait(120), "the copy never uploaded a file"
        copy.send_signal(signal.SIGTERM)
        _, err = copy.communicate(timeout=120)
    finally:
        proxy.release()
        if copy.poll() is None:
            copy.kill()
            copy.wait()

    assert copy.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    left = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not [k for k in left if "/.lock" in k or ".tmp-" in k], left
    assert list_snapshots(url) == ([], [])
    assert run_cli("copy", root, url).returncode == 0  # no lock to wait out
    assert sorted(s.id for s in list_snapshots(url)[0]) == sorted(ids)
