"""Restoring a snapshot (``backupkit.restore``): planning, the SQL scripts,
the parallel load, in-place and selective restores, and the checks after.

``job`` puts a restore together; ``plan`` decides what it does (``selection``,
``partitions``, ``in_place``, ``platform_rows``, ``database_scripts``,
``cron_jobs``, ``left_out`` and ``in_the_way`` help; ``obstacles``,
``privileges`` and ``checks`` find what would stop it); ``scripts`` renders its
SQL (with ``auth_stand_in``); ``load`` runs it in one transaction, ``parallel``
with several jobs (``mark`` flags an unfinished one in the target).

May import: ``errors``, ``runtime``, ``snapshot``, ``storage``, ``pg``.
"""
