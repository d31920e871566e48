"""Where snapshot bytes live: the storage interface, its local, in-memory and S3
implementations, the repository (which snapshots exist, pins) and its lock.

Every read, write, rename and delete of snapshot files goes through here.
May import: ``errors``, ``runtime`` (``runtime.place``: where a lock's holder runs).
"""
