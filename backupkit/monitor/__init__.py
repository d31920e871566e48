"""What a monitor needs to know about a repository: ``status`` (the newest snapshot's age,
the last drill, the last scheduled run) with an exit code per state.

May import: ``errors``, ``snapshot``, ``storage``, ``drill`` (its records).
"""
