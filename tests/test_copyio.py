"""The COPY block loop: exact bytes, bounded blocks, one zstd frame per block."""

from __future__ import annotations

import hashlib

import psycopg
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
        blocks = [bytes(b) for b in copyio._receive(conn, psycopg.sql.SQL("COPY t (id, v) TO STDOUT"), rows)]
    assert b"".join(blocks) == expected
    assert rows == [40000]
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
        res = copyio.copy_out(
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
        res = copyio.copy_out(
            conn, psycopg.sql.SQL("COPY t (id, v) TO STDOUT"), LocalStorage(tmp_path), "t.copy.zst", "t.copy.zst"
        )
    assert res.rows == 0 and res.text_bytes == 0
    assert b"".join(iter_file_blocks(tmp_path / "t.copy.zst", res.sha256)) == b""
