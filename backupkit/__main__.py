"""``python -m backupkit`` is the ``backupkit`` command."""

from .cli import command

if __name__ == "__main__":  # not when a spawned worker process re-imports it
    command()
