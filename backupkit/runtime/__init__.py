"""Process-level helpers shared by backup and restore: signals, deadlines, the task pool.

May import: ``errors``.
"""
