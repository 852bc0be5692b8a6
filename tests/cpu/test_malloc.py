"""repo_ext.cpu.malloc: with the demo's MALLOC_MMAP_THRESHOLD_ of 1 MiB a 4 MiB block is mmapped;
after keep_freed_blocks_in_heap it comes from the heap. Counted with glibc's mallinfo2 (hblks:
blocks currently mmapped) in a fresh process, since the variables act at process start."""

import json
import subprocess
import sys

import pytest

from repo_ext.cpu import malloc as malloc_module
from repo_ext.cpu.malloc import keep_freed_blocks_in_heap

# the children load repo_ext/cpu/malloc.py by its path: importing the package would import verl (~8 s)
_LOAD = r"""
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("malloc_under_test", sys.argv[1])
malloc_under_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(malloc_under_test)
keep_freed_blocks_in_heap = malloc_under_test.keep_freed_blocks_in_heap
return_free_memory = malloc_under_test.return_free_memory
"""

_CHILD = _LOAD + r"""
import ctypes, json, sys

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mmapped_blocks_while_holding(nbytes):
    before = libc.mallinfo2().hblks
    block = libc.malloc(nbytes)
    during = libc.mallinfo2().hblks
    libc.free(block)
    return during - before

out = {"before": mmapped_blocks_while_holding(4 * 1024**2)}
out["changed"] = keep_freed_blocks_in_heap()
out["after"] = mmapped_blocks_while_holding(4 * 1024**2)
out["after_64mib"] = mmapped_blocks_while_holding(64 * 1024**2)
print(json.dumps(out))
"""


def _run_child(env_extra):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", _CHILD, malloc_module.__file__], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_demo_threshold_maps_4mib_blocks_and_the_call_moves_them_to_the_heap():
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc >= 2.33 (no mallinfo2)")
    out = _run_child({"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"})
    assert out == {"before": 1, "changed": True, "after": 0, "after_64mib": 1}


def test_without_the_variable_nothing_is_changed():
    assert keep_freed_blocks_in_heap({}) is False
    assert keep_freed_blocks_in_heap({"MALLOC_MMAP_THRESHOLD_": str(64 * 1024**2)}) is False
    out = _run_child({})
    assert out["changed"] is False


_FRAGMENTED = _LOAD + r"""
import ctypes, json, sys

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

def rss_mib():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

blocks = []
for _ in range(2000):  # 2000 x 100 KiB = ~195 MiB in the heap (below the mmap threshold), touched
    b = libc.malloc(100 * 1024)
    libc.memset(b, 1, 100 * 1024)
    blocks.append(b)
for b in blocks[::2]:  # free every other block: holes in the middle of the heap, nothing to trim at its top
    libc.free(b)
before = rss_mib()
released = return_free_memory()
print(json.dumps({"before": before, "after": rss_mib(), "released": released}))
"""


def test_return_free_memory_hands_back_the_pages_of_freed_heap_blocks():
    """~98 MiB freed in 100 KiB holes between live blocks stay resident until malloc_trim(0)."""
    env_extra = {"MALLOC_ARENA_MAX": "1"}
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", _FRAGMENTED, malloc_module.__file__], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["released"] is True
    assert out["before"] - out["after"] > 80, out  # of the ~98 MiB of holes, whole pages go back


def test_the_cpu_platforms_empty_cache_returns_free_memory():
    from repo_ext.cpu import platform

    module = platform._make_device_module()
    called = []
    original = platform.return_free_memory
    platform.return_free_memory = lambda: called.append(1) or True
    try:
        module.empty_cache()
    finally:
        platform.return_free_memory = original
    assert called == [1]


def test_the_c_library_is_looked_up_once_not_at_every_call(monkeypatch):
    # find_library spawns ldconfig (~3 ms); return_free_memory runs at every empty_cache
    calls = []
    real = malloc_module.ctypes.util.find_library
    monkeypatch.setattr(malloc_module.ctypes.util, "find_library", lambda name: calls.append(name) or real(name))
    malloc_module._libc.cache_clear()
    try:
        for _ in range(5):
            malloc_module.return_free_memory()
        assert calls == ["c"]
    finally:
        malloc_module._libc.cache_clear()
