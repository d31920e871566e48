"""Checking a snapshot against its manifest: every byte hashed, nothing missing, nothing extra."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from . import manifest as mf
from .datafile import count_rows
from .errors import ConfigError, SnapshotDamaged, SnapshotNotFound

_READ = 1 << 20
#: The most parallel workers (``--jobs``) any command accepts.  A fixed cap rather than one
#: relative to this machine's CPUs: the work is mostly PostgreSQL's and the disk's, each job
#: holds a server connection (max_connections is often 100, fewer behind Supabase's pooler),
#: and a cap that changed from machine to machine would make a scheduled job fail elsewhere.
MAX_JOBS = 64


@dataclass
class VerifyReport:
    """The outcome of verifying one snapshot; ``ok`` is False when ``problems`` is not empty."""

    snapshot: Path
    problems: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    deep: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"snapshot": str(self.snapshot), "ok": self.ok, "problems": self.problems,
                "files": self.files, "bytes": self.bytes, "deep": self.deep}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(_READ):
            h.update(block)
    return h.hexdigest()


def _sha256_fd(fd: int) -> tuple[str, int]:
    """Hex SHA-256 and length of what an open file descriptor reads (the fd is left open)."""
    h = hashlib.sha256()
    n = 0
    while block := os.read(fd, _READ):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n


def _check_file(folder: Path, entry: dict, rows: int | None, data_format: str = mf.CSV) -> list[str]:
    # open_member refuses links and paths leading outside before anything is read or
    # even stat-ed there, so a problem never discloses the size of a file elsewhere.
    try:
        fd = mf.open_member(folder, entry["path"])
    except SnapshotDamaged as exc:
        return exc.problems or [str(exc)]
    problems = []
    try:
        size = os.fstat(fd).st_size
        if size != entry["bytes"]:
            problems.append(f"{entry['path']}: {size} bytes, manifest says {entry['bytes']} (truncated or grown)")
        try:
            sha, _ = _sha256_fd(fd)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise mf.unreadable(folder / entry["path"], exc) from None
            return problems + [f"{entry['path']}: cannot be read ({exc.strerror or exc})"]
        if sha != entry["sha256"]:
            problems.append(f"{entry['path']}: checksum mismatch (the file's content changed)")
    finally:
        os.close(fd)
    if rows is not None and not problems:
        try:
            # Hashed just above through the same contained path; count_rows opens it by name.
            found = count_rows(folder / entry["path"], data_format)
        except zstandard.ZstdError as exc:
            return [f"{entry['path']}: cannot be decompressed ({exc})"]
        except OSError as exc:
            raise mf.unreadable(folder / entry["path"], exc) from None
        if found != rows:
            problems.append(f"{entry['path']}: {found} rows, manifest says {rows}")
    return problems


def _walk_problems(folder: Path, listed: set[str]) -> list[str]:
    """Links, special files and files the manifest does not list, found without following links."""
    problems = []

    def fail(exc: OSError) -> None:
        raise mf.unreadable(exc.filename or folder, exc)

    for root, dirs, files, in os.walk(folder, onerror=fail, followlinks=False):
        base = Path(root)
        for name in sorted(dirs + files):
            path = base / name
            rel = path.relative_to(folder).as_posix()
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise mf.unreadable(path, exc) from None
            if stat.S_ISLNK(st.st_mode):
                # The target is never looked at: whether it exists says nothing we may disclose.
                problems.append(f"{rel} is a symbolic link (a snapshot holds no links; dangling or not, "
                                "it is not the snapshot's own)")
            elif stat.S_ISDIR(st.st_mode):
                continue
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"{rel} is not a regular file (a device, socket or pipe)")
            elif rel != mf.MANIFEST and rel not in listed:
                problems.append(f"unexpected file {rel} (not in the manifest)")
    return problems


def check_jobs(jobs: int | None) -> int | None:
    """``jobs`` if it is a sane number of parallel workers (1 to ``MAX_JOBS``); else ConfigError."""
    if jobs is None:
        return None
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(
            f"--jobs {jobs!r} is out of range: use 1 to {MAX_JOBS}",
            hint="each job is a process with its own PostgreSQL connection; a few per CPU core is plenty",
        )
    return jobs


def verify(snapshot: Path | str, *, deep: bool = False, jobs: int | None = None) -> VerifyReport:
    """Re-hash every file of ``snapshot`` against its manifest (and with ``deep``, recount rows).

    Returns a report instead of raising, so callers can show every problem at once.
    Problems include a malformed manifest, file paths that are not plain relative
    paths inside the snapshot, symbolic links anywhere in it (to files or folders,
    dangling or not), special files, and files the manifest does not list.

    What passing proves: every file is byte-for-byte what the manifest says, and the
    manifest is as written (its self-checksum matches) — i.e. no accidental damage.
    It does not prove the snapshot is genuine: someone able to write the snapshot
    can change files and reseal the manifest consistently (``manifest.digest``).

    Raises ``SnapshotNotFound`` when there is no folder and ``SnapshotError`` when a
    file or folder of the snapshot cannot be read (permissions): an unreadable
    snapshot is not known to be damaged, and neither is it known to be intact.
    """
    folder = Path(snapshot)
    jobs = check_jobs(jobs)
    try:
        if not folder.is_dir():
            raise SnapshotNotFound(f"no snapshot at {folder}", hint="run `backupkit list DIR` to see the snapshots")
    except OSError as exc:
        raise mf.unreadable(folder, exc) from None
    report = VerifyReport(folder, deep=deep)
    try:
        m = mf.read(folder)
    except SnapshotDamaged as exc:
        report.problems.extend(exc.problems or [str(exc)])
        return report
    if m.get("manifest_sha256") != mf.digest(m):
        report.problems.append("manifest.json was edited after the backup (its checksum does not match)")
    # mf.read validated the shape: every entry has a contained path, a size and a hash.
    entries = [(e, None, mf.CSV) for e in m.get("schema_files", [])]
    for t in m["tables"]:
        entries += [(f, f.get("rows") if deep else None, mf.data_format(t)) for f in t["files"]]
    listed = {e["path"] for e, _, _ in entries}
    workers = jobs or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for problems in pool.map(lambda er: _check_file(folder, *er), entries):
            report.problems.extend(problems)
    report.files = len(entries)
    report.bytes = sum(e["bytes"] for e, _, _ in entries)
    report.problems.extend(_walk_problems(folder, listed))
    return report


def ensure_intact(snapshot: Path | str, *, deep: bool = False) -> dict:
    """Verify ``snapshot`` and return its manifest, or raise SnapshotDamaged naming every problem."""
    report = verify(snapshot, deep=deep)
    if not report.ok:
        raise SnapshotDamaged(
            f"snapshot {Path(snapshot).name} is damaged: " + "; ".join(report.problems[:5])
            + (f" (and {len(report.problems) - 5} more)" if len(report.problems) > 5 else ""),
            report.problems,
            hint="restore from another snapshot (`backupkit list DIR`), and check the storage",
        )
    return mf.read(snapshot)
