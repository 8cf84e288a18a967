"""Host memory for the command line: freed blocks are kept for reuse, not handed back to the OS.

XLA:CPU allocates a program's temporaries afresh on every call. With glibc's defaults a block above
the mmap threshold (and the freed top of a heap) goes back to the kernel when it is freed, so the
next call faults the same memory in again, one zero-filled 4 KB page at a time. For small models
that page-fault churn is a large part of each step (docs/performance.md, "Host memory kept").

``keep_freed_host_memory()`` asks glibc for one arena, no mmap'd blocks and no heap trimming
(``mallopt``; the same as ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``).
It changes no result, only where host memory comes from; the cost is a higher resident peak, as
memory once used stays with the process.
It does nothing on other C libraries, when any ``MALLOC_*`` variable or a ``glibc.malloc`` tunable
is set (the user's own tuning wins) or with ``ATTNLAB_HOST_MALLOC=off``.
The ``attnlab`` command calls it before JAX allocates; library code never does (importing attnlab
leaves the allocator alone; call it first thing in your own script to get the same).
"""

from __future__ import annotations

import ctypes
import os
import platform

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


_ON, _OFF = ("", "on", "1", "true", "yes"), ("off", "0", "false", "no")


def keep_freed_host_memory() -> bool:
  """Keeps freed host memory in the process (glibc only); True if the setting was applied."""
  choice = os.environ.get("ATTNLAB_HOST_MALLOC", "").strip().lower()
  if choice not in _ON + _OFF:
    raise ValueError(f"ATTNLAB_HOST_MALLOC={choice!r}: valid values are "
                     f"{', '.join(v for v in _ON + _OFF if v)} (or unset = on)")
  if choice in _OFF:
    return False
  if (any(name.startswith("MALLOC_") for name in os.environ)
      or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
    return False  # the user's own allocator tuning wins
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
  if mallopt is None:
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
