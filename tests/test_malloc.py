"""backend.keep_freed_memory: network3 tunes glibc's malloc when it compiles
a function, so that the temporaries a training step allocates and frees
reuse the same memory instead of new pages every step."""

import json
import subprocess
import sys

import pytest

# A process allocates and frees a 40 MB block 20 times (more than glibc's
# largest default mmap threshold, 32 MB: without tuning, every block is a
# fresh mmap, whose pages fault in one by one), after compiling a network3
# function or not.
_RUN = """
import json, resource
import numpy as np, pytensor.tensor as pt
import network3
from network3.backend import function
network3.keep_freed_memory({enabled})
if {compile_first}:
    x = pt.vector("x")
    function([x], x * 2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = np.ones(5_000_000)  # 40 MB
    del a
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(enabled, compile_first):
    out = subprocess.run(
        [sys.executable, "-c", _RUN.format(enabled=enabled, compile_first=compile_first)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc's malloc: network3 tunes it on Linux only")
def test_compiling_a_function_makes_freed_blocks_reused():
    # page faults, not pages: numpy asks for huge pages for large arrays
    tuned = _faults(True, True)
    untuned = _faults(False, True)
    not_compiled = _faults(True, False)
    # measured here: 951 (the first block faults in, the others reuse it),
    # 11360 and 11360 (each block is new memory)
    assert untuned > 5 * tuned
    assert not_compiled > 5 * tuned   # nothing happens at import
