"""Checking a snapshot against its manifest: every byte hashed, nothing missing, nothing extra."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from . import manifest as mf
from .datafile import count_rows
from .errors import SnapshotDamaged, SnapshotNotFound

_READ = 1 << 20


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


def _check_file(folder: Path, entry: dict, rows: int | None, data_format: str = mf.CSV) -> list[str]:
    path = folder / entry["path"]
    if not path.is_file():
        return [f"missing file {entry['path']}"]
    problems = []
    size = path.stat().st_size
    if size != entry["bytes"]:
        problems.append(f"{entry['path']}: {size} bytes, manifest says {entry['bytes']} (truncated or grown)")
    if sha256_file(path) != entry["sha256"]:
        problems.append(f"{entry['path']}: checksum mismatch (the file's content changed)")
    if rows is not None and not problems:
        try:
            found = count_rows(path, data_format)
        except zstandard.ZstdError as exc:
            return [f"{entry['path']}: cannot be decompressed ({exc})"]
        if found != rows:
            problems.append(f"{entry['path']}: {found} rows, manifest says {rows}")
    return problems


def verify(snapshot: Path | str, *, deep: bool = False, jobs: int | None = None) -> VerifyReport:
    """Re-hash every file of ``snapshot`` against its manifest (and with ``deep``, recount rows).

    Returns a report instead of raising, so callers can show every problem at once.
    """
    folder = Path(snapshot)
    if not folder.is_dir():
        raise SnapshotNotFound(f"no snapshot at {folder}", hint="run `backupkit list DIR` to see the snapshots")
    report = VerifyReport(folder, deep=deep)
    try:
        m = mf.read(folder)
    except SnapshotDamaged as exc:
        report.problems.extend(exc.problems or [str(exc)])
        return report
    if m.get("manifest_sha256") != mf.digest(m):
        report.problems.append("manifest.json was edited after the backup (its checksum does not match)")
    try:
        entries = [(e, None, mf.CSV) for e in m.get("schema_files", [])]
        for t in m["tables"]:
            entries += [(f, f.get("rows") if deep else None, mf.data_format(t)) for f in t["files"]]
        listed = {e["path"] for e, _, _ in entries}
        for e, _, _ in entries:  # checked here so a hand-edited entry is a problem, not a crash
            if not isinstance(e.get("sha256"), str) or not isinstance(e.get("bytes"), int):
                raise KeyError(f"{e['path']}: sha256/bytes")
    except (KeyError, TypeError, AttributeError) as exc:
        report.problems.append(f"manifest.json is missing required fields ({exc})")
        return report
    workers = jobs or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for problems in pool.map(lambda er: _check_file(folder, *er), entries):
            report.problems.extend(problems)
    report.files = len(entries)
    report.bytes = sum(e.get("bytes", 0) for e, _, _ in entries)
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != mf.MANIFEST and rel not in listed:
            report.problems.append(f"unexpected file {rel} (not in the manifest)")
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
