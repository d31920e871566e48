"""backupkit: checkable, exactly-restorable snapshots of Supabase / PostgreSQL databases.

The public API is what ``__all__`` lists; the modules behind it are private.
Names are imported on first use (PEP 562), so ``backupkit verify`` does not pay
for psycopg and DuckDB, and a scheduled job starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> the module that defines it (inside the subpackages; see README's module map)
_EXPORTS = {
    "backup": "capture.job",
    "BackupResult": "capture.result",
    "check": "capture.preflight",
    "CheckReport": "capture.preflight",
    "restore": "recovery.job",
    "drill": "drills.job",
    "DrillResult": "drills.job",
    "RestorePlan": "recovery.job",
    "RestoreResult": "recovery.job",
    "verify": "snapshot.verify",
    "ensure_intact": "snapshot.verify",
    "VerifyReport": "snapshot.verify",
    "age_keygen": "snapshot.encryption",
    "list_snapshots": "storage.repository",
    "resolve_snapshot": "storage.repository",
    "set_pin": "storage.repository",
    "Snapshot": "storage.repository",
    "prune": "retention.prune",
    "PruneResult": "retention.prune",
    "Policy": "retention.policy",
    "apply_policy": "retention.policy",
    "open_snapshot": "lens.duck",
    "diff_snapshots": "lens.diff",
    "integrity": "lens.integrity",
    "resolve_dsn": "pg.dsn",
    "redact": "pg.dsn",
    "BackupkitError": "errors",
    "ConfigError": "errors",
    "ConnectionFailed": "errors",
    "ToolError": "errors",
    "SourceError": "errors",
    "RowLevelSecurityError": "errors",
    "SnapshotError": "errors",
    "SnapshotNotFound": "errors",
    "SnapshotDamaged": "errors",
    "StorageError": "errors",
    "RestoreError": "errors",
    "TargetNotEmpty": "errors",
    "LockError": "errors",
    "RetentionError": "errors",
    "BucketError": "errors",
    "DrillFailed": "errors",
}
_RENAMED = {"resolve_snapshot": "resolve", "age_keygen": "keygen"}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'backupkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .capture.job import backup
    from .capture.preflight import CheckReport, check
    from .capture.result import BackupResult
    from .drills.job import DrillResult, drill
    from .errors import (
        BackupkitError,
        BucketError,
        ConfigError,
        ConnectionFailed,
        DrillFailed,
        LockError,
        RestoreError,
        RetentionError,
        RowLevelSecurityError,
        SnapshotDamaged,
        SnapshotError,
        SnapshotNotFound,
        SourceError,
        StorageError,
        TargetNotEmpty,
        ToolError,
    )
    from .lens.diff import diff_snapshots
    from .lens.duck import open_snapshot
    from .lens.integrity import integrity
    from .pg.dsn import redact, resolve_dsn
    from .recovery.job import RestorePlan, RestoreResult, restore
    from .retention.policy import Policy, apply_policy
    from .retention.prune import PruneResult, prune
    from .snapshot.encryption import keygen as age_keygen
    from .snapshot.verify import VerifyReport, ensure_intact, verify
    from .storage.repository import Snapshot, list_snapshots, set_pin
    from .storage.repository import resolve as resolve_snapshot
