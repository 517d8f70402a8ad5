"""network3's accelerator tunes glibc's malloc when it compiles its first
function (network3/accel/memory.py), so that the temporaries a training step
allocates and frees come from the heap and are reused, instead of a fresh
mmap each step whose pages fault in one by one."""

import json
import subprocess
import sys

import pytest

# A process compiles a network3 function (or not), then allocates a 40 MB
# block: more than glibc's largest default mmap threshold (32 MB), so that
# untuned malloc maps it afresh, while tuned malloc (threshold 64 MB) takes
# it from the heap, below the program break.  Where the block lies is
# deterministic; page-fault counts vary with transparent huge pages.
_RUN = """
import ctypes, json
import numpy as np, pytensor.tensor as pt
import network3
from network3.backend import function
network3.keep_freed_memory({enabled})
if {compile_first}:
    x = pt.vector("x", dtype="float64")
    function([x], x * 2)
libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype = ctypes.c_void_p
block = np.ones(5_000_000)  # 40 MB
print(json.dumps(block.ctypes.data < libc.sbrk(0)))
"""


def _from_heap(enabled, compile_first):
    out = subprocess.run(
        [sys.executable, "-c", _RUN.format(enabled=enabled, compile_first=compile_first)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc's malloc: network3 tunes it on Linux only")
def test_compiling_a_function_makes_large_blocks_come_from_the_heap():
    assert _from_heap(True, True)          # tuned: from the heap, reused
    assert not _from_heap(False, True)     # keep_freed_memory(False): mmapped
    assert not _from_heap(True, False)     # nothing happens at import
