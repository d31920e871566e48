"""The COPY block loop: exact bytes, bounded blocks, one zstd frame per block."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import zstandard

from backupkit.pg import copyio
from backupkit.snapshot.datafile import BLOCK, iter_file_blocks
from backupkit.storage.local import LocalStorage

# Small rows with a large one now and then, a run of ~70 KB rows and a run of
# 40 half-megabyte rows: the batch loop must keep every row, in order, and end a
# batch early at a large row (else 40 such rows would make one 20 MB block).
_TABLE = """
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, CASE WHEN g BETWEEN 20000 AND 20039 THEN repeat(md5(g::text), 16400)
                             WHEN g % 997 = 0 OR g BETWEEN 5000 AND 5100 THEN repeat(md5(g::text), 2200 + g % 7)
                             ELSE repeat('s', g % 50) END
FROM generate_series(1, 40000) g;
"""


def _copy_text(conn: psycopg.Connection) -> bytes:
    with conn.cursor() as cur, cur.copy("COPY t (id, v) TO STDOUT (FORMAT text)") as copy:
        return b"".join(bytes(b) for b in copy)


def test_blocks_hold_every_row_and_stay_bounded(make_db):
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_TABLE)
        expected = _copy_text(conn)
        rows: list[int] = []
        got = list(copyio._receive(conn, psycopg.sql.SQL("COPY t (id, v) TO STDOUT"), rows))
    blocks = [bytes(b) for b, _, _ in got]
    assert b"".join(blocks) == expected
    assert rows == [40000]
    assert [n for _, n, _ in got] == [b.count(b"\n") for b in blocks]  # each block's own row count
    assert [ends for _, _, ends in got] == [False] * (len(got) - 1) + [True]
    assert len(blocks) > 3
    largest_row = max(len(line) + 1 for line in expected.split(b"\n"))
    assert largest_row > copyio._LARGE_ROW  # the table really has rows that end a batch early
    bound = BLOCK + (copyio._BATCH_ROWS - 1) * copyio._LARGE_ROW + largest_row
    assert max(len(b) for b in blocks) < bound


def test_data_file_is_frames_that_read_back_exactly(make_db, tmp_path):
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_TABLE)
        expected = _copy_text(conn)
        [res] = copyio.copy_out(
            conn, psycopg.sql.SQL("COPY t (id, v) TO STDOUT"), LocalStorage(tmp_path), "t.copy.zst", "t.copy.zst"
        )
    raw = (tmp_path / "t.copy.zst").read_bytes()
    assert res.rows == 40000 and res.bytes == len(raw) and res.text_bytes == len(expected)
    assert res.sha256 == hashlib.sha256(raw).hexdigest()
    assert b"".join(iter_file_blocks(tmp_path / "t.copy.zst", res.sha256)) == expected
    # Several frames (one per block), which a plain zstd decoder reads as one stream.
    assert raw.count(b"\x28\xb5\x2f\xfd") > 1
    assert zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(raw) == expected


def test_empty_table_is_one_empty_frame(make_db, tmp_path):
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int, v text)")
        [res] = copyio.copy_out(
            conn, psycopg.sql.SQL("COPY t (id, v) TO STDOUT"), LocalStorage(tmp_path), "t.copy.zst", "t.copy.zst"
        )
    assert res.rows == 0 and res.text_bytes == 0
    assert b"".join(iter_file_blocks(tmp_path / "t.copy.zst", res.sha256)) == b""


_SMALL_CUTS = copyio.FileCuts(min_bytes=256 << 10, mean_gap_bytes=128 << 10, max_bytes=2 << 20)


def _cut(conn: psycopg.Connection, query: str, folder, cuts=_SMALL_CUTS) -> list[copyio.FileResult]:
    folder.mkdir(exist_ok=True)
    return copyio.copy_out(
        conn,
        psycopg.sql.SQL(query),
        LocalStorage(folder),
        "t.0000.copy.zst",
        "data/t.0000.copy.zst",
        cuts=cuts,
    )


def test_a_cut_stream_is_whole_rows_in_order_and_counted(make_db, tmp_path):
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_TABLE)
        expected = _copy_text(conn)
        parts = _cut(conn, "COPY t (id, v) TO STDOUT", tmp_path)
    assert len(parts) > 3
    assert [p.path for p in parts[:3]] == [
        "data/t.0000.copy.zst",
        "data/t.0000.001.copy.zst",
        "data/t.0000.002.copy.zst",
    ]
    texts = [b"".join(iter_file_blocks(tmp_path / p.path.split("/")[1], p.sha256)) for p in parts]
    assert b"".join(texts) == expected
    for p, text in zip(parts, texts, strict=True):
        assert text.endswith(b"\n") and p.rows == text.count(b"\n") and p.text_bytes == len(text)
        h = copyio.text_hasher()
        h.update(text)
        assert p.text_hash == copyio.TEXT_HASH + h.hexdigest()
    assert sum(p.rows for p in parts) == 40000
    # Every file but the last holds at least min_bytes; none more than max_bytes plus a block of rows.
    assert all(p.text_bytes >= _SMALL_CUTS.min_bytes for p in parts[:-1])
    assert max(p.text_bytes for p in parts) < _SMALL_CUTS.max_bytes + BLOCK + 64 * copyio._LARGE_ROW + (600 << 10)


def test_cuts_follow_the_rows_not_the_stream_start(make_db, tmp_path):
    """Rows added at the front of a stream change its first file or two; every later file is
    byte-identical to the stream without them, so a repository stores it once."""
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE w AS SELECT g AS id, repeat(md5(g::text), 1 + g % 5) AS v FROM generate_series(1, 120000) g"
        )
        before = _cut(conn, "COPY (SELECT * FROM w WHERE id > 300 ORDER BY id) TO STDOUT", tmp_path / "a")
        after = _cut(conn, "COPY (SELECT * FROM w ORDER BY id) TO STDOUT", tmp_path / "b")
    assert len(before) >= 8
    old = {p.sha256 for p in before}
    new_files = [p for p in after if p.sha256 not in old]
    assert len(new_files) <= 2 and after[0] in new_files
    assert {p.sha256 for p in after[2:]} <= old


def test_a_stream_ending_at_a_cut_leaves_no_empty_file(make_db, tmp_path):
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE one (v text)")
        conn.execute("INSERT INTO one VALUES (repeat('x', 1 << 20))")
        # Every row past min_bytes ends a file: one row of 1 MiB is a whole file, and the last.
        parts = _cut(conn, "COPY one TO STDOUT", tmp_path, copyio.FileCuts(min_bytes=1, mean_gap_bytes=1, max_bytes=2))
    assert [(p.rows, p.text_bytes) for p in parts] == [(1, (1 << 20) + 1)]


def test_a_file_that_cannot_be_kept_fails_the_copy(make_db, tmp_path, monkeypatch):
    """Files are closed (fsync'd) in the background while the next ones are written; a close
    that fails still fails the COPY, and the stream stops soon after it."""
    dsn = make_db()
    real_fsync, calls = os.fsync, []

    def second_fails(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    conn = psycopg.connect(dsn, autocommit=True)
    try:
        conn.execute(_TABLE)
        monkeypatch.setattr(os, "fsync", second_fails)
        with pytest.raises(OSError, match="No space left on device"):
            _cut(conn, "COPY t (id, v) TO STDOUT", tmp_path)
        monkeypatch.undo()
    finally:
        conn.close()  # mid-COPY: a backup drops the connection of a failed stream
    # The failure stopped the stream: at most the files already being closed beside it, and
    # the one being written when it was seen, came after it (of many more in the table).
    assert 2 <= len(calls) <= 2 + copyio.CLOSES_IN_FLIGHT
    assert len(list(tmp_path.iterdir())) <= 3 + copyio.CLOSES_IN_FLIGHT


def test_files_being_closed_at_once_are_bounded_in_number_and_bytes(make_db, tmp_path, monkeypatch):
    """Closes overlap the stream, but never more than ``CLOSES_IN_FLIGHT`` files, nor more than
    ``CLOSING_BYTES`` together unless one file alone is larger: memory stays bounded."""
    dsn = make_db()
    real_fsync, lock, closing, worst = os.fsync, threading.Lock(), {}, {"files": 0, "bytes": 0}

    def slow(fd):
        with lock:
            closing[fd] = os.fstat(fd).st_size
            worst["files"] = max(worst["files"], len(closing))
            worst["bytes"] = max(worst["bytes"], sum(closing.values()))
        time.sleep(0.03)  # a storage slower than the stream
        real_fsync(fd)
        with lock:
            del closing[fd]

    budget = 4 << 10  # the table's files compress to 0.2-8 kB
    monkeypatch.setattr(copyio, "CLOSING_BYTES", budget)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_TABLE)
        monkeypatch.setattr(os, "fsync", slow)
        parts = _cut(conn, "COPY t (id, v) TO STDOUT", tmp_path)
        monkeypatch.undo()
    assert len(parts) > 2 * copyio.CLOSES_IN_FLIGHT
    assert 2 <= worst["files"] <= copyio.CLOSES_IN_FLIGHT
    assert worst["bytes"] <= max(budget, max(p.bytes for p in parts))
    assert b"".join(b for p in parts for b in iter_file_blocks(tmp_path / p.path.split("/")[1], p.sha256)) == (
        _copy_text_of(dsn)
    )


def _copy_text_of(dsn: str) -> bytes:
    with psycopg.connect(dsn) as conn:
        return _copy_text(conn)


def test_a_copy_whose_session_is_ended_says_why_and_lets_other_threads_run(make_db, tmp_path):
    """A session ended mid-COPY (pg_terminate_backend, a server shutdown) is reported with the
    server's reason, not "server closed the connection unexpectedly".  The COPY waits for a row
    the server sleeps on, and another thread of the process ends the session meanwhile: a COPY
    holding the GIL while it waited (psycopg's blocking calls do) would keep that thread from
    running until the row came, and then end without an error."""
    dsn = make_db("cut")
    statement = psycopg.sql.SQL(
        "COPY (SELECT g, pg_sleep(CASE WHEN g = 500 THEN 30 ELSE 0 END) FROM generate_series(1, 1000) g) TO STDOUT"
    )

    def end_it(pid: int) -> None:
        time.sleep(0.5)  # into the server's sleep
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))

    with psycopg.connect(dsn, autocommit=True) as conn:
        helper = threading.Thread(target=end_it, args=(conn.info.backend_pid,))
        helper.start()
        with pytest.raises(psycopg.OperationalError) as err:
            copyio.copy_out(conn, statement, LocalStorage(tmp_path), "t.copy.zst", "t.copy.zst")
        helper.join()

    assert "terminating connection due to administrator command" in str(err.value)


BLOCK_FAULTS = r"""
import hashlib, os, resource, sys
import zstandard
from backupkit.runtime.heap import keep_freed_blocks

rows = [os.urandom(40).hex().encode() * (1 + i % 5) + b"\n" for i in range(1000)]
compress = zstandard.ZstdCompressor(level=copyio_level).compress

def blocks(n):
    # As pg.copyio streams: rows appended to a block of 1 MiB, compressed, hashed, freed.
    for _ in range(n):
        buf = bytearray()
        i = 0
        while len(buf) < 1 << 20:
            buf += rows[i % 1000]
            i += 1
        hashlib.sha256(compress(buf)).digest()

print(keep_freed_blocks())
blocks(3)  # the first blocks fault their pages in once
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
blocks(100)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def test_streamed_blocks_reuse_their_memory():
    """A process streaming data keeps freed block-sized memory (``runtime.heap``): its 100
    next blocks of 1 MiB fault in almost no new pages, where glibc's defaults fault about
    one per page per block (23,800 for these 100; 70,000 in a 450 MB backup)."""
    probe = BLOCK_FAULTS.replace("copyio_level", str(copyio.ZSTD_LEVEL))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kept, faults = out.stdout.split()
    assert kept == "True"
    assert int(faults) < 100 * 256 // 10, f"{faults} page faults for 100 blocks of 256 pages"
