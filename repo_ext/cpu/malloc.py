"""glibc malloc settings of one process, for processes that reallocate large tensors at every step.

``make demo`` starts verl with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` of 1 MiB
(``repo_ext.demo.MALLOC_ENV``): freed blocks above 1 MiB go back to the system, which keeps the
actor's memory from growing (docs/cpu.md). Every Ray worker inherits them. In the ``hf_cpu``
rollout server that costs time: HF ``generate`` grows its KV cache by concatenation at every
decoding step, so with a 1 MiB threshold each step maps, zero-fills and unmaps a few hundred MiB.
Measured (SmolLM2-135M, 32 requests x 64 new tokens, 2 threads, load ~1.8,
``benchmarks/bench_generation_malloc.py``): 19.4-21.1 s with glibc's defaults, 27.8-29.2 s with
the demo's variables, 18.3-19.8 s with them and :func:`keep_freed_blocks_in_heap` called first.

``mallopt`` changes the setting for the calling process only, at any time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

__all__ = ["GLIBC_MMAP_THRESHOLD_MAX", "keep_freed_blocks_in_heap", "return_free_memory"]

# mallopt parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's ceiling for the dynamic mmap threshold on 64-bit systems: 4 * 1024 * 1024 * sizeof(long)
GLIBC_MMAP_THRESHOLD_MAX = 32 * 1024**2


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library, loaded once: ``find_library`` spawns ``ldconfig`` (~3 ms), and
    :func:`return_free_memory` runs at every ``empty_cache``."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def _libc_function(name: str):
    libc = _libc()
    return None if libc is None else getattr(libc, name, None)


def return_free_memory() -> bool:
    """``malloc_trim(0)``: hand the free pages of every malloc arena back to the system (glibc), also
    those between blocks still in use; after freeing many heap blocks (e.g. a model's weights below
    the mmap threshold) the process's resident memory then drops. Returns whether memory was released."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return malloc_trim(0) == 1


def keep_freed_blocks_in_heap(environ: dict[str, str] | None = None) -> bool:
    """Where ``MALLOC_MMAP_THRESHOLD_`` is set below glibc's ceiling, raise this process's mmap
    threshold to the ceiling (32 MiB) and its trim threshold to twice that, as glibc's own dynamic
    threshold would; blocks up to 32 MiB are then reused from the heap instead of being mapped anew.

    Returns True when it changed the settings; False where the variable is unset (glibc's dynamic
    threshold already behaves so), already at least the ceiling, or the C library has no ``mallopt``
    (not glibc).
    """
    environ = os.environ if environ is None else environ
    value = environ.get("MALLOC_MMAP_THRESHOLD_")
    if value is None:
        return False
    try:
        if int(value) >= GLIBC_MMAP_THRESHOLD_MAX:
            return False
    except ValueError:
        pass  # glibc ignores a value it cannot parse; setting ours is harmless
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_THRESHOLD_MAX) == 1 and ok
    return ok
