"""The mount daemon's memory budget, and the allocator settings that let it keep it.

What the daemon holds at most, by design (README "Memory"):

* decoded chunks kept for reads: ``mount.read_cache_bytes`` (default 64 MiB),
  emptied after ``mount.read_cache_idle_seconds`` (30 s) without reads or seals;
* read-ahead in flight: ``fs.reading.READ_AHEAD_CHUNKS`` chunks;
* unsealed writes in memory: 1 MiB per file, ``fs.layers.MEMORY_LAYERS_TOTAL_BYTES``
  (16 MiB) for all files together; beyond that they go to layer files;
* a seal: one ``fs.sealing.CDC_WINDOW`` (16 MiB) and ``PUTS_IN_FLIGHT`` chunks;
* what an upload has in hand: a few chunks per worker thread;
* per-file state only for files the kernel still knows (inodes it forgot are
  dropped), so it does not grow with the number of files ever touched.

Where the rest of the resident memory came from (450-700 MB after a 1 GiB
write and read, kept while idle): not live objects but glibc's allocator
keeping freed chunk-sized buffers. glibc raises its mmap threshold each time a
large mmapped block is freed (up to 32 MiB); after that, 1 MiB buffers come
from the heap arenas (one per allocating thread: uploads, read-ahead, trio's
workers), and freed heap memory goes back to the kernel only from an arena's
top. Measured: the same 512 MiB write and cold read ended at 454 MB anonymous
RSS, and at 128 MB with only the threshold pinned (MALLOC_MMAP_THRESHOLD_).
``bound_allocator`` pins it, trims free heap tops and caps the arenas.
Small chunks (files under the threshold) still come from the heap, and the
ones a busy daemon frees sit between live ones where no top trim reaches: the
mount's idle sealer calls ``give_back_free_memory`` every
TRIM_INTERVAL_SECONDS while chunks are read or sealed (fs/lifecycle.py; status
``allocator_trims``). Measured on bench/peers.py's workloads: 185-213 MB peak
and 163-174 MB at the end with it, 222-233 MB and 193-200 MB without.

Pinned where, though: pyfuse3 copies every WRITE request into a fresh bytes
object (1 MiB each for a big write, the kernel's max_write). At glibc's
initial 128 KiB threshold each was its own mmap: 256 page faults, the pages
zeroed, then unmapped, per MiB written (262 minor faults per MiB, a third of
the daemon's CPU while it takes a 1 GiB write; perf showed clear_page and
the fault path beside the copies themselves). The threshold sits just above
one request (`MMAP_THRESHOLD_BYTES`), so that buffer comes from the heap and
the next request reuses it, and free heap tops are kept up to two requests
(`TRIM_THRESHOLD_BYTES`): 2-6 faults per MiB written and half the daemon's
CPU for the write (tests/test_fs_bigwrite.py counts the faults). The price:
chunks below the threshold come from the heap too; through a 512 MiB write
and flush the peak was 158 MB against 143-151 MB, and 181 MB with free heap
tops kept up to 4 MiB, hence 2 MiB.

How it is measured: /proc/PID/status (VmRSS, VmHWM = peak). LMDB's mmapped
pages count in RSS as RssFile and are reclaimable page cache; the budget is
what RssAnon holds plus a few tens of MB of code and LMDB pages.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

# Pinned (no dynamic raise) just above a 1 MiB FUSE WRITE request (module docstring).
MMAP_THRESHOLD_BYTES = (1 << 20) + (64 << 10)
TRIM_THRESHOLD_BYTES = 2 << 20     # give free heap tops back beyond 2 MiB
ARENA_MAX = 2                      # one per core: threads share arenas, their free lists too
# While the daemon is busy, free heap pages are given back this often (malloc_trim,
# about a millisecond): freed small chunks sit between live ones, below an
# arena's top, where the trim threshold never reaches them.
TRIM_INTERVAL_SECONDS = 1.0


def _libc_function(name: str):
    """A glibc function of this process (CDLL(None): no ldconfig run), or None."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def bound_allocator() -> bool:
    """Make glibc return freed chunk-sized buffers to the kernel (call once, before
    threads start); False where the C library is not glibc (nothing to do there)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        log.debug("no mallopt in the C library: allocator left as it is")
        return False
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_ARENA_MAX, ARENA_MAX)))
    if not ok:
        log.warning("mallopt refused a setting: the daemon may keep freed memory")
    return ok


def give_back_free_memory() -> None:
    """Return free heap pages to the kernel (malloc_trim), e.g. after dropping the
    read cache when idle: small chunks live in the heap, not in their own maps."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def resident_bytes(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM (peak), RssAnon and RssFile of a process, in bytes, from /proc."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = int(value.split()[0]) * 1024
    return out
