"""The demo: a Supabase-shaped database on embedded PostgreSQL, its data, and the
notebooks' default server.

May import anything in ``backupkit``; nothing imports it but the CLI and the notebooks.
"""

from .run import (
    DemoPaths,
    DemoResult,
    Removed,
    demo_dsn,
    demo_server,
    notebook_dsn,
    remove_demo,
    run_demo,
    stop_demo_server,
    where,
)

__all__ = [
    "DemoPaths",
    "DemoResult",
    "Removed",
    "demo_dsn",
    "demo_server",
    "notebook_dsn",
    "remove_demo",
    "run_demo",
    "stop_demo_server",
    "where",
]
