"""The ``--sizes`` mode of ``benchmarks/run.py``: backup and restore against the peers at several sizes.

    .venv/bin/python benchmarks/run.py --sizes 0.002,0.027,0.3,1

Most Supabase projects are small, and there fixed costs (start-up, probes, pg_restore
runs, connections) decide.  For each scale in turn this builds the dataset of
``run.build_dataset`` (below scale 0.005 without the pgbench tables: about 1 MB at
0.002), runs ``backupkit backup -j2``, ``pg_dump -Fd -j2``, ``pg_dump -Fc``,
``backupkit restore -j2`` and ``pg_restore -j2`` interleaved, and prints one table
of medians and ratios with the targets of the fixed-costs issue:

* backup ≤ 0.5× ``pg_dump -Fd -j2`` and ≤ 1.0× ``pg_dump -Fc`` at every size;
* restore ≤ 0.85× ``pg_restore -j2`` from 450 MB (scale ≥ 0.3), ≤ 1.0× below;
* ``backupkit --version`` under 0.1 s and ``backupkit list`` of 100 snapshots under 0.3 s.

``--rtt MS`` puts ``lagproxy.py`` between the contenders and the server, so that every
round trip takes that long, as to a hosted database a network away (the datasets and
fixtures are built directly).
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import run as bench
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from run import (
    BK_BACKUP_2,
    BK_RESTORE,
    CONTENDERS,
    DB_PREFIX,
    PG_DUMP_FC,
    PG_DUMP_FD,
    PG_RESTORE,
    Bench,
    Cluster,
    Dataset,
    Invocation,
    Result,
    Tools,
    backupkit_env,
    build_dataset,
    log,
    make_fixtures,
    run_interleaved,
    run_pipeline,
    startup_seconds,
)

#: Scales from which restore must beat ``pg_restore -j2`` by the large-data margin.
LARGE_SCALE = 0.3
NAMES = (BK_BACKUP_2, PG_DUMP_FD, PG_DUMP_FC, BK_RESTORE, PG_RESTORE)
#: Snapshots ``backupkit list`` is timed on, and its target in seconds.
LIST_SNAPSHOTS, LIST_TARGET, VERSION_TARGET = 100, 0.3, 0.1


def _ratio(results: dict[str, Result], a: str, b: str) -> float | None:
    ra, rb = results[a].median, results[b].median
    return ra / rb if ra is not None and rb else None


def _judged(ratio: float | None, target: float) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.2f}× ({'PASS' if ratio <= target else 'MISS'} ≤{target:g})"


def _row(ds: Dataset, results: dict[str, Result]) -> str:
    med = {n: results[n].median for n in NAMES}
    restore_target = 0.85 if ds.scale >= LARGE_SCALE else 1.0
    cells = [
        f"{ds.copy_mb:,.1f}",
        *(f"{med[n]:.2f}" if med[n] is not None else "FAILED" for n in NAMES),
        _judged(_ratio(results, BK_BACKUP_2, PG_DUMP_FD), 0.5),
        _judged(_ratio(results, BK_BACKUP_2, PG_DUMP_FC), 1.0),
        _judged(_ratio(results, BK_RESTORE, PG_RESTORE), restore_target),
    ]
    return "| " + " | ".join(cells) + " |"


def list_seconds(cluster: Cluster, tools: Tools, work: Path, repeat: int) -> float:
    """Median wall time of ``backupkit list`` on a repository of ``LIST_SNAPSHOTS`` snapshots
    (real backups of a one-table database)."""
    name = f"{DB_PREFIX}list"
    cluster.create_database(name)
    cluster.execute(name, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 10)")
    repo = work / "list-repo"
    env = backupkit_env(cluster, name)
    log(f"list: {LIST_SNAPSHOTS} snapshots of a one-table database")
    try:
        for i in range(LIST_SNAPSHOTS):
            label = ("--label", f"n{i}")
            run_pipeline(Invocation([[*tools.backupkit, "backup", "-q", "--to", str(repo), *label]], env))
    finally:
        cluster.drop_database(name)
    listing = Invocation([[*tools.backupkit, "list", str(repo)]], env)
    return statistics.median(run_pipeline(listing).seconds for _ in range(max(3, repeat)))


@contextlib.contextmanager
def lagged(cluster: Cluster, rtt_ms: float) -> Iterator[Cluster]:
    """``cluster`` reached through ``lagproxy.py`` with ``rtt_ms`` round trips (itself when 0)."""
    if not rtt_ms:
        yield cluster
        return
    with socket.socket() as probe:  # a free port for the proxy
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = conninfo_to_dict(cluster.admin_dsn).get("port") or "5432"
    proxy = Path(__file__).with_name("lagproxy.py")
    child = subprocess.Popen([sys.executable, str(proxy), str(port), str(target), str(rtt_ms / 2000)])
    try:
        for _ in range(100):  # until it listens
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        yield Cluster(make_conninfo(cluster.admin_dsn, host="127.0.0.1", port=port))
    finally:
        child.terminate()
        child.wait()


def sizes_report(
    cluster: Cluster, tools: Tools, scales: list[float], repeat: int, warmup: int, work: Path, rtt_ms: float = 0.0
) -> list[str]:
    """Build each scale's dataset in turn, run the five contenders on it; the report lines."""
    chosen = [c for c in CONTENDERS if c.name in NAMES]
    rows = []
    for i, scale in enumerate(scales):
        ds = build_dataset(cluster, tools, f"{DB_PREFIX}size_{i}", scale)
        log(ds.describe())
        fixtures = make_fixtures(cluster, tools, ds, work / f"size_{i}", {"backup", "restore"}, False)
        with lagged(cluster, rtt_ms) as reached:
            b = Bench(reached, tools, ds, fixtures, work / "runs")
            b.runs_dir.mkdir(parents=True, exist_ok=True)
            results = run_interleaved(b, chosen, repeat, warmup)
        cluster.drop_database(ds.dbname)
        rows.append(_row(ds, results))
    version = startup_seconds(tools)
    listed = list_seconds(cluster, tools, work, repeat)
    return [
        "## backupkit at every size",
        "",
        *bench.machine_lines(cluster, tools),
        f"- {warmup} untimed warm-up round(s), then {repeat} repetition(s) per size, contenders interleaved; "
        "medians in seconds",
        *(
            [f"- network: every contender reaches the server through `lagproxy.py`, {rtt_ms:g} ms round trips"]
            if rtt_ms
            else []
        ),
        "",
        "| COPY text MB | " + " | ".join(NAMES) + " | backup vs -Fd -j2 | backup vs -Fc | restore vs pg_restore -j2 |",
        "|" + "--:|" * (len(NAMES) + 1) + "---|---|---|",
        *rows,
        "",
        f"- `backupkit --version`: {version:.3f} s ({'PASS' if version < VERSION_TARGET else 'MISS'} "
        f"< {VERSION_TARGET:g} s)",
        f"- `backupkit list` of {LIST_SNAPSHOTS} snapshots: {listed:.3f} s "
        f"({'PASS' if listed < LIST_TARGET else 'MISS'} < {LIST_TARGET:g} s)",
        f"- restore target: ≤ 0.85× from scale {LARGE_SCALE:g} (about 450 MB of COPY text), ≤ 1.0× below.",
    ]
