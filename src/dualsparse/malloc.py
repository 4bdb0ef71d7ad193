"""Keep freed large blocks in the process (glibc's ``mallopt``): fewer page faults per step.

glibc serves allocations above its mmap threshold with fresh ``mmap`` pages and returns them
on ``free``, so a training step that allocates the same 16 MB logits, log-softmax and gradient
buffers every time first-touches (page-faults) them every time: about 5 ms per buffer on the
2-vCPU development machine, 5-10% of a ``ptb-small-*`` training step. Raising the mmap
threshold to glibc's 64-bit maximum (32 MiB) and the trim threshold to 2 GiB lets the heap
keep and reuse those blocks; the process keeps its peak memory instead of returning it.

The command line calls :func:`keep_freed_memory` once per process (``dualsparse`` commands and
sweep workers); a library user decides for their own process. ``DUALSPARSE_KEEP_FREED_MEMORY=0``
turns it off. Elsewhere than on Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit systems (4 * 1024 * 1024 * sizeof(long))
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1
ENV = "DUALSPARSE_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (module docstring); True if both were set."""
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
            and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)


__all__ = ["keep_freed_memory"]
