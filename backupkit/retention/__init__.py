"""Retention: the pure keep/remove policy (``apply_policy``) and ``prune``, which applies it.

May import: ``errors``, ``snapshot``, ``storage``.
"""

from .policy import Policy, SnapshotInfo, apply_policy, parse_duration

__all__ = ["Policy", "SnapshotInfo", "apply_policy", "parse_duration"]
