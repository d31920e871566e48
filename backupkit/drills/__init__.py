"""Restore drills (``backupkit drill``): prove a snapshot restores into a working database.

``target``: the throwaway database and its clean-up; ``compare``: the restored database
against the manifest; ``record``: drill results beside the snapshots; ``job``: ``drill``.

May import: ``errors``, ``runtime``, ``snapshot``, ``storage``, ``pg``, ``recovery``.
"""
