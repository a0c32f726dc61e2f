"""Keep freed tensor memory in the process on CPUs, instead of handing it back to the kernel.

PyTorch's CPU allocator takes every tensor from the C library's ``malloc``. glibc serves a
request above its mmap threshold (128 KiB at start, raised on the fly up to 32 MiB) with a
fresh ``mmap`` and unmaps it on ``free``, and gives freed memory at the top of its heap back
once more than the trim threshold is free there. A U-Net forward or training step allocates
and frees the same activations (several MiB each) again and again, so every step
page-faults all of them in anew.

:func:`keep_freed_memory` sets both thresholds (``mallopt(3)``): ``M_MMAP_THRESHOLD`` to its
64-bit maximum of 32 MiB, which also turns off glibc's on-the-fly adjustment, so requests up
to 32 MiB come from the heap and stay mapped after ``free`` for the next step, and
``M_TRIM_THRESHOLD`` to how much freed memory at the top of the heap the caller keeps:
prediction (:data:`PREDICTION_TRIM_BYTES`, 256 MiB: a tile's passes with test-time flips, their
softmax and blending) and training on a CPU (:data:`TRAINING_TRIM_BYTES`, 1 GiB: a whole step's
activations and saved tensors). Larger requests (whole-volume arrays) are mapped and unmapped as
before. Intel's PyTorch CPU tuning guide recommends a caching allocator (jemalloc, TCMalloc via
``LD_PRELOAD``) for the same reason; this does the part that matters here without a preload.

Measured with torch 2.13 on 2 Xeon (Sapphire Rapids) cores (``docs/benchmarks.md``,
"Float32 with 8-flip TTA"; minor page faults from ``getrusage``, which load does not move):

* prediction, the 16-filter 3D U-Net on one 4x64^3 tile: 11.5k page faults per forward pass
  -> none, 128 -> 114 ms per pass; ``nnpipe predict`` of 2 cases with 8-flip TTA: 28.7 /
  27.5 s with a 64 MiB trim threshold, 24.2 / 23.6 s with 256 MiB, 24.1 / 23.7 s with 1 GiB;
  peak RSS of the 512 x 512 x 400 CT volume of ``predict_compare memory``: 4.32 GiB before,
  4.49 GiB with 64 MiB, 4.56 GiB with 256 MiB, 4.57 GiB with 1 GiB;
* training at 64^3, batch 2: 568k -> 276k faults per step, 1.32 -> 1.00 s per step (with a
  64 MiB threshold still 504k faults); the demo's 32^3: 9.5k -> 0.6k, 112 -> 106 ms.

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
PREDICTION_TRIM_BYTES = 256 * 2**20
TRAINING_TRIM_BYTES = 2**30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_applied: int | None = None  # the trim threshold set by this process, if any


def keep_freed_memory(trim_bytes: int) -> bool:
    """Set glibc's mmap threshold to 32 MiB and its trim threshold to ``trim_bytes``
    (:data:`PREDICTION_TRIM_BYTES` or :data:`TRAINING_TRIM_BYTES`), as the module docstring
    says; a later call with another value sets that one.

    Returns whether they are set (``False`` on other C libraries or when the user set them
    through the environment). Never raises.
    """
    global _applied
    if _applied == trim_bytes:
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
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, trim_bytes):
        _applied = trim_bytes
        return True
    return False
