"""Progress bars for long steps: on a terminal, in a notebook (a widget), nowhere else.

``tqdm.auto`` draws an ipywidgets bar inside a Jupyter kernel (so an executed
notebook keeps it) and text on a terminal.  Bars count bytes, so a big table
moves the bar as much as it costs.
"""

from __future__ import annotations

import sys
from typing import Any


def wanted(progress: bool | None) -> bool:
    """``progress`` if given; else whether someone is watching: a terminal, or a notebook kernel."""
    if progress is not None:
        return progress
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def byte_bar(total: int, desc: str, show: bool) -> Any:
    """A bar over ``total`` bytes (shown in kB, MB, GB), or a disabled one."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        disable=not show,
        file=sys.stderr,
        dynamic_ncols=True,
    )
