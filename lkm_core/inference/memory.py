"""Keep freed memory in the process (glibc malloc), so that large tensors are not returned to
the OS after each layer and faulted in again on the next.

glibc serves blocks above M_MMAP_THRESHOLD (capped at 32 MiB on 64-bit) with their own mmap and
unmaps them on free; a 3d_paper activation is ~220 MB, so raising the threshold cannot keep them.
Instead mmap is switched off (M_MMAP_MAX=0: every block comes from the heap) and the heap is
never trimmed (huge M_TRIM_THRESHOLD), with a top pad so that the heap grows in large steps.
Must run before the first big allocation; it applies to this process only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

MEMORY_MODES = ("keep", "release")
# release by default: keep saves a quarter of the CPU time of a 3d_paper forward but raises its
# peak RSS past the 4 GB a CPU-friendly Slicer model may use (Testing/benchmarks/allocator.py)
DEFAULT_MEMORY_MODE = "release"

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the largest trim threshold it accepts
_TOP_PAD = 256 * 2**20  # grow the heap 256 MiB at a time


def _glibc():
    """The process's C library if it is glibc (has mallopt), else None."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt semantics to rely on)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory() -> bool:
    """Tell glibc malloc to keep freed memory in this process; True if it applied.

    A no-op (False) where the C library is not glibc (macOS, Windows, musl).
    """
    libc = _glibc()
    if libc is None:
        log.debug("malloc settings: not glibc, left as they are")
        return False
    applied = all(libc.mallopt(param, value) == 1 for param, value in
                  ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER_TRIM), (M_TOP_PAD, _TOP_PAD)))
    log.debug("malloc settings: keep freed memory %s", "applied" if applied else "refused")
    return applied


def apply_memory_mode(mode: str) -> bool:
    """``keep``: keep freed memory (glibc only); ``release``: the C library's default."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory mode must be one of {MEMORY_MODES}, not {mode!r}")
    return keep_freed_memory() if mode == "keep" else False
