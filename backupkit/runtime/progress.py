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


class _Hidden:
    """What ``byte_bar`` returns when nothing is shown: tqdm's calls, doing nothing (and not
    importing tqdm, ~15 ms of a scheduled run's start-up)."""

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Hidden:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def byte_bar(total: int, desc: str, show: bool) -> Any:
    """A bar over ``total`` bytes (shown in kB, MB, GB), or a hidden one."""
    if not show:
        return _Hidden()
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        file=sys.stderr,
        dynamic_ncols=True,
    )
