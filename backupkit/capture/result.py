"""What a finished backup returns: the snapshot, its manifest, and what is worth a warning."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation


@dataclass
class BackupResult:
    """A finished snapshot: where it is, its manifest, and anything worth a warning."""

    location: SnapshotLocation
    manifest: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Bytes of data files the repository had already (shared with earlier snapshots, not stored again).
    reused_bytes: int = 0
    #: Storage bucket files read from the endpoint (the others were unchanged since the last
    #: snapshot and carried over), and their bytes.
    storage_files_read: int = 0
    storage_bytes_read: int = 0

    @property
    def new_bytes(self) -> int:
        """Bytes this backup added to the repository: every file but the shared ones it had already."""
        return self.bytes - self.reused_bytes

    @property
    def path(self) -> Path:
        """The snapshot's folder (a snapshot in a local repository; see ``where`` for any)."""
        return self.location.path

    @property
    def where(self) -> str:
        """Where the snapshot is, for people: its folder, or its ``s3://`` URL."""
        return str(self.location)

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def rows(self) -> int:
        return sum(t["rows"] for t in self.manifest["tables"])

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in mf.all_files(self.manifest))

    def summary(self) -> list[dict[str, Any]]:
        """One row per table: name, rows, compressed bytes, files."""
        return [
            {
                "table": mf.table_key(t),
                "rows": t["rows"],
                "bytes": sum(f["bytes"] for f in t["files"]),
                "files": len(t["files"]),
            }
            for t in self.manifest["tables"]
        ]
