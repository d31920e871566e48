"""What the command prints: -v logs each step wherever it is given; colour only on a terminal."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

import pytest
from helpers import load_small, run_cli

from backupkit.terminal import paint


@pytest.fixture
def small_db(make_db):
    dsn = make_db("small")
    load_small(dsn)
    return dsn


def test_verbose_logs_each_step_before_or_after_the_command(small_db, tmp_path):
    for args in (("-v", "backup"), ("backup", "-v")):
        out = run_cli(*args, "--dsn", small_db, "--to", tmp_path / args[0].strip("-"))
        assert out.returncode == 0, out.stderr
        info = [line for line in out.stderr.splitlines() if line.startswith("info: ")]
        assert any("snapshot" in line and "exported" in line for line in info), out.stderr
        assert any(line.startswith("info: copying ") for line in info), out.stderr
        assert any("publishing as" in line for line in info), out.stderr
    quiet = run_cli("backup", "--dsn", small_db, "--to", tmp_path / "quiet")
    assert "info:" not in quiet.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_words_are_coloured_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert paint("FAIL", stream=_Terminal()) == "\033[1;31mFAIL\033[0m"
    assert paint("OK   ", "ok", stream=_Terminal()) == "\033[32mOK   \033[0m"
    assert paint("public.orders", stream=_Terminal()) == "public.orders"  # not a status word
    assert paint("FAIL", stream=io.StringIO()) == "FAIL"  # piped, redirected
    monkeypatch.setenv("NO_COLOR", "1")
    assert paint("FAIL", stream=_Terminal()) == "FAIL"


def _on_a_terminal(*args: str, env: dict[str, str]) -> str:
    """Run the command with its stdout on a pseudo-terminal, as in an interactive shell."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupkit", *args],
        stdout=follower,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the command has ended and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode()


def test_check_colours_its_status_on_a_terminal_and_not_when_piped(small_db):
    env = {"BACKUPKIT_DSN": small_db, "TERM": "xterm"}
    shown = _on_a_terminal("check", env={**env, "NO_COLOR": ""})
    assert "\033[32mOK   \033[0m connection:" in shown, shown
    assert "\033[" not in _on_a_terminal("check", env={**env, "NO_COLOR": "1"})
    piped = run_cli("check", env=env)
    assert piped.returncode == 0 and "OK    connection:" in piped.stdout and "\033[" not in piped.stdout


def test_output_closed_early_ends_quietly_with_141():
    """`backupkit list | head -1`: the reader closed the pipe, so the rest cannot be printed.
    No "cannot access Broken pipe" with a hint about permissions: exit 141, as SIGPIPE's."""
    read, write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupkit", "demo", "--where"], stdout=write, stderr=subprocess.PIPE, text=True
    )
    os.close(write)
    os.close(read)  # long before the command has started: its first write finds no reader
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 141, stderr
    assert stderr == ""


@pytest.mark.parametrize("value", ["-1", "0", "x"])
def test_sql_max_rows_out_of_range_is_a_usage_error(tmp_path, value):
    out = run_cli("sql", tmp_path, "select 1", "--max-rows", value)
    assert out.returncode == 2 and "is not a number of rows: give 1 or more" in out.stderr
    assert "Traceback" not in out.stderr
