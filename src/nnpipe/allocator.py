"""Keep freed tensor memory in the process on CPUs, instead of handing it back to the kernel.

PyTorch's CPU allocator takes every tensor from the C library's ``malloc``. glibc serves a
request above its mmap threshold (128 KiB at start, raised on the fly up to 32 MiB) with a
fresh ``mmap`` and unmaps it on ``free``, and gives freed memory at the top of its heap back
once more than the trim threshold is free there. A U-Net forward or training step allocates
and frees the same activations (several MiB each) again and again, so every step
page-faults all of them in anew: 4-5 minor page faults per 4 KiB page of activation.

:func:`keep_freed_memory` sets both thresholds once (``mallopt(3)``: ``M_MMAP_THRESHOLD`` to
its 64-bit maximum of 32 MiB, ``M_TRIM_THRESHOLD`` to 1 GiB), which also turns off glibc's
on-the-fly adjustment: requests up to 32 MiB come from the heap and stay mapped after
``free`` for the next step; larger ones (whole-volume arrays) are still mapped and unmapped
as before, so the peak resident memory of a prediction is unchanged. Intel's PyTorch CPU
tuning guide recommends a caching allocator (jemalloc, TCMalloc via ``LD_PRELOAD``) for the
same reason; this does the part that matters here without a preload.

Measured with torch 2.13 on 2 Xeon (Sapphire Rapids) cores (``docs/benchmarks.md``,
"Float32 with 8-flip TTA"): the 16-filter 3D U-Net forward on one 4x64^3 tile 128 -> 114 ms
(minor page faults of the process 514k -> 116k), a training step at 64^3 batch 2 1.32 ->
1.00 s, at 32^3 (the demo) 112 -> 106 ms; peak RSS within 2 %.

Only glibc (Linux) is changed; elsewhere, or when the user set ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` themselves, it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: 4 MiB * sizeof(long)
TRIM_THRESHOLD_BYTES = 2**30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_applied = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds as the module docstring says, once per process.

    Returns whether they are set (``False`` on other C libraries or when the user set them
    through the environment). Never raises.
    """
    global _applied
    if _applied:
        return True
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: macOS, musl without mallopt, Windows
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _applied
