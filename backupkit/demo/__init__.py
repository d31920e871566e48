"""The demo: a Supabase-shaped database on embedded PostgreSQL, its data, and the
notebooks' default server.

May import anything in ``backupkit``; nothing imports it but the CLI and the notebooks.
"""

from .run import DemoResult, demo_dsn, demo_server, notebook_dsn, run_demo, stop_demo_server

__all__ = ["DemoResult", "demo_dsn", "demo_server", "notebook_dsn", "run_demo", "stop_demo_server"]
