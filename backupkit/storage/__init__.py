"""Where snapshot bytes live: the storage interface, its local and in-memory
implementations, the repository (which snapshots exist, pins) and its lock.

Every read, write, rename and delete of snapshot files goes through here.
May import: ``errors``.
"""
