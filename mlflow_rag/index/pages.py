"""Huge pages under the vectors an exact search streams through (Linux; best effort).

One exact query reads every stored vector (154 MB at 100K x 384). numpy backs its own large
arrays with transparent huge pages (it asks with ``madvise``); FAISS's storage is plain 4 KiB
pages, so the same product over the index's vectors took ~15 % longer than over a numpy copy
of them (5.7-5.9 ms against 4.9-5.0 ms single-threaded, TLB misses), and the same again once
the storage was collapsed into huge pages (benchmarks/RESULTS.md, "Dense search overhead").

Collapsing copies the pages (~50 ms per 150 MB), so it runs on a background thread (the
system call releases the GIL) and never delays loading or the first answer; the contents never
change, whatever runs meanwhile. Anything that does not work (another OS, an old kernel, THP
disabled) leaves the pages as they were.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
import threading
from collections.abc import Callable
from typing import cast

import numpy as np

log = logging.getLogger("mlflow_rag.index.pages")

HUGE_PAGE = 2 * 1024 * 1024
# Below this, the vectors' pages fit the TLB's reach well enough: not worth a thread.
MIN_BYTES = 32 * 1024 * 1024
MADV_HUGEPAGE = 14  # linux/mman.h: allow THP here (khugepaged may collapse it later)
MADV_COLLAPSE = 25  # Linux 6.1+: collapse now, synchronously


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    function = libc.madvise
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int], int], function)


def huge_page_span(array: np.ndarray) -> tuple[int, int] | None:
    """``(start, length)`` of the whole huge pages inside ``array``'s buffer, or None when it is
    too small to matter."""
    if array.nbytes < MIN_BYTES:
        return None
    address = int(array.ctypes.data)
    start = (address + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    stop = (address + array.nbytes) // HUGE_PAGE * HUGE_PAGE
    return (start, stop - start) if stop > start else None


def collapse(start: int, length: int) -> bool:
    """Ask for huge pages over ``[start, start + length)`` and collapse them now; whether the
    kernel did. The memory's contents are unchanged either way."""
    madvise = _madvise()
    if madvise is None:
        return False
    if madvise(start, length, MADV_HUGEPAGE) != 0:
        return False
    done = madvise(start, length, MADV_COLLAPSE) == 0
    if not done:
        log.debug("MADV_COLLAPSE declined (errno %d): khugepaged may do it later",
                  ctypes.get_errno())
    return done


def prefer_huge_pages(array: np.ndarray) -> threading.Thread | None:
    """Collapse ``array``'s buffer (private, anonymous memory: never a file's map) into huge
    pages on a daemon thread; returns it, or None when there is nothing to do."""
    span = huge_page_span(array)
    if span is None or _madvise() is None:
        return None
    thread = threading.Thread(target=collapse, args=span, name="mlflow-rag-huge-pages",
                              daemon=True)
    thread.start()
    return thread
