"""Drill results, kept beside the snapshots: ``DIR/.drills/<snapshot id>/<time>.json``.

A snapshot never changes once written, so its drills live outside it, like pins: one
small JSON file per drill, never rewritten (the history is the trend the report shows).
Written through the repository's storage, so a drill of an ``s3://`` repository is
recorded in the bucket.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

from ..storage.base import Storage

#: The drill records' folder at the top of the repository (hidden: never a snapshot).
DRILLS = ".drills"


@dataclass
class DrillRecord:
    """One drill of one snapshot: when, how long, and what differed (nothing: it passed)."""

    snapshot: str
    started_at: str
    seconds: float
    ok: bool
    differences: list[str] = field(default_factory=list)
    tables: int = 0
    rows: int = 0
    target: str = "embedded"

    def to_dict(self) -> dict:
        return asdict(self)


def write(storage: Storage, record: DrillRecord) -> str:
    """Store ``record``; its storage name."""
    stamp = datetime.fromisoformat(record.started_at).strftime("%Y%m%dT%H%M%S.%fZ")
    name = f"{DRILLS}/{record.snapshot}/{stamp}.json"
    with storage.create(name) as out:
        out.write(json.dumps(record.to_dict(), indent=2).encode() + b"\n")
    return name


def history(storage: Storage) -> list[DrillRecord]:
    """Every drill recorded in the repository, oldest first (unreadable records skipped)."""
    try:
        entries = [e for e in storage.walk(DRILLS) if e.kind == "file" and e.name.endswith(".json")]
    except FileNotFoundError:
        return []
    records = []
    for e in entries:
        try:
            records.append(DrillRecord(**json.loads(storage.read(e.name, 1 << 20))))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(records, key=lambda r: r.started_at)


def latest(storage: Storage) -> DrillRecord | None:
    """The newest drill of any snapshot, or None."""
    records = history(storage)
    return records[-1] if records else None
