"""How the ``backupkit`` command shows things on a terminal: status words in colour.

Colour only where a person reads it: the stream is a terminal, ``NO_COLOR`` is not
set (https://no-color.org) and ``TERM`` is not ``dumb``.  Piped or redirected
output, and so logs and scripts, stay plain text.
"""

from __future__ import annotations

import os
from typing import TextIO

_RESET = "\033[0m"
_CODES = {"good": "\033[32m", "warn": "\033[33m", "bad": "\033[1;31m"}

#: Words the command prints as a status, and how each looks.
STATUS = {
    "ok": "good",
    "intact": "good",
    "keep": "good",
    "yes": "good",
    "warn": "warn",
    "warning": "warn",
    "would remove": "warn",
    "fail": "bad",
    "damaged": "bad",
    "problem": "bad",
    "remove": "bad",
    "error": "bad",
    "no": "bad",
    "unreadable": "bad",
}


def use_colour(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that wants colour."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, status: str | None = None, *, stream: TextIO) -> str:
    """``text`` in the colour of ``status`` (default: ``text`` itself, e.g. "FAIL"), on a colour
    terminal; unchanged otherwise or for a word that is no status."""
    code = _CODES.get(STATUS.get((status or text).strip().lower(), ""))
    if code is None or not use_colour(stream):
        return text
    return f"{code}{text}{_RESET}"
