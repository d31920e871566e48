"""The Supabase project's own tables (auth, storage) in a restore: whose rows it loads.

They are never created or dropped; the project keeps the rows of some (the
platform's migration records), the snapshot holds none for others, and the
rest get the snapshot's rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..pg.platform import Platform, kept_rows
from ..pg.platform import empty as platform_empty
from ..snapshot import manifest as mf

if TYPE_CHECKING:  # plan imports this module
    from .plan import RestorePlan


def platform_loading(platform: Platform) -> tuple[list[str], list[str]]:
    """The platform tables whose rows the project keeps, and those this restore loads rows into
    (the others hold none in the snapshot)."""
    kept = kept_rows(platform)
    skip = set(kept) | set(platform_empty(platform))
    return kept, sorted(set(platform.tables) - skip)


def leave_platform_rows(plan: RestorePlan, platform: Platform) -> None:
    """Take off ``plan`` the platform tables whose rows the project keeps, or that hold none."""
    kept, loading = platform_loading(platform)
    if kept:
        plan.notes.append("kept the project's own " + ", ".join(kept) + " (the platform's migration records)")
    plan.tables = [t for t in plan.tables if mf.table_key(t) not in platform.tables or mf.table_key(t) in loading]
    if loading:
        plan.notes.append(
            "loaded rows into the project's own " + ", ".join(loading) + "; their owners and grants are unchanged"
        )
