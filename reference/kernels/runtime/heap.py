"""Keep freed memory in the process heap, so that a training step does not page-fault its activations.

A training step allocates and frees the same large activation, column and gradient arrays every
step. glibc's malloc serves blocks over its mmap threshold (128 KiB, growing to at most 32 MiB)
with fresh `mmap`s and returns them with `munmap` when freed, and it trims the heap top back to the
OS: the next step then touches every page of those arrays anew, one page fault (a kernel entry and
a zeroed page) per 4 KiB. Measured on the 2-core development VM (bench/README.md): 20,000 faults
and 155 ms of kernel time per nano train step at 128 px, about a quarter of the step; none once
freed memory stays in the heap.

`retain_freed_memory()` asks glibc to serve every block from the heap (M_MMAP_MAX = 0) and to keep
freed memory there (M_TRIM_THRESHOLD at its maximum): the process's resident size stays at its
peak, which for a training process is what it needs for the next step anyway. It is a process-wide
choice, so the library never makes it on import: `effv2 train` and the benchmarks call it
(`EFFV2_RETAIN_HEAP=0` turns it off). Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_NEVER = 2**31 - 1  # mallopt takes an int; the largest means "only past 2 GiB of free top"

_retained = False


def heap_retained() -> bool:
    """Whether this process keeps freed memory in its heap (see retain_freed_memory)."""
    return _retained


def retain_freed_memory() -> bool:
    """Serve and keep large blocks in glibc's heap; True when in effect (glibc only, not turned off by
    EFFV2_RETAIN_HEAP=0). Idempotent."""
    global _retained
    if _retained:
        return True
    if os.environ.get("EFFV2_RETAIN_HEAP", "").strip() == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - a glibc without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the threshold first, so a refusal of the second leaves mmap as it was
    _retained = bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _retained
