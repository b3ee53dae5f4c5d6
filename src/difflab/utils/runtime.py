"""Process-wide settings that make CPU runs faster without changing a single number.

``tune_malloc()``: glibc's malloc serves large blocks (a batch's activations, a convolution's
workspace) with ``mmap`` and gives them back with ``munmap`` when freed, and trims the heap
whenever its free top grows past a threshold. A network evaluated again and again on the same
shapes therefore asks the kernel for fresh zeroed pages at every layer of every step: on the
default UNet at batch 250 that is ~100,000 page faults per forward pass, and with two threads
each ``munmap`` also interrupts the other core to flush its TLB. Keeping freed memory in the
heap for reuse (``mallopt``: no ``mmap`` for large blocks, heap trimmed only past 1 GiB of free
top) removes most of them; ``benchmarks/malloc.py`` measures what that buys here.

The result of a run does not change (the same allocations, at other addresses); memory a
process freed at its peak stays mapped to it until it exits (at most 1 GiB of free heap top,
plus whatever fragmentation pins). Only Linux with glibc has these knobs; elsewhere (macOS,
musl, Windows) this does nothing. ``malloc_tuning=false`` (train.py, sample.py) leaves malloc
as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys

from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["M_MMAP_MAX", "M_TRIM_THRESHOLD", "TRIM_THRESHOLD", "malloc_tuned", "tune_malloc"]

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before it is given back to the kernel

_tuned = False


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_malloc(enabled: bool = True) -> bool:
    """Keep freed memory for reuse instead of returning it to the kernel (see the module's
    docstring). Returns whether malloc is tuned now; idempotent; ``enabled=False`` does nothing
    (a process tuned before stays tuned: glibc has no way back to its adaptive thresholds)."""
    global _tuned
    if not enabled or _tuned:
        return _tuned
    libc = _glibc()
    if libc is None:
        log.debug("malloc_tuning: not glibc on Linux; malloc left as it is")
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; the trim threshold first, so a failure leaves mmap on
    if libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1 or libc.mallopt(M_MMAP_MAX, 0) != 1:
        log.warning("malloc_tuning: mallopt refused; malloc left as it is")
        return False
    _tuned = True
    log.debug("malloc_tuning: large blocks from the heap, heap trimmed past %d bytes of free top", TRIM_THRESHOLD)
    return True


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` has tuned this process."""
    return _tuned
