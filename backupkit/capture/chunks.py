"""Where big tables are cut into data files: page ranges whose boundaries stay put, each
one COPY whose stream is cut again, at rows chosen by their content, into files of a few MB (``pg.copyio.FileCuts``).

Kept apart from the readers (no psycopg here) so the command line can show the default
without importing a database driver.
"""

from __future__ import annotations

#: Tables larger than this on disk are split into ctid ranges.
CHUNK_BYTES = 64 << 20
#: The smallest chunk: one page.
MIN_CHUNK_BYTES = 8192
_PAGE = 8192


def page_ranges(relation_bytes: int, chunk_bytes: int, server_version_num: int) -> list[tuple[int, int | None] | None]:
    """[lo, hi) page ranges covering a table; ``[None]`` when it is not split.

    TID range scans need PostgreSQL 14+.  The last range is open-ended, so no
    row is lost if the table grew after it was measured.  Boundaries fall on
    multiples of ``chunk_bytes`` worth of pages, so they stay put as a table
    grows: a row that was not moved is in the same-numbered chunk in the next
    snapshot, which is what lets ``diff`` compare chunk by chunk.
    """
    if server_version_num < 140000 or relation_bytes <= chunk_bytes:
        return [None]
    bounds = list(range(0, relation_bytes // _PAGE, max(1, chunk_bytes // _PAGE)))
    return [*((lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)), (bounds[-1], None)]
