"""Keeping freed memory for the next block instead of handing it back to the system.

A COPY stream builds each block of rows in a ``bytearray`` that grows to about 1 MiB, is
compressed, and is freed; then the next one grows.  With glibc's defaults much of that
memory goes back to the kernel (as a mapping of its own, or by trimming the heap's top)
and the next block faults the same pages in again: about 70,000 page faults for a 450 MB
backup, most of them in ``memmove`` into the growing block (``perf record -e page-faults``).
Blocks kept on the heap (``M_MMAP_THRESHOLD`` 4 MiB) and the heap's top kept up to
``M_TRIM_THRESHOLD`` took that to 24,000 and the backup's own CPU down by 2-5% (its system
time by a fifth), for about 6 MB more peak memory per process, whatever the table's size;
its wall time moved less than this machine's run-to-run spread (benchmarks/RESULTS.md).

Process-wide, so only the processes that stream data set it; where the C library is not
glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys

#: ``mallopt`` parameters of glibc's ``<malloc.h>``, and what they are set to.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Allocations up to this size come from the heap, not a mapping of their own: a block
#: (``snapshot.datafile.BLOCK``) and its compressed frame, with room for a row that overshoots.
MMAP_THRESHOLD = 4 << 20
#: Free memory at the heap's top kept for the next blocks rather than returned.
TRIM_THRESHOLD = 32 << 20


@functools.cache
def keep_freed_blocks() -> bool:
    """Ask glibc to keep freed block-sized memory for reuse (once per process); whether it did."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this interpreter runs on
    except (OSError, AttributeError):  # musl has no mallopt: its defaults stay
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Setting either turns off glibc's own moving of the thresholds, so both are set.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
