"""backupkit: checkable, exactly-restorable snapshots of Supabase / PostgreSQL databases.

The public API is what ``__all__`` lists; the modules behind it are private.
Names are imported on first use (PEP 562), so ``backupkit verify`` does not pay
for psycopg and DuckDB, and a scheduled job starts fast.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> private module that defines it
_EXPORTS = {
    "backup": "backup", "BackupResult": "backup",
    "restore": "restore", "RestorePlan": "restore", "RestoreResult": "restore",
    "verify": "verify", "ensure_intact": "verify", "VerifyReport": "verify",
    "check": "preflight", "CheckReport": "preflight",
    "list_snapshots": "store", "resolve_snapshot": "store", "set_pin": "store", "Snapshot": "store",
    "prune": "prune", "PruneResult": "prune",
    "Policy": "retention", "apply_policy": "retention",
    "open_snapshot": "duck", "diff_snapshots": "diff", "integrity": "integrity",
    "resolve_dsn": "dsn", "redact": "dsn",
    "BackupkitError": "errors", "ConfigError": "errors", "ConnectionFailed": "errors",
    "ToolError": "errors", "SourceError": "errors", "RowLevelSecurityError": "errors",
    "SnapshotError": "errors", "SnapshotNotFound": "errors", "SnapshotDamaged": "errors",
    "StorageError": "errors", "RestoreError": "errors", "TargetNotEmpty": "errors",
    "LockError": "errors", "RetentionError": "errors",
}
_RENAMED = {"resolve_snapshot": "resolve"}

__all__ = ["__version__", *_EXPORTS]


class _Package(types.ModuleType):
    """Keeps ``backupkit.backup`` the function even after ``backupkit/backup.py`` is imported.

    Importing a submodule sets it as an attribute of its package; for the four
    modules named like the function they define (backup, restore, verify, prune, integrity)
    that would shadow the function, so the module is not stored there.
    """

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'backupkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .backup import BackupResult, backup
    from .diff import diff_snapshots
    from .integrity import integrity
    from .dsn import redact, resolve_dsn
    from .duck import open_snapshot
    from .errors import (BackupkitError, ConfigError, ConnectionFailed, LockError, RestoreError,
                         RetentionError, RowLevelSecurityError, SnapshotDamaged, SnapshotError,
                         SnapshotNotFound, SourceError, StorageError, TargetNotEmpty, ToolError)
    from .preflight import CheckReport, check
    from .prune import PruneResult, prune
    from .restore import RestorePlan, RestoreResult, restore
    from .retention import Policy, apply_policy
    from .store import Snapshot, list_snapshots, resolve as resolve_snapshot, set_pin
    from .verify import VerifyReport, ensure_intact, verify
