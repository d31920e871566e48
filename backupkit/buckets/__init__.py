"""Supabase Storage bucket files beside the database (``backup --storage-bucket``).

``endpoint``: the S3-compatible Storage API and its keys; ``capture``: copying files into a
snapshot; ``reconcile``: rows of ``storage.objects`` against the files; ``restore``: files
back into buckets.

May import: ``errors``, ``runtime``, ``snapshot``, ``storage``.
"""
