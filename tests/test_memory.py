"""live.memory: a pinned glibc mmap threshold keeps large blocks on mmap even after glibc would have raised it."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Counts glibc's mmapped blocks (mallinfo2().hblks) around 2 MiB allocations made after an 8 MiB block was freed:
# glibc has then raised its threshold to 8 MiB, so the first 2 MiB block comes from the heap; once the threshold
# is pinned at 1 MiB the second one is mmapped again.
PROBE = """
import ctypes, ctypes.util
from live.memory import fix_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
libc.free(libc.malloc(8 << 20))
before = libc.mallinfo2().hblks
a = libc.malloc(2 << 20)
heap = libc.mallinfo2().hblks - before
ok = fix_mmap_threshold()
b = libc.malloc(2 << 20)
mapped = libc.mallinfo2().hblks - before - heap
print(heap, ok, mapped)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_pinned_threshold_mmaps_large_blocks_again():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "True", "1"]


def test_kernel_cache_bounds_leave_the_users_own_alone():
    from live.memory import KERNEL_CACHES, bound_kernel_caches

    env = {"LRU_CACHE_CAPACITY": "7"}
    bound_kernel_caches(env)
    assert env == {**KERNEL_CACHES, "LRU_CACHE_CAPACITY": "7"}
