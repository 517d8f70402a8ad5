"""accel/memory.py: glibc's malloc keeps freed memory for reuse.

A compiled training step allocates its temporaries (a conv layer's im2col
columns) and frees them again, thousands of times an epoch.  glibc's malloc
hands freed memory at the top of its heap back to the kernel once more than
M_TRIM_THRESHOLD of it is free, and serves large blocks with a fresh mmap:
either way the next step touches new pages, which the kernel zeroes one page
fault at a time.  The settings below keep up to 256 MB of freed memory and
take blocks under 64 MB from the heap.  docs/performance.md has the
measurement; ``network3.keep_freed_memory(False)`` turns this off.
"""

import ctypes
import sys

from .. import backend

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_done = []


def tune_malloc():
    """Set glibc's thresholds once per process (a process-wide setting that
    stays), unless ``keep_freed_memory(False)`` was called; elsewhere than
    on Linux with glibc, nothing."""
    if _done or not backend.keeps_freed_memory():
        return
    _done.append(True)
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library: leave it be
        return
    mallopt(M_MMAP_THRESHOLD, 64 << 20)
    mallopt(M_TRIM_THRESHOLD, 256 << 20)
