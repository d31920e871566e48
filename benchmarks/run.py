"""Benchmark backupkit against PostgreSQL's own tools on one machine, one dataset.

    .venv/bin/python benchmarks/run.py                       # --scale 1: ~1.5 GB of COPY text
    .venv/bin/python benchmarks/run.py --scale 0.1           # a quick run (a few minutes)
    .venv/bin/python benchmarks/run.py --only backup,verify --repeat 5 --out bench.md
    .venv/bin/python benchmarks/run.py --rss-scales 0.05,0.2 # peak RSS of backup -j2 vs table size
    .venv/bin/python benchmarks/run.py --only s3             # backup/restore to/from s3:// vs local disk
    .venv/bin/python benchmarks/run.py --only dedup          # 7 daily snapshots into one repository
    .venv/bin/python benchmarks/run.py --sizes 0.002,0.027,0.3,1  # backup/restore vs peers at 4 sizes

What it does:

1. Starts a throwaway embedded PostgreSQL 18 (or uses ``--dsn``, whose role needs
   CREATEDB; it creates and drops databases named ``bkbench_*``) and builds the
   dataset once: ``pgbench -i -s 100*scale`` plus a table ``mixed`` of
   2,000,000*scale rows of text, numeric, timestamptz, jsonb, uuid, boolean and
   int[] generated server-side; then VACUUM ANALYZE.
2. Runs every contender as a subprocess, interleaved (each repetition runs each
   contender once, starting one later in the list than the previous repetition),
   timing wall-clock and taking peak RSS from ``os.wait4``.  Preparation (fresh
   output folder, fresh empty database) and clean-up (measuring, deleting,
   dropping) happen outside the timed region, followed by ``sync`` and a
   CHECKPOINT so one run's writes do not land in the next one's time.
3. Prints the machine, the dataset and one markdown table: median and min
   seconds, throughput, peak RSS, output size, ratios to the peer tool and to the
   floor (one psql session COPYing every table to /dev/null), and backupkit's
   performance targets with PASS/MISS.

The ``s3`` group starts a moto S3 server on 127.0.0.1 (a separate process, only when
the group runs) and compares ``backupkit backup -j2`` into ``s3://`` and ``restore -j2``
from it with the same commands on local disk: moto is a local stand-in, so these rows
measure backupkit's own S3 overhead (requests, multipart uploads, the copy that
publishes), not a network.

The ``dedup`` group backs up a copy of the dataset (``CREATE DATABASE ... TEMPLATE``) 7 times
into one repository with ``backupkit backup -j2``, appending 1% new rows to every table
that has rows before each of days 2..7, and reports the repository's size on disk (every
file under it, hidden folders included, each inode once) against the first snapshot's
size: target ≤ 1.5×.  The 7 backups run once (not ``--repeat`` times, no warm-up); their
median time is for information.

Passwords reach tools through ``PGPASSWORD`` / ``BACKUPKIT_DSN`` in their
environment, never their argv (S3 keys through ``AWS_*`` variables).  Everything is written under a temporary folder
(``--workdir``) that is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from psycopg import sql
from psycopg.conninfo import make_conninfo

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from duckdb_scan import stored  # noqa: E402  (beside this file: where a manifest's data file lies)

import backupkit  # noqa: E402  (the checkout being benchmarked, not an installed copy)
from backupkit.pg.dsn import redact, split_password  # noqa: E402
from backupkit.pg.embedded import bin_dir, temporary_server  # noqa: E402

GROUPS = ("backup", "restore", "verify", "diff", "s3", "encrypt", "dedup")
MB = 1_000_000
#: Session settings for the floor's psql, the same backupkit uses, so COPY text is byte-comparable.
PG_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres -c extra_float_digits=3"
DB_PREFIX = "bkbench_"


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- measuring one subprocess (or pipeline) -------------------------------------------------


@dataclass
class Invocation:
    """One timed run: a pipeline of argv lists plus what to measure and clean up afterwards.

    ``stdout`` receives the last member's output (None: /dev/null).  ``output``
    is a file or folder whose size is the run's output size and which is
    deleted afterwards; ``database`` is a database sized and dropped afterwards;
    ``s3_output`` a key prefix of the benchmark's S3 bucket, sized and deleted afterwards.
    """

    pipeline: list[list[str]]
    env: dict[str, str]
    stdout: Path | None = None
    cwd: Path | None = None
    output: Path | None = None
    database: str | None = None
    s3_output: str | None = None


@dataclass
class Measurement:
    """What one run cost: wall seconds, peak RSS in KiB (summed over pipeline members), output bytes."""

    seconds: float
    rss_kib: int
    output_bytes: int | None = None


class RunFailed(Exception):
    """A benchmarked command exited non-zero."""


LAUNCHER = Path(__file__).with_name("launch.py")


def run_pipeline(inv: Invocation, secret_dsn: str | None = None) -> Measurement:
    """Run ``inv.pipeline`` (members connected stdout→stdin) and measure it.

    The commands are started by ``launch.py``, a tiny separate process, which
    times them and takes each member's ``ru_maxrss`` (KiB on Linux) from
    ``os.wait4``: forked from this process they would inherit its RSS high-water
    mark (see launch.py).  For a member that forks workers (pg_dump -j,
    pg_restore -j) the kernel reports the largest single process of its tree,
    not their sum; members of a pipeline run at the same time, so their peaks
    are summed.
    """
    spec = json.dumps({"pipeline": inv.pipeline, "cwd": str(inv.cwd) if inv.cwd else None})
    with (
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory(prefix="bkbench-run-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        out = stack.enter_context(open(inv.stdout, "wb")) if inv.stdout else subprocess.DEVNULL
        result_file = Path(tmp) / "result.json"
        launcher = subprocess.run(
            [sys.executable, "-S", "-I", str(LAUNCHER), spec, str(result_file)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=inv.env,
        )
        result = json.loads(result_file.read_text()) if result_file.is_file() else None
        if launcher.returncode or result is None or any(result["status"]):
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-1500:]
            if secret_dsn:
                tail = redact(tail, secret_dsn)
            names = " | ".join(Path(a[0]).name for a in inv.pipeline)
            codes = result["status"] if result else f"launcher exit {launcher.returncode}"
            raise RunFailed(f"{names} exited {codes}: {tail}")
    return Measurement(result["seconds"], sum(result["rss_kib"]))


def rss_floor_mb() -> float:
    """Peak RSS the launcher reports for ``true``: no process measured here can read lower."""
    true = shutil.which("true") or "/bin/true"
    return run_pipeline(Invocation([[true]], dict(os.environ))).rss_kib * 1024 / MB


def path_bytes(path: Path) -> int:
    """Size of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the server ---------------------------------------------------------------------------


class Cluster:
    """A PostgreSQL server reached through an admin DSN: create, size and drop databases."""

    def __init__(self, admin_dsn: str):
        self.admin_dsn = admin_dsn

    def dsn(self, dbname: str) -> str:
        """The admin DSN pointed at another database (password included: keep out of argv and logs)."""
        return make_conninfo(self.admin_dsn, dbname=dbname)

    def tool_env(self, dbname: str) -> tuple[str, dict[str, str]]:
        """``--dbname`` value without the password, and an environment carrying it."""
        bare, extra = split_password(self.dsn(dbname))
        return bare, {**os.environ, **extra}

    def execute(self, dbname: str, *statements: str | sql.SQL | sql.Composed) -> list:
        """Run statements in one autocommit session; return the last one's rows (if any)."""
        rows: list = []
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            for s in statements:
                cur = conn.execute(s)
                rows = cur.fetchall() if cur.description else []
        return rows

    def create_database(self, name: str, template: str | None = None) -> None:
        """Create ``name`` (dropping a leftover of the same name first)."""
        self.drop_database(name)
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("{} TEMPLATE {} STRATEGY FILE_COPY").format(stmt, sql.Identifier(template))
        self.execute("postgres", stmt)

    def drop_database(self, name: str) -> None:
        self.execute("postgres", sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def database_bytes(self, name: str) -> int:
        return self.execute("postgres", sql.SQL("SELECT pg_database_size({})").format(sql.Literal(name)))[0][0]

    def settle(self) -> None:
        """Flush the previous run's writes so they are not billed to the next run."""
        self.execute("postgres", "CHECKPOINT")
        os.sync()

    def version(self) -> str:
        return self.execute("postgres", "SHOW server_version")[0][0]


@contextlib.contextmanager
def open_cluster(dsn: str | None) -> Iterator[Cluster]:
    """The server given by ``dsn``, or a temporary embedded one deleted afterwards."""
    if dsn:
        yield Cluster(dsn)
        return
    with temporary_server() as server:
        yield Cluster(server.dsn())


# -- an S3 server (the "s3" group) ------------------------------------------------------------

#: moto in server mode, in its own process (its CPU and memory are not the benchmark's):
#: prints its port, serves until its stdin closes.
MOTO = r"""
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""

S3_BUCKET = "backupkit-bench"
#: AWS variables of this machine that must not reach the S3 contenders (profiles, tokens, retries).
AWS_DROPPED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")


class S3Server:
    """A local moto S3 server with one bucket; ``environ`` points boto3 (in backupkit) at it."""

    def __init__(self, endpoint: str, nowhere: Path):
        self.endpoint = endpoint
        self.settings = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "AKIABACKUPKITBENCH00",
            "AWS_SECRET_ACCESS_KEY": "bench-secret-not-a-real-one",
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(nowhere),  # not this machine's config or credentials
            "AWS_SHARED_CREDENTIALS_FILE": str(nowhere),
        }
        import boto3

        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.settings["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.settings["AWS_SECRET_ACCESS_KEY"],
        )

    def url(self, *names: str) -> str:
        return "/".join([f"s3://{S3_BUCKET}", *names])

    def environ(self, base: dict[str, str]) -> dict[str, str]:
        return {**{k: v for k, v in base.items() if k not in AWS_DROPPED}, **self.settings}

    def _objects(self, prefix: str) -> Iterator[dict]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix + "/"):
            yield from page.get("Contents", [])

    def prefix_bytes(self, prefix: str) -> int:
        return sum(o["Size"] for o in self._objects(prefix))

    def delete_prefix(self, prefix: str) -> None:
        keys = [{"Key": o["Key"]} for o in self._objects(prefix)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=S3_BUCKET, Delete={"Objects": keys[i : i + 1000], "Quiet": True})


def moto_available() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def open_s3(work: Path) -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 with an empty bucket, stopped afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = proc.stdout.readline().strip()
        if not port.isdigit():
            raise SystemExit("the moto S3 server did not start")
        s3 = S3Server(f"http://127.0.0.1:{port}", work / "aws-none")
        s3.client.create_bucket(Bucket=S3_BUCKET)
        log(f"S3: moto server at {s3.endpoint}, bucket {S3_BUCKET}")
        yield s3
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- tools -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    """Paths of every program the benchmark runs."""

    pg_bin: Path
    python: str
    backupkit: list[str]
    zstd: list[str]  # reads stdin; the output file name is appended
    sha256sum: str
    duckdb_scan: list[str]

    @classmethod
    def find(cls) -> Tools:
        python = sys.executable
        console = Path(python).parent / "backupkit"
        bk = [str(console)] if console.is_file() else [python, "-m", "backupkit"]
        zstd = shutil.which("zstd")
        # Without the zstd CLI, the same library backupkit uses, streaming (one thread, level 3).
        zstd_cmd = [zstd, "-3", "-q", "-o"] if zstd else [python, "-c", _PY_ZSTD]
        sha = shutil.which("sha256sum")
        if not sha:
            raise SystemExit("sha256sum not found (coreutils)")
        return cls(bin_dir(), python, bk, zstd_cmd, sha, [python, str(Path(__file__).with_name("duckdb_scan.py"))])

    def pg(self, name: str) -> str:
        return str(self.pg_bin / name)


_PY_ZSTD = (
    "import sys, zstandard; zstandard.ZstdCompressor(level=3).copy_stream(sys.stdin.buffer, open(sys.argv[1], 'wb'))"
)


def tool_version(argv: list[str]) -> str:
    """First line of ``argv --version`` (or '?')."""
    try:
        out = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


# -- the dataset -----------------------------------------------------------------------------

MIXED_DDL = """
CREATE TABLE mixed (
    id          bigint NOT NULL,
    note        text,
    amount      numeric(12,2),
    happened_at timestamptz NOT NULL,
    attrs       jsonb,
    ref         uuid NOT NULL,
    active      boolean,
    tags        int[]
)"""

#: Server-side rows for ``mixed`` (ids first..last): md5-repeat text of random length 0-200 (1% NULL),
#: and a few NULLs elsewhere.  setseed() in the same session makes it repeatable.
MIXED_INSERT = """
INSERT INTO mixed
SELECT i,
       CASE WHEN i % 100 = 7 THEN NULL
            ELSE left(repeat(md5(i::text), 7), (random() * 200)::int) END,
       CASE WHEN i % 50 = 3 THEN NULL ELSE round((random() * 1e9)::numeric, 2) END,
       timestamptz '2020-01-01 00:00:00+00' + random() * interval '1500 days',
       jsonb_build_object('n', i, 'kind', (ARRAY['alpha', 'beta', 'gamma', 'delta'])[1 + i % 4],
                          'score', round(random()::numeric, 4), 'ok', i % 3 = 0),
       md5(i::text || ':ref')::uuid,
       CASE WHEN i % 11 = 0 THEN NULL ELSE random() < 0.5 END,
       ARRAY[i % 1000, (random() * 100000)::int, i % 7]
FROM generate_series(%(first)s, %(last)s) AS i"""


def mixed_insert(first: int, last: int) -> str:
    """``MIXED_INSERT`` for ids ``first``..``last``."""
    return MIXED_INSERT.replace("%(first)s", str(int(first))).replace("%(last)s", str(int(last)))


#: The change between the two snapshots ``backupkit diff`` compares: 1% of rows of the big tables.
MUTATIONS = (
    "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0",
    "UPDATE mixed SET amount = amount + 1, attrs = attrs || '{\"changed\": true}' WHERE id % 100 = 0",
)


@dataclass
class Dataset:
    """The benchmark database and what it holds."""

    dbname: str
    scale: float
    pgbench_scale: int
    mixed_rows: int
    tables: list[tuple[str, str, int]] = field(default_factory=list)  # (schema, name, rows)
    copy_bytes: int = 0
    db_bytes: int = 0
    build_seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(r for _, _, r in self.tables)

    @property
    def copy_mb(self) -> float:
        return self.copy_bytes / MB

    def describe(self) -> str:
        per = ", ".join(f"{n} {r:,}" for _, n, r in self.tables)
        return (
            f"scale {self.scale:g} (pgbench -s {self.pgbench_scale}, mixed {self.mixed_rows:,} rows): "
            f"{self.rows:,} rows [{per}], COPY text {self.copy_mb:,.0f} MB, "
            f"on disk {self.db_bytes / MB:,.0f} MB; built in {self.build_seconds:.0f} s"
        )


#: Below this scale the dataset has no pgbench tables (pgbench's smallest is ~13 MB): ``mixed`` only.
PGBENCH_MIN_SCALE = 0.005


def dataset_size(scale: float) -> tuple[int, int]:
    """(pgbench scale, 0: none; rows of ``mixed``) for a benchmark scale."""
    pgbench = 0 if scale < PGBENCH_MIN_SCALE else max(1, round(100 * scale))
    return pgbench, max(1000, round(2_000_000 * scale))


def build_dataset(cluster: Cluster, tools: Tools, dbname: str, scale: float) -> Dataset:
    """Create ``dbname`` holding the pgbench tables and ``mixed``, vacuumed and analyzed."""
    started = time.monotonic()
    pgbench_scale, mixed_rows = dataset_size(scale)
    ds = Dataset(dbname, scale, pgbench_scale, mixed_rows)
    cluster.create_database(dbname)
    bare, env = cluster.tool_env(dbname)
    if pgbench_scale:
        log(f"pgbench -i -s {pgbench_scale} into {dbname}")
        # Server-side generation (G) is the fastest way to fill pgbench_accounts; -q keeps the log short.
        run_pipeline(
            Invocation([[tools.pg("pgbench"), "-i", "-q", "-s", str(pgbench_scale), "--init-steps=dtGvp", bare]], env),
            cluster.admin_dsn,
        )
    log(f"mixed: {mixed_rows:,} rows")
    cluster.execute(
        dbname,
        "SELECT setseed(0.42)",
        MIXED_DDL,
        mixed_insert(1, mixed_rows),
        "ALTER TABLE mixed ADD PRIMARY KEY (id)",
    )
    log("VACUUM ANALYZE")
    cluster.execute(dbname, "VACUUM ANALYZE")
    names = cluster.execute(
        dbname, "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    for schema, name in names:
        count = cluster.execute(dbname, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
        ds.tables.append((schema, name, count[0][0]))
    ds.db_bytes = cluster.database_bytes(dbname)
    ds.copy_bytes = count_copy_bytes(cluster, tools, ds)
    ds.build_seconds = time.monotonic() - started
    return ds


def floor_invocation(cluster: Cluster, tools: Tools, ds: Dataset) -> Invocation:
    """One psql session running ``COPY t TO STDOUT`` (text format, as backupkit) for every table, to /dev/null."""
    bare, env = cluster.tool_env(ds.dbname)
    env["PGOPTIONS"] = PG_OPTIONS
    argv = [tools.pg("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", f"--dbname={bare}"]
    for schema, name, _ in ds.tables:
        ident = sql.Identifier(schema, name).as_string()
        argv += ["-c", f"COPY {ident} TO STDOUT (FORMAT text)"]
    return Invocation([argv], env)


def count_copy_bytes(cluster: Cluster, tools: Tools, ds: Dataset) -> int:
    """Bytes of COPY text of the whole dataset: the floor's command, counted (also warms the cache)."""
    inv = floor_invocation(cluster, tools, ds)
    total = 0
    with subprocess.Popen(inv.pipeline[0], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=inv.env) as p:
        assert p.stdout is not None and p.stderr is not None
        while block := p.stdout.read(1 << 20):
            total += len(block)
        err = p.stderr.read().decode(errors="replace")
    if p.returncode:
        raise RunFailed(f"psql COPY failed: {redact(err, cluster.admin_dsn)}")
    return total


# -- fixtures: what restore, verify and diff read ---------------------------------------------


@dataclass
class Fixtures:
    """Inputs made once, untimed: a snapshot (OLD), a pg_dump -Fd dump, a changed snapshot (NEW)."""

    old: Path | None = None
    dump_dir: Path | None = None
    new: Path | None = None
    s3_old: str | None = None  # OLD copied to the S3 server (``backupkit copy``): s3://.../<id>
    #: The "encrypt" group: an age identity file, its public key, and OLD encrypted to it.
    identity: Path | None = None
    recipient: str | None = None
    old_encrypted: Path | None = None


def backupkit_env(cluster: Cluster, dbname: str) -> dict[str, str]:
    """Environment giving backupkit its DSN (password included) without putting it in argv."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_DB_URL")}
    env["BACKUPKIT_DSN"] = cluster.dsn(dbname)
    return env


def take_snapshot(cluster: Cluster, tools: Tools, dbname: str, to: Path, *, extra: tuple[str, ...] = ()) -> Path:
    """``backupkit backup --jobs 2`` (and ``extra`` options) of ``dbname`` into ``to``; the snapshot's path."""
    out = to.parent / f"{to.name}.stdout"
    run_pipeline(
        Invocation(
            [[*tools.backupkit, "backup", "--jobs", "2", "-q", "--to", str(to), *extra]],
            backupkit_env(cluster, dbname),
            stdout=out,
        ),
        cluster.admin_dsn,
    )
    path = Path(out.read_text().strip().splitlines()[-1])
    out.unlink()
    return path


def make_fixtures(
    cluster: Cluster,
    tools: Tools,
    ds: Dataset,
    work: Path,
    groups: set[str],
    diff_ready: bool,
    s3: S3Server | None = None,
) -> Fixtures:
    """Build only the inputs the selected groups need."""
    fx = Fixtures()
    snapshots = work / "fixtures" / "snapshots"
    snapshots.parent.mkdir(parents=True, exist_ok=True)
    if groups & {"restore", "verify", "encrypt"} or ("diff" in groups and diff_ready) or s3 is not None:
        log("fixture: snapshot OLD (backupkit backup -j2)")
        fx.old = take_snapshot(cluster, tools, ds.dbname, snapshots)
    if s3 is not None and fx.old is not None:
        log("fixture: OLD copied to S3 (backupkit copy)")
        run_pipeline(
            Invocation(
                [[*tools.backupkit, "copy", str(snapshots), s3.url("fixtures"), fx.old.name]],
                s3.environ(dict(os.environ)),
            )
        )
        fx.s3_old = s3.url("fixtures", fx.old.name)
    if "restore" in groups:
        log("fixture: pg_dump -Fd -j 2")
        fx.dump_dir = work / "fixtures" / "dump.d"
        bare, env = cluster.tool_env(ds.dbname)
        run_pipeline(
            Invocation([[tools.pg("pg_dump"), "-Fd", "-j", "2", "-f", str(fx.dump_dir), f"--dbname={bare}"]], env),
            cluster.admin_dsn,
        )
    if "encrypt" in groups:
        from backupkit.snapshot.encryption import keygen

        fx.identity = work / "fixtures" / "identity.txt"
        fx.recipient = keygen(fx.identity)
        log("fixture: snapshot OLD encrypted to an age key (backupkit backup -j2 --recipient)")
        fx.old_encrypted = take_snapshot(
            cluster, tools, ds.dbname, work / "fixtures" / "encrypted", extra=("--recipient", fx.recipient)
        )
    if "diff" in groups and diff_ready:
        changed = ds.dbname + "_changed"
        log(f"fixture: snapshot NEW after changing 1% of rows ({changed}, a copy of {ds.dbname})")
        cluster.create_database(changed, template=ds.dbname)
        try:
            cluster.execute(changed, *MUTATIONS)
            fx.new = take_snapshot(cluster, tools, changed, snapshots)
        finally:
            cluster.drop_database(changed)
    cluster.settle()
    return fx


# -- contenders ----------------------------------------------------------------------------


@dataclass
class Bench:
    """Everything a contender needs to build its command line."""

    cluster: Cluster
    tools: Tools
    dataset: Dataset
    fixtures: Fixtures
    runs_dir: Path
    s3: S3Server | None = None

    def fresh_path(self, tag: str) -> Path:
        path = self.runs_dir / tag
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return path

    def pg_dump(self, *args: str) -> tuple[list[str], dict[str, str]]:
        bare, env = self.cluster.tool_env(self.dataset.dbname)
        return [self.tools.pg("pg_dump"), *args, f"--dbname={bare}"], env


@dataclass(frozen=True)
class Contender:
    """A named command; ``invoke(bench, tag)`` prepares its run (untimed) and returns it.

    ``also``: further groups that run it (as the peer of one of theirs)."""

    name: str
    group: str
    invoke: Callable[[Bench, str], Invocation]
    also: tuple[str, ...] = ()


def _floor(b: Bench, tag: str) -> Invocation:
    return floor_invocation(b.cluster, b.tools, b.dataset)


def _backupkit_backup(jobs: int) -> Callable[[Bench, str], Invocation]:
    def invoke(b: Bench, tag: str) -> Invocation:
        to = b.fresh_path(tag)
        return Invocation(
            [[*b.tools.backupkit, "backup", "--jobs", str(jobs), "-q", "--to", str(to)]],
            backupkit_env(b.cluster, b.dataset.dbname),
            output=to,
        )

    return invoke


def _pg_dump_dir(b: Bench, tag: str) -> Invocation:
    out = b.fresh_path(tag)
    argv, env = b.pg_dump("-Fd", "-j", "2", "-f", str(out))
    return Invocation([argv], env, output=out)


def _pg_dump_custom(b: Bench, tag: str) -> Invocation:
    out = b.fresh_path(tag)
    argv, env = b.pg_dump("-Fc", "-f", str(out))
    return Invocation([argv], env, output=out)


def _pg_dump_zstd(b: Bench, tag: str) -> Invocation:
    out = b.fresh_path(tag)
    argv, env = b.pg_dump("-Fp")
    return Invocation([argv, [*b.tools.zstd, str(out)]], env, output=out)


def _fresh_target(b: Bench, tag: str) -> str:
    name = f"{DB_PREFIX}restore_{re.sub(r'[^a-z0-9_]', '_', tag.lower())}"[:63]
    b.cluster.create_database(name)
    return name


def _backupkit_restore(b: Bench, tag: str) -> Invocation:
    target = _fresh_target(b, tag)
    return Invocation(
        [[*b.tools.backupkit, "restore", str(b.fixtures.old), "--jobs", "2", "-q"]],
        backupkit_env(b.cluster, target),
        database=target,
    )


def _backupkit_backup_s3(b: Bench, tag: str) -> Invocation:
    assert b.s3 is not None
    prefix = f"runs/{tag}"
    b.s3.delete_prefix(prefix)
    return Invocation(
        [[*b.tools.backupkit, "backup", "--jobs", "2", "-q", "--to", b.s3.url(prefix)]],
        b.s3.environ(backupkit_env(b.cluster, b.dataset.dbname)),
        s3_output=prefix,
    )


def _backupkit_restore_s3(b: Bench, tag: str) -> Invocation:
    assert b.s3 is not None and b.fixtures.s3_old is not None
    target = _fresh_target(b, tag)
    return Invocation(
        [[*b.tools.backupkit, "restore", b.fixtures.s3_old, "--jobs", "2", "-q"]],
        b.s3.environ(backupkit_env(b.cluster, target)),
        database=target,
    )


def _backupkit_backup_encrypted(b: Bench, tag: str) -> Invocation:
    assert b.fixtures.recipient is not None
    to = b.fresh_path(tag)
    return Invocation(
        [[*b.tools.backupkit, "backup", "--jobs", "2", "-q", "--to", str(to), "--recipient", b.fixtures.recipient]],
        backupkit_env(b.cluster, b.dataset.dbname),
        output=to,
    )


def _backupkit_restore_encrypted(b: Bench, tag: str) -> Invocation:
    assert b.fixtures.old_encrypted is not None and b.fixtures.identity is not None
    target = _fresh_target(b, tag)
    return Invocation(
        [
            [
                *b.tools.backupkit,
                "restore",
                str(b.fixtures.old_encrypted),
                "--jobs",
                "2",
                "-q",
                "--identity",
                str(b.fixtures.identity),
            ]
        ],
        backupkit_env(b.cluster, target),
        database=target,
    )


def _pg_restore(b: Bench, tag: str) -> Invocation:
    target = _fresh_target(b, tag)
    bare, env = b.cluster.tool_env(target)
    return Invocation(
        [[b.tools.pg("pg_restore"), "-j", "2", f"--dbname={bare}", str(b.fixtures.dump_dir)]], env, database=target
    )


def _backupkit_verify(b: Bench, tag: str) -> Invocation:
    return Invocation([[*b.tools.backupkit, "verify", str(b.fixtures.old)]], dict(os.environ))


def _sha256sum(b: Bench, tag: str) -> Invocation:
    assert b.fixtures.old is not None
    manifest = json.loads((b.fixtures.old / "manifest.json").read_text())
    data = [
        str(stored(b.fixtures.old, f).relative_to(b.fixtures.old.parent))
        for t in manifest["tables"]
        for f in t["files"]
    ]
    files = [f"{b.fixtures.old.name}/{f['path']}" for f in manifest["schema_files"]] + data
    return Invocation([[b.tools.sha256sum, "--", *files]], dict(os.environ), cwd=b.fixtures.old.parent)


def _backupkit_diff(b: Bench, tag: str) -> Invocation:
    return Invocation(
        [[*b.tools.backupkit, "diff", str(b.fixtures.old), str(b.fixtures.new), "--json"]], dict(os.environ)
    )


def _duckdb_scan(b: Bench, tag: str) -> Invocation:
    return Invocation([[*b.tools.duckdb_scan, str(b.fixtures.old), str(b.fixtures.new)]], dict(os.environ))


FLOOR = "floor: psql COPY → /dev/null"
BK_BACKUP_1 = "backupkit backup -j1"
BK_BACKUP_2 = "backupkit backup -j2"
PG_DUMP_FD = "pg_dump -Fd -j2"
PG_DUMP_FC = "pg_dump -Fc"
PG_DUMP_ZSTD = "pg_dump -Fp | zstd -3"
BK_RESTORE = "backupkit restore -j2"
BK_BACKUP_S3 = "backupkit backup -j2 → s3:// (moto)"
BK_RESTORE_S3 = "backupkit restore -j2 from s3:// (moto)"
BK_BACKUP_ENC = "backupkit backup -j2 --recipient (age)"
BK_RESTORE_ENC = "backupkit restore -j2 --identity (age)"
PG_RESTORE = "pg_restore -j2 (from -Fd)"
BK_VERIFY = "backupkit verify"
SHA256SUM = "sha256sum (same files)"
BK_DIFF = "backupkit diff --json"
DUCKDB_SCAN = "duckdb scan (both snapshots)"
BK_DEDUP_DAY1 = "dedup day 1: backupkit backup -j2 (first snapshot)"
BK_DEDUP = "dedup days 1-7: backupkit backup -j2 into one repo, +1% rows/day"
#: The same with smaller chunks (``--chunk-size``): fewer bytes change a day, more files to write.
DEDUP_SMALL_CHUNKS = "8M"
BK_DEDUP_DAY1_SMALL = f"dedup day 1: backupkit backup -j2 --chunk-size {DEDUP_SMALL_CHUNKS}"
BK_DEDUP_SMALL = f"dedup days 1-7: backupkit backup -j2 --chunk-size {DEDUP_SMALL_CHUNKS}, +1% rows/day"

CONTENDERS = [
    Contender(FLOOR, "floor", _floor),
    Contender(BK_BACKUP_1, "backup", _backupkit_backup(1)),
    Contender(BK_BACKUP_2, "backup", _backupkit_backup(2), also=("s3", "encrypt")),
    Contender(BK_BACKUP_S3, "s3", _backupkit_backup_s3),
    Contender(BK_BACKUP_ENC, "encrypt", _backupkit_backup_encrypted),
    Contender(PG_DUMP_FD, "backup", _pg_dump_dir),
    Contender(PG_DUMP_FC, "backup", _pg_dump_custom),
    Contender(PG_DUMP_ZSTD, "backup", _pg_dump_zstd),
    Contender(BK_RESTORE, "restore", _backupkit_restore, also=("s3", "encrypt")),
    Contender(BK_RESTORE_S3, "s3", _backupkit_restore_s3),
    Contender(BK_RESTORE_ENC, "encrypt", _backupkit_restore_encrypted),
    Contender(PG_RESTORE, "restore", _pg_restore),
    Contender(BK_VERIFY, "verify", _backupkit_verify),
    Contender(SHA256SUM, "verify", _sha256sum),
    Contender(BK_DIFF, "diff", _backupkit_diff),
    Contender(DUCKDB_SCAN, "diff", _duckdb_scan),
]


@dataclass(frozen=True)
class Target:
    """A performance goal: ``contender``'s median time ≤ ``max_ratio`` × ``peer``'s (``peer`` None: RSS).

    ``size``: compare output sizes (output MB) instead of median times."""

    contender: str
    peer: str | None
    max_ratio: float = 0.0
    max_rss_mb: float = 0.0
    size: bool = False


#: Who each contender is compared with (first peer fills the "vs peer" column; all are shown).
PEERS: dict[str, list[str]] = {
    BK_BACKUP_1: [PG_DUMP_FC],
    BK_BACKUP_2: [PG_DUMP_FD, PG_DUMP_ZSTD],
    BK_RESTORE: [PG_RESTORE],
    BK_BACKUP_S3: [BK_BACKUP_2],
    BK_RESTORE_S3: [BK_RESTORE],
    BK_BACKUP_ENC: [BK_BACKUP_2],
    BK_RESTORE_ENC: [BK_RESTORE],
    BK_VERIFY: [SHA256SUM],
    BK_DIFF: [DUCKDB_SCAN],
}

#: Whose output size each contender is compared with (in the "vs peer" column, as "size N×").
SIZE_PEERS: dict[str, list[str]] = {
    BK_DEDUP: [BK_DEDUP_DAY1],
    BK_DEDUP_SMALL: [BK_DEDUP_DAY1_SMALL],
}

TARGETS = [
    Target(BK_BACKUP_2, PG_DUMP_FD, max_ratio=0.5),
    Target(BK_BACKUP_2, PG_DUMP_ZSTD, max_ratio=1.0),
    Target(BK_BACKUP_2, FLOOR, max_ratio=1.25),
    Target(BK_BACKUP_2, None, max_rss_mb=150),
    Target(BK_RESTORE, PG_RESTORE, max_ratio=0.9),
    # S3 (a local moto server) at >= 0.8x the throughput of local disk.
    Target(BK_BACKUP_S3, BK_BACKUP_2, max_ratio=1.25),
    Target(BK_RESTORE_S3, BK_RESTORE, max_ratio=1.25),
    # Encryption costs at most 10% on backup and on restore.
    Target(BK_BACKUP_ENC, BK_BACKUP_2, max_ratio=1.1),
    Target(BK_RESTORE_ENC, BK_RESTORE, max_ratio=1.1),
    Target(BK_VERIFY, SHA256SUM, max_ratio=1.0),
    Target(BK_DIFF, DUCKDB_SCAN, max_ratio=1.5),
    # 7 daily snapshots (1% new rows a day) take at most 1.5x the bytes of one.
    Target(BK_DEDUP, BK_DEDUP_DAY1, max_ratio=1.5, size=True),
    Target(BK_DEDUP_SMALL, BK_DEDUP_DAY1_SMALL, max_ratio=1.5, size=True),
]


def diff_available() -> bool:
    """``backupkit diff`` is being written separately: benchmark it only once its module exists."""
    return (Path(backupkit.__file__).parent / "lens" / "diff.py").is_file()


# -- running ----------------------------------------------------------------------------------


@dataclass
class Result:
    """Every run of one contender."""

    contender: Contender
    runs: list[Measurement] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(m.seconds for m in self.runs) if self.runs else None

    @property
    def best(self) -> float | None:
        return min(m.seconds for m in self.runs) if self.runs else None

    @property
    def peak_rss_mb(self) -> float | None:
        return max(m.rss_kib for m in self.runs) * 1024 / MB if self.runs else None

    @property
    def output_mb(self) -> float | None:
        sizes = [m.output_bytes for m in self.runs if m.output_bytes is not None]
        return statistics.median(sizes) / MB if sizes else None


def finish(bench: Bench, inv: Invocation, m: Measurement) -> None:
    """Untimed clean-up after a run: record the output size, delete the output, drop the target."""
    if inv.output is not None and inv.output.exists():
        m.output_bytes = path_bytes(inv.output)
        shutil.rmtree(inv.output) if inv.output.is_dir() else inv.output.unlink()
    if inv.database is not None:
        m.output_bytes = bench.cluster.database_bytes(inv.database)
        bench.cluster.drop_database(inv.database)
    if inv.s3_output is not None and bench.s3 is not None:
        m.output_bytes = bench.s3.prefix_bytes(inv.s3_output)
        bench.s3.delete_prefix(inv.s3_output)


def run_interleaved(bench: Bench, contenders: list[Contender], repeat: int, warmup: int = 0) -> dict[str, Result]:
    """Run each contender ``repeat`` times, round-robin, rotating who goes first each repetition.

    ``warmup`` untimed rounds come first: the first run on a fresh server also pays for
    creating its WAL segments and reading the inputs into the page cache, whichever
    contender it is.
    """
    results = {c.name: Result(c) for c in contenders}
    for rep in range(-warmup, repeat):
        order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
        for c in order:
            res = results[c.name]
            if res.error:
                continue
            if rep < 0:
                label = f"warm-up {rep + warmup + 1}/{warmup}"
            else:
                label = f"{rep + 1}/{repeat}"
            tag = f"{re.sub(r'[^A-Za-z0-9]+', '-', c.name).strip('-')}-{rep + warmup}"
            inv = None
            try:
                inv = c.invoke(bench, tag)
                bench.cluster.settle()
                m = run_pipeline(inv, bench.cluster.admin_dsn)
                finish(bench, inv, m)
            except (RunFailed, OSError, psycopg.Error, backupkit.BackupkitError, BotoCoreError, ClientError) as exc:
                res.error = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
                log(f"[{label}] {c.name}: FAILED — {redact(str(exc), bench.cluster.admin_dsn)}")
                if inv is not None:
                    with contextlib.suppress(Exception):
                        finish(bench, inv, Measurement(0, 0))
                continue
            if rep >= 0:
                res.runs.append(m)
            size = f", output {m.output_bytes / MB:,.1f} MB" if m.output_bytes is not None else ""
            log(f"[{label}] {c.name}: {m.seconds:.2f} s, peak RSS {m.rss_kib * 1024 / MB:,.0f} MB{size}")
    return results


# -- the "dedup" group: daily snapshots into one repository -----------------------------------

DEDUP_DAYS = 7
#: New rows appended before each day after the first, as a fraction of each table's current rows.
DEDUP_GROWTH = 0.01
DEDUP_DB = f"{DB_PREFIX}dedup"
DEDUP_REPO = "dedup-repo"
#: Exceptions a failed day may raise (the same ones a failed contender may).
RUN_ERRORS = (RunFailed, OSError, psycopg.Error, backupkit.BackupkitError, BotoCoreError, ClientError, ValueError)


def repo_bytes(path: Path) -> int:
    """Bytes of every file under ``path``, hidden folders included, each file once.

    Unlike ``path_bytes``, a file hard-linked from several snapshots counts once (by inode),
    and symbolic links are not followed (a link counts its own few bytes): however a
    repository shares data between snapshots, shared bytes are counted once.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(path):  # does not enter links to folders
        for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(root, d)))]:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _first_row(conn: psycopg.Connection, query: sql.Composed | str, params: list | None = None) -> tuple:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row


def append_rows_statement(conn: psycopg.Connection, schema: str, name: str, rows: int) -> sql.Composed | sql.SQL:
    """An INSERT appending ``rows`` new rows to a table, as an application would: keys after the largest.

    ``mixed`` gets rows generated like the dataset's (``MIXED_INSERT``, ids after max(id)).
    Any other table gets copies of its first ``rows`` rows (by primary key) with the key
    shifted past the largest one; a table without a primary key, copies of any ``rows`` rows.
    """
    table = sql.Identifier(schema, name)
    if (schema, name) == ("public", "mixed"):
        (top,) = _first_row(conn, "SELECT coalesce(max(id), 0) FROM mixed")
        return sql.SQL(mixed_insert(top + 1, top + rows))
    regclass = table.as_string(conn)
    columns = [
        c
        for (c,) in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            [regclass],
        )
    ]
    key = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
        " WHERE i.indrelid = %s::regclass AND i.indisprimary",
        [regclass],
    ).fetchall()
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    if not key:
        return sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {t} LIMIT {n}").format(t=table, c=cols, n=rows)
    if len(key) > 1 or key[0][1] not in ("smallint", "integer", "bigint"):
        raise ValueError(f"dedup: {schema}.{name}: the primary key is not one integer column")
    pk = sql.Identifier(key[0][0])
    low, high = _first_row(conn, sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(k=pk, t=table))
    shifted = sql.SQL(", ").join(
        sql.SQL("{k} + {o}").format(k=pk, o=high - low + 1) if c == key[0][0] else sql.Identifier(c) for c in columns
    )
    return sql.SQL("INSERT INTO {t} ({c}) SELECT {s} FROM {t} ORDER BY {k} LIMIT {n}").format(
        t=table, c=cols, s=shifted, k=pk, n=rows
    )


def append_rows(cluster: Cluster, dbname: str, tables: list[tuple[str, str, int]], day: int) -> dict[str, int]:
    """Append ``DEDUP_GROWTH`` of each table's current rows (at least one) to every table that has rows.

    No VACUUM FULL, CLUSTER or ANALYZE: the new rows land where PostgreSQL puts an
    application's inserts.  Returns the rows added per table.
    """
    added: dict[str, int] = {}
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
        conn.execute(sql.SQL("SELECT setseed({})").format(sql.Literal(day / 100)))  # repeatable new rows
        for schema, name, _ in tables:
            (count,) = _first_row(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
            if not count:
                continue
            rows = max(1, round(count * DEDUP_GROWTH))
            conn.execute(append_rows_statement(conn, schema, name, rows))
            added[name] = rows
    return added


def _dedup_backup(b: Bench, tag: str, chunk: str | None = None) -> Invocation:
    """``backupkit backup -j2`` (``--chunk-size chunk``) of the dedup copy into the group's one
    repository (kept between days)."""
    extra = ["--chunk-size", chunk] if chunk else []
    return Invocation(
        [[*b.tools.backupkit, "backup", "--jobs", "2", "-q", *extra, "--to", str(b.runs_dir / DEDUP_REPO)]],
        backupkit_env(b.cluster, DEDUP_DB),
    )


def run_dedup(bench: Bench, days: int = DEDUP_DAYS, chunk: str | None = None) -> tuple[dict[str, Result], list[str]]:
    """Back up a copy of the dataset ``days`` times into one repository, appending rows in between
    (with ``--chunk-size chunk`` when given).

    Two rows for the report: day 1 alone (its output: the repository right after it, the
    size of one snapshot) and all days (median time of the backups; output: the
    repository after the last day), plus a note of the repository's size day by day.
    """
    cluster, ds = bench.cluster, bench.dataset
    invoke = functools.partial(_dedup_backup, chunk=chunk)
    first = Result(Contender(BK_DEDUP_DAY1_SMALL if chunk else BK_DEDUP_DAY1, "dedup", invoke))
    every = Result(Contender(BK_DEDUP_SMALL if chunk else BK_DEDUP, "dedup", invoke))
    repo = bench.fresh_path(DEDUP_REPO)
    sizes: list[int] = []
    added_rows: list[int] = []
    log(f"dedup: {DEDUP_DB}, a copy of {ds.dbname}, backed up {days} times into one repository")
    try:
        cluster.create_database(DEDUP_DB, template=ds.dbname)
        for day in range(1, days + 1):
            if day > 1:
                added = append_rows(cluster, DEDUP_DB, ds.tables, day)
                added_rows.append(sum(added.values()))
                log(f"[dedup day {day}/{days}] appended " + ", ".join(f"{n} {r:,}" for n, r in added.items()))
            inv = invoke(bench, f"dedup-{day}")
            cluster.settle()
            m = run_pipeline(inv, cluster.admin_dsn)
            sizes.append(repo_bytes(repo))
            every.runs.append(Measurement(m.seconds, m.rss_kib))
            if day == 1:
                first.runs.append(Measurement(m.seconds, m.rss_kib, sizes[0]))
            log(
                f"[dedup day {day}/{days}] {m.seconds:.2f} s, peak RSS {m.rss_kib * 1024 / MB:,.0f} MB, "
                f"repository {sizes[-1] / MB:,.1f} MB ({sizes[-1] / sizes[0]:.2f}× day 1)"
            )
        every.runs[-1].output_bytes = sizes[-1]
    except RUN_ERRORS as exc:
        error = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        log(f"[dedup day {len(sizes) + 1}/{days}] FAILED — {redact(str(exc), cluster.admin_dsn)}")
        every.error, every.runs = f"day {len(sizes) + 1}: {error}", []
        if not first.runs:
            first.error = error
    finally:
        with contextlib.suppress(psycopg.Error):
            cluster.drop_database(DEDUP_DB)
        shutil.rmtree(repo, ignore_errors=True)
    notes = []
    if len(sizes) == days:
        notes.append(
            f"dedup{f' --chunk-size {chunk}' if chunk else ''}: a copy of the dataset backed up {days} times "
            "(`backup -j2`) into one repository; before "
            f"days 2-{days}, {DEDUP_GROWTH:.0%} new rows appended to every table with rows "
            f"({', '.join(f'{r:,}' for r in added_rows)} rows). Output MB = every file under the repository "
            "(hidden folders included, hard links once); repository after each day: "
            + ", ".join(f"{b / MB:,.1f}" for b in sizes)
            + " MB. Run once (no repeat, no warm-up)."
        )
    return {first.contender.name: first, every.contender.name: every}, notes


# -- the report -------------------------------------------------------------------------------


def startup_seconds(tools: Tools) -> float:
    """Wall time of ``backupkit --version``: the fixed import cost every backupkit command pays."""
    inv = Invocation([[*tools.backupkit, "--version"]], dict(os.environ))
    return statistics.median(run_pipeline(inv).seconds for _ in range(3))


def machine_lines(cluster: Cluster, tools: Tools) -> list[str]:
    """Where the numbers come from: CPU, memory, versions."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        ram = f"{kib / 1024 / 1024:.1f} GiB"
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    commit = (
        subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
        or "?"
    )
    import duckdb

    zstd = (
        tool_version([tools.zstd[0]]).strip("* ").split(", by")[0]
        if Path(tools.zstd[0]).name == "zstd"
        else "python zstandard (no zstd CLI)"
    )
    return [
        f"- machine: {nproc} CPUs ({cpu}), {ram} RAM, {platform.system()} {platform.release()}",
        f"- PostgreSQL {cluster.version()}; {tool_version([tools.pg('pg_dump')])}",
        f"- backupkit {backupkit.__version__} (git {commit}); Python {platform.python_version()}; "
        f"duckdb {duckdb.__version__}; {zstd}",
        f"- RSS floor: `true` started the same way reads {rss_floor_mb():.1f} MB (the launcher's share); "
        f"backupkit start-up (`backupkit --version`): {startup_seconds(tools):.2f} s, "
        "included in every backupkit row",
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(results: dict[str, Result], a: str, b: str) -> float | None:
    ra, rb = results.get(a), results.get(b)
    if not ra or not rb or ra.median is None or not rb.median:
        return None
    return ra.median / rb.median


def _size_ratio(results: dict[str, Result], a: str, b: str) -> float | None:
    ra, rb = results.get(a), results.get(b)
    if not ra or not rb or ra.output_mb is None or not rb.output_mb:
        return None
    return ra.output_mb / rb.output_mb


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _cell(text: str) -> str:
    """Escape a markdown table cell."""
    return text.replace("|", "\\|")


def report_table(results: dict[str, Result], ds: Dataset) -> list[str]:
    """The markdown table: one row per contender, targets next to the ratios they judge."""
    head = ["contender", "runs", "median s", "min s", "MB/s", "peak RSS MB", "output MB", "vs peer", "vs floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * 6 + ["---", "---"]) + "|"]
    targets = {(t.contender, t.peer): t for t in TARGETS if not t.size}
    size_targets = {(t.contender, t.peer): t for t in TARGETS if t.size}
    for name, res in results.items():
        if res.error and not res.runs:
            lines.append("| " + " | ".join([_cell(name), "0", f"FAILED: {_cell(res.error)}"] + ["—"] * 6) + " |")
            continue
        mbps = ds.copy_mb / res.median if res.median else None
        rss = _fmt(res.peak_rss_mb, 0)
        rss_target = targets.get((name, None))
        if rss_target and res.peak_rss_mb is not None:
            rss += f" (target <{rss_target.max_rss_mb:g}: {_verdict(res.peak_rss_mb < rss_target.max_rss_mb)})"
        peers = []
        for peer in PEERS.get(name, []):
            r = _ratio(results, name, peer)
            if r is None:
                continue
            text = f"{r:.2f}× {peer}"
            t = targets.get((name, peer))
            if t:
                text += f" (target ≤{t.max_ratio:g}: {_verdict(r <= t.max_ratio)})"
            peers.append(text)
        for peer in SIZE_PEERS.get(name, []):
            r = _size_ratio(results, name, peer)
            if r is None:
                continue
            text = f"size {r:.2f}× {peer}"
            t = size_targets.get((name, peer))
            if t:
                text += f" (target ≤{t.max_ratio:g}: {_verdict(r <= t.max_ratio)})"
            peers.append(text)
        vs_floor = _ratio(results, name, FLOOR)
        floor_text = "—" if vs_floor is None else f"{vs_floor:.2f}×"
        t = targets.get((name, FLOOR))
        if t and vs_floor is not None:
            floor_text += f" (target ≤{t.max_ratio:g}: {_verdict(vs_floor <= t.max_ratio)})"
        name_cell = name + (f" (failed once: {res.error})" if res.error else "")
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in [
                    name_cell,
                    str(len(res.runs)),
                    _fmt(res.median),
                    _fmt(res.best),
                    _fmt(mbps, 0),
                    rss,
                    _fmt(res.output_mb, 1),
                    "; ".join(peers) or "—",
                    floor_text,
                ]
            )
            + " |"
        )
    return lines


LEGEND = [
    "MB = 10^6 bytes. MB/s = the dataset's COPY output (text format) ÷ median seconds, for every row alike "
    "(a common yardstick, not the bytes each tool touched). Peak RSS = ru_maxrss from wait4: for "
    "pg_dump -j / pg_restore -j the largest single process of the tree, for a pipeline the sum of its "
    "members; server memory (PostgreSQL's, the S3 server's) is not included. Output MB: backup size on "
    "disk (in the bucket for s3://); for restores the target database's size. Ratios are of medians; "
    "the floor is one psql session COPYing every table to /dev/null.",
]


def size_line(results: dict[str, Result]) -> list[str]:
    """The snapshot's size next to every other backup's, as ratios (a line of text, not a table cell)."""
    ours = results.get(BK_BACKUP_2)
    if not ours or ours.output_mb is None:
        return []
    peers = [
        (name, mb)
        for name in (PG_DUMP_FD, PG_DUMP_FC, PG_DUMP_ZSTD)
        if name in results and (mb := results[name].output_mb)
    ]
    if not peers:
        return []
    return [
        "",
        f"Snapshot size: {ours.output_mb:,.1f} MB = "
        + ", ".join(f"{ours.output_mb / mb:.2f}× {name} ({mb:,.1f} MB)" for name, mb in peers)
        + ".",
    ]


def summary_lines(
    results: dict[str, Result], ds: Dataset, machine: list[str], repeat: int, notes: list[str], warmup: int = 0
) -> list[str]:
    """Everything printed: machine, dataset, the table, a legend."""
    out = [
        "## backupkit benchmark",
        "",
        *machine,
        f"- dataset: {ds.describe()}",
        f"- {warmup} untimed warm-up round(s), then {repeat} repetition(s), contenders interleaved; "
        f"page cache warm; timed region = the subprocess only",
        "",
    ]
    out += report_table(results, ds)
    out += size_line(results)
    out += ["", *LEGEND, *notes]
    return out


# -- the RSS-vs-size mode ------------------------------------------------------------------------


def rss_scales(cluster: Cluster, tools: Tools, scales: list[float], repeat: int, work: Path) -> list[str]:
    """Build each scale's dataset in turn and measure ``backupkit backup --jobs 2`` on it."""
    rows = []
    contender = Contender(BK_BACKUP_2, "backup", _backupkit_backup(2))
    for i, scale in enumerate(scales):
        ds = build_dataset(cluster, tools, f"{DB_PREFIX}rss_{i}", scale)
        log(ds.describe())
        bench = Bench(cluster, tools, ds, Fixtures(), work / "runs")
        bench.runs_dir.mkdir(parents=True, exist_ok=True)
        res = run_interleaved(bench, [contender], repeat)[contender.name]
        cluster.drop_database(ds.dbname)
        rows.append((ds, res))
    lines = [
        "| scale | rows | COPY text MB | backup -j2 median s | peak RSS MB | snapshot MB |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for ds, res in rows:
        lines.append(
            f"| {ds.scale:g} | {ds.rows:,} | {ds.copy_mb:,.0f} | "
            f"{_fmt(res.median) if not res.error else 'FAILED: ' + _cell(res.error)} | "
            f"{_fmt(res.peak_rss_mb, 0)} | {_fmt(res.output_mb, 1)} |"
        )
    (small, r0), (big, r1) = rows[0], rows[-1]
    if r0.peak_rss_mb and r1.peak_rss_mb:
        lines += [
            "",
            f"Data grew {big.copy_bytes / small.copy_bytes:.1f}×, peak RSS "
            f"{r1.peak_rss_mb / r0.peak_rss_mb:.2f}× ({r0.peak_rss_mb:.0f} → {r1.peak_rss_mb:.0f} MB).",
        ]
    return lines


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--scale 0.1 is a quick run (~150 MB of COPY text); --scale 1 ~1.5 GB.",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="dataset size: pgbench -s 100*S plus 2,000,000*S rows of mixed (default 1)",
    )
    p.add_argument("--repeat", type=int, default=3, help="repetitions of every contender (default 3)")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds of every contender before the timed ones (default 1)"
    )
    p.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated groups among {','.join(GROUPS)} (the floor always runs)",
    )
    p.add_argument("--out", type=Path, help="also write the markdown report to this file")
    p.add_argument(
        "--dsn",
        default=os.environ.get("BACKUPKIT_BENCH_DSN"),
        help="use this server (role needs CREATEDB; databases bkbench_* are created and dropped) "
        "instead of an embedded one; default $BACKUPKIT_BENCH_DSN, which keeps the password "
        "out of ps",
    )
    p.add_argument(
        "--rss-scales",
        metavar="S1,S2",
        help="only measure peak RSS of backupkit backup --jobs 2 at these scales, side by side",
    )
    p.add_argument(
        "--sizes",
        metavar="S1,S2,...",
        help="backup and restore against pg_dump/pg_restore at each of these scales, one table "
        "(e.g. 0.002,0.027,0.3,1: about 1 MB, 40 MB, 450 MB, 1.5 GB)",
    )
    p.add_argument(
        "--rtt",
        type=float,
        default=0.0,
        metavar="MS",
        help="with --sizes: the contenders reach the server through benchmarks/lagproxy.py with "
        "these round trips in milliseconds (a hosted database is a network away; e.g. 10)",
    )
    p.add_argument("--workdir", type=Path, help="where snapshots and dumps go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    a = p.parse_args(argv)
    a.groups = {g.strip() for g in a.only.split(",") if g.strip()}
    if unknown := a.groups - set(GROUPS):
        p.error(f"--only: unknown group(s) {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    if a.repeat < 1 or a.scale <= 0 or a.warmup < 0:
        p.error("--repeat must be ≥ 1, --warmup ≥ 0 and --scale > 0")
    if a.sizes:
        try:
            a.sizes = [float(x) for x in a.sizes.split(",") if x.strip()]
        except ValueError:
            p.error("--sizes takes numbers, e.g. 0.002,0.027,0.3,1")
        if not a.sizes or min(a.sizes) <= 0:
            p.error("--sizes needs positive scales")
    if a.rtt < 0 or (a.rtt and not a.sizes):
        p.error("--rtt takes milliseconds ≥ 0, with --sizes")
    if a.rss_scales:
        try:
            a.rss_scales = [float(s) for s in a.rss_scales.split(",") if s.strip()]
        except ValueError:
            p.error("--rss-scales takes numbers, e.g. 0.05,0.2")
        if len(a.rss_scales) < 2 or min(a.rss_scales) <= 0:
            p.error("--rss-scales needs at least two positive scales")
    return a


def benchmark(cluster: Cluster, tools: Tools, args: argparse.Namespace, work: Path) -> list[str]:
    """The main mode: build the dataset, the fixtures, run everything, return the report lines."""
    ds = build_dataset(cluster, tools, f"{DB_PREFIX}src", args.scale)
    log(ds.describe())
    notes = []
    diff_ready = diff_available()
    if "diff" in args.groups and not diff_ready:
        print("diff: not available", file=sys.stderr)
        notes.append("diff: not available (backupkit/diff.py does not exist yet)")
    groups = set(args.groups)
    if "s3" in groups and not moto_available():
        print("s3: not available (moto is not installed: pip install 'moto[server]')", file=sys.stderr)
        notes.append("s3: not available (moto[server] is not installed)")
        groups.discard("s3")
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(open_s3(work)) if "s3" in groups else None
        fixtures = make_fixtures(cluster, tools, ds, work, groups, diff_ready, s3)
        chosen = [
            c
            for c in CONTENDERS
            if c.group == "floor"
            or ((c.group in groups or groups.intersection(c.also)) and (c.group != "diff" or diff_ready))
        ]
        bench = Bench(cluster, tools, ds, fixtures, work / "runs", s3)
        bench.runs_dir.mkdir(parents=True, exist_ok=True)
        results = run_interleaved(bench, chosen, args.repeat, args.warmup)
    if "dedup" in groups:
        for chunk in (None, DEDUP_SMALL_CHUNKS):
            dedup_results, dedup_notes = run_dedup(bench, chunk=chunk)
            results.update(dedup_results)
            notes += dedup_notes
    if "zstd" not in Path(tools.zstd[0]).name and "backup" in groups:
        notes.append("zstd CLI not found: pg_dump -Fp was piped into python's zstandard at level 3.")
    if s3 is not None:
        notes.append(
            "s3:// rows: a moto S3 server on 127.0.0.1 (a local stand-in, in its own process, sharing the CPUs): "
            "they measure backupkit's own S3 overhead (requests, multipart uploads, the server-side copy "
            "that publishes a snapshot), not a network. Targets: ≤1.25× the same command on local disk."
        )
    return summary_lines(results, ds, machine_lines(cluster, tools), args.repeat, notes, args.warmup)


def precompile() -> None:
    """Byte-compile the checkout's backupkit, as pip does when it installs a package: where
    PYTHONDONTWRITEBYTECODE is set (this project's machine), an editable install would
    otherwise compile its modules again in every timed run (~0.04 s of each)."""
    import compileall

    compileall.compile_dir(str(Path(backupkit.__file__).parent), quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = Tools.find()
    precompile()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="backupkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with open_cluster(args.dsn) as cluster:
            try:
                if args.rss_scales:
                    lines = [
                        "## backupkit backup --jobs 2: peak RSS vs dataset size",
                        "",
                        *machine_lines(cluster, tools),
                        "",
                    ]
                    lines += rss_scales(cluster, tools, args.rss_scales, args.repeat, work)
                elif args.sizes:
                    from sizes import sizes_report  # benchmarks/sizes.py: imports this module

                    lines = sizes_report(cluster, tools, args.sizes, args.repeat, args.warmup, work, args.rtt)
                else:
                    lines = benchmark(cluster, tools, args, work)
            finally:
                if args.dsn:  # an embedded server is deleted whole; on a real one, clean up after us
                    for (name,) in cluster.execute(
                        "postgres",
                        sql.SQL("SELECT datname FROM pg_database WHERE starts_with(datname, {})").format(
                            sql.Literal(DB_PREFIX)
                        ),
                    ):
                        cluster.drop_database(name)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
