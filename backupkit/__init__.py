"""backupkit: checkable, exactly-restorable snapshots of Supabase / PostgreSQL databases.

The public API is what ``__all__`` lists; modules behind it are private.
"""

__version__ = "0.1.0"

from .backup import BackupResult, backup
from .diff import diff_snapshots, integrity
from .duck import open_snapshot
from .preflight import CheckReport, check
from .prune import PruneResult, prune
from .restore import RestorePlan, RestoreResult, restore
from .retention import Policy, apply_policy
from .dsn import redact, resolve_dsn
from .errors import (
    BackupkitError,
    ConfigError,
    ConnectionFailed,
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
from .store import Snapshot, list_snapshots, resolve as resolve_snapshot, set_pin
from .verify import VerifyReport, ensure_intact, verify

__all__ = [
    "__version__",
    "backup", "BackupResult",
    "restore", "RestorePlan", "RestoreResult",
    "check", "CheckReport",
    "prune", "PruneResult", "Policy", "apply_policy",
    "open_snapshot", "diff_snapshots", "integrity",
    "verify", "ensure_intact", "VerifyReport",
    "list_snapshots", "resolve_snapshot", "set_pin", "Snapshot",
    "resolve_dsn", "redact",
    "BackupkitError", "ConfigError", "ConnectionFailed", "ToolError", "SourceError",
    "RowLevelSecurityError", "SnapshotError", "SnapshotNotFound", "SnapshotDamaged",
    "StorageError", "RestoreError", "TargetNotEmpty", "LockError", "RetentionError",
]
