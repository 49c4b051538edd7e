"""Keep the CPU heap warm between sub-batches.

A Monte-Carlo pass allocates and frees tens of megabytes of activations per sub-batch. With glibc's
default, dynamically adjusted thresholds those blocks are often handed back to the kernel on ``free`` and
mapped again on the next ``malloc``: every page is faulted in and zeroed anew, and on a 2-core host this
halved throughput in about half of the runs (0.28x against 0.50x plain PyTorch for LeNet-5,
bench/bench_core.py). Fixed thresholds keep freed blocks in the heap instead. The cost is a process
that holds on to its peak heap (which a long simulation reaches anyway) until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def retain_heap() -> bool:
    """Fix glibc's malloc thresholds (once per process): blocks up to 32 MiB (glibc's limit) come from the
    heap, and the heap is not trimmed below 1 GiB. Returns whether the settings are in effect; a no-op
    (False) off Linux or without glibc."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    ok = all(mallopt(opt, val) == 1 for opt, val in ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30),
                                                      (_M_TOP_PAD, 64 << 20)))
    log.debug("mallopt thresholds %s", "set" if ok else "refused")
    _done = ok
    return ok
