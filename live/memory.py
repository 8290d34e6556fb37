"""glibc malloc settings for long-running processes (the live service).

Why: glibc serves a block of at least M_MMAP_THRESHOLD bytes with its own mmap and unmaps it on free, but each such
free RAISES the threshold to the freed size (up to 32 MiB). After the first forecast, the engine's multi-megabyte
per-call tensors (KV caches, attention scores, activations) therefore come from the heap instead; when their sizes
change (the horizon shrinking toward the close) the new sizes do not fit the holes the old ones left, the heap
grows, and glibc cannot give the holes back. A fixed threshold keeps every large block on mmap: freed at once,
nothing to fragment. Measured with bench/bench_serve.py (README, "Live service and web page").
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 1 << 20  # 1 MiB: blocks this large or larger are mmapped; a fixed value disables the raising


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold (process-wide). False where the C library is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return ok


# Bounded kernel caches. torch's oneDNN glue (ideep) keeps every linear it has run, keyed by its input shape, in an
# LRU of 1024 entries, and oneDNN its primitives in another; each holds a few hundred kB of compiled kernels. The
# tokenizer decoder's row count changes with the horizon, so the session's close adds ~25 new shapes and ~100 MB
# that stay. One forecast uses a few dozen entries, so these bounds keep its own set warm.
KERNEL_CACHES = {"LRU_CACHE_CAPACITY": "32", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}


def bound_kernel_caches(environ: dict | None = None) -> None:
    """Set the cache bounds unless the user set them. Call before torch runs its first kernel (the libraries read
    them once)."""
    import os

    env = os.environ if environ is None else environ
    for key, value in KERNEL_CACHES.items():
        env.setdefault(key, value)
