"""Imported first by ``backupkit.notebook``: one clear line when the ``notebooks`` extra is missing.

The ``backupkit`` command and the rest of the library do without it, so a host that only
runs scheduled ``backupkit backup`` installs neither pandas nor JupyterLab.
"""

from __future__ import annotations

import importlib.util

#: What ``backupkit.notebook`` imports from the ``notebooks`` extra (pyproject.toml).
NEEDS = ("pandas", "matplotlib")

for _name in NEEDS:
    if importlib.util.find_spec(_name) is None:
        raise ModuleNotFoundError(
            f"backupkit.notebook needs {_name}, from the notebooks extra: pip install 'backupkit[notebooks]'",
            name=_name,
        )
