"""Chunked tables (ctid ranges, several files) behave exactly like unchunked ones."""

from __future__ import annotations

import psycopg
from fingerprint import fingerprint
from helpers import load_small

import backupkit
from backupkit.recovery.job import restore


def test_chunked_and_unchunked_snapshots_are_interchangeable(make_db, tmp_path):
    source = make_db("chunks")
    load_small(source)
    with psycopg.connect(source) as conn:  # rows spread over many pages, some deleted (holes)
        conn.execute(
            "INSERT INTO orders (customer_id, total, note) "
            "SELECT 1 + i % 2000, i / 3.0, repeat('x', i % 300) FROM generate_series(1, 30000) i; "
            "DELETE FROM orders WHERE id % 11 = 0"
        )
    whole = backupkit.backup(source, tmp_path / "whole", jobs=1)
    chunked = backupkit.backup(source, tmp_path / "chunked", jobs=3, chunk_bytes=128 * 1024)
    files = {t["name"]: len(t["files"]) for t in chunked.manifest["tables"]}
    assert files["orders"] >= 5 and all(len(t["files"]) == 1 for t in whole.manifest["tables"])
    assert [(t["name"], t["rows"]) for t in chunked.manifest["tables"]] == [
        (t["name"], t["rows"]) for t in whole.manifest["tables"]
    ]

    for snap in (whole, chunked):
        assert backupkit.verify(snap.path, deep=True).problems == []

    expected = fingerprint(source)
    for snap, jobs in ((whole, 1), (chunked, 1), (chunked, 3)):
        target = make_db("chunk_target")
        restore(snap.path, target, jobs=jobs)
        assert fingerprint(target) == expected, (snap.path.parent.name, jobs)

    diff = backupkit.diff_snapshots(whole.path, chunked.path)
    assert diff["totals"] == {"inserted": 0, "deleted": 0, "updated": 0}
    con = backupkit.open_snapshot(chunked.path)
    with psycopg.connect(source) as conn:
        assert (
            con.execute("SELECT count(*), sum(total) FROM public.orders").fetchone()
            == conn.execute("SELECT count(*), sum(total) FROM orders").fetchone()
        )
